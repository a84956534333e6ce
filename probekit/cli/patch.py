"""``probekit patch``: residual-stream patching from a with-context run into a no-context run, with ablation."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from probekit.cli import app
from probekit.cli._common import print_json, progress, stderr_console, stdout_console, threads_option, use_threads
from probekit.errors import UsageError


@app.command()
def patch(
    model: str = typer.Option(..., "--model", help="Model spec: hf:<name or dir>, toy:<checkpoint> (token inputs) "
                              "or torch:... (resid patching only)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="JSON lines {\"a\": prompt with context, \"b\": "
                                         "prompt without, \"answer\": ...}: text, or token id lists."),
    task: Optional[str] = typer.Option(None, help="Take the pairs from a task that has prompt_pairs(n, seed)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Task parameter key=value (repeatable)."),
    n_pairs: int = typer.Option(50, "--n-pairs", "-n", min=1, help="With --task: pairs to make."),
    seed: int = typer.Option(0, min=0, help="With --task: seed of the pairs."),
    ablate_heads: str = typer.Option("", "--ablate-heads", help="Heads to ablate in run A: L.H or L.* (every head "
                                     "of block L), comma-separated; blocks from 0 as in TransformerLens."),
    ablate_layers: str = typer.Option("", "--ablate-layers", help="Whole blocks to ablate in run A (their output := "
                                      "their input), comma-separated, from 0."),
    ablation: str = typer.Option("zero", "--ablation", help="zero, or mean (each position's mean over the A "
                                 "prompts)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Resid layers to patch, comma-separated "
                                         "(default all; 0 = embeddings)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Sequences per forward pass."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
    model_dtype: Optional[str] = typer.Option(None, "--model-dtype", help="Compute dtype of hf: models: float32, "
                                              "bfloat16 or float16."),
    out: Optional[Path] = typer.Option(None, "--out", help="Save the results: an existing zarr store (under "
                                       "patching/<id>), a new .zarr, or a directory (patch.zarr, patch.png, "
                                       "patch.json)."),
    plot: Optional[Path] = typer.Option(None, help="Heatmap PNG (default: next to --out, else ./patch.png)."),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
) -> None:
    """Patch MODEL's residual stream from prompt A (with context) into B (without), every layer × position:
    how much of log p(answer) does each vector recover? Optionally ablate heads or blocks in A first."""
    use_threads(threads)
    import json

    from probekit.lenses.interventions.run import PatchSettings, run_patch, save_patch
    from probekit.report.patch import patch_json, patch_table, plot_patch
    from probekit.plugin.host import PluginHost
    from probekit.lenses.interventions.pairs import read_pairs, task_pairs
    from probekit.tasks import parse_params

    if (pairs is None) == (task is None):
        raise UsageError("give the prompt pairs with exactly one of --pairs FILE or --task NAME")
    if param and not task:
        raise UsageError("--param needs --task")
    png = check_patch_outputs(out, plot)  # before any work
    host = PluginHost.default()
    if task:
        params = parse_params(host.tasks.get(task).Params, param)
        records = task_pairs(host, task, params, n_pairs, seed)
        source = json.dumps({"task": task, "params": params, "n_pairs": n_pairs, "seed": seed})
    else:
        records, source = read_pairs(pairs), str(pairs)
    settings = PatchSettings(heads=ablate_heads, blocks=ablate_layers, ablation=ablation,
                             layers=_int_list(layers, "--layers"), batch_size=batch_size, device=device,
                             model_dtype=model_dtype, source=source)
    with progress("patch", 1, "seq", enabled=not as_json) as update:
        results = run_patch(host, model, records, settings,
                            on_progress=lambda what, done, total: update(done, info=what, total=total))
    saved = None
    plot_patch(results, png)
    if out is not None:
        store, group = save_patch(results, out)
        saved = f"{store}" + (f" (group {group})" if group else "")
    payload = {**patch_json(results), "plot": str(png), "saved": saved}
    if out is not None and out.suffix != ".zarr":
        from probekit.outputs import write_text

        write_text(out / "patch.json", json.dumps(payload, indent=2) + "\n")
    if as_json:
        print_json(payload)
        return
    stdout_console().print(patch_table(results))
    err = stderr_console()
    err.print(f"plot: [bold]{png}[/bold]")
    if saved:
        err.print(f"results: [bold]{saved}[/bold]")


def check_patch_outputs(out: Path | None, plot: Path | None) -> Path:
    """Refuse, before any work, outputs that would replace what patch did not make; returns the plot path.
    ``--out`` is an existing probekit store (a new group in it), a new ``.zarr``, or a folder that
    holds nothing of patch's but its own earlier ``patch.zarr``, ``patch.json`` and ``patch.png``."""
    from probekit import outputs

    png = plot or Path("patch.png")
    if out is not None and out.suffix == ".zarr":
        if outputs.describe(out) not in (outputs.STORE, outputs.PATCH):  # else: a new group in it
            outputs.check_output(out, outputs.PATCH)
        png = plot or out.with_name(f"{out.stem}.patch.png")
    elif out is not None:
        outputs.check_output(out, outputs.FOLDER)
        outputs.check_output(out / "patch.zarr", outputs.PATCH)
        outputs.check_output(out / "patch.json", outputs.REPORT)
        png = plot or out / "patch.png"
    return outputs.check_output(png, outputs.FIGURE, option="--plot")


def _int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None or not text.strip():
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{option} must be comma-separated integers, got {text!r}") from None
