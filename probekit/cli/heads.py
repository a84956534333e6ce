"""``probekit heads``: attention heads as circuits (pattern and weight scores, ICL score, ablation),
for one model or through the checkpoints of a training run (the weights and dynamics lenses)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from probekit.cli import app
from probekit.cli._common import (fraction, print_json, progress, stderr_console, stdout_console, threads_option,
                                  use_threads)


@app.command()
def heads(
    model: Optional[str] = typer.Option(None, "--model", help="Model spec: toy:<checkpoint> or hf:<name or dir>."),
    checkpoints: Optional[str] = typer.Option(None, "--checkpoints", help="Instead of --model: follow the ICL score "
                                              "and head scores through every toy checkpoint of a training run (a "
                                              "directory of them, e.g. OUT/checkpoints, or a glob) and locate the "
                                              "phase change."),
    n_samples: int = typer.Option(200, "--n-samples", "-n", min=1,
                                  help="Repeated-token sequences for the pattern scores."),
    segment: Optional[int] = typer.Option(None, min=2,
                                          help="R, tokens per repeated segment (default: min(50, what fits))."),
    repeats: int = typer.Option(2, min=2, help="Copies of the segment."),
    seed: int = typer.Option(0, min=0, help="Seed of the repeated tokens."),
    task: Optional[str] = typer.Option(None, help="ICL-score data: a task (default: the toy model's own task; "
                                       "for other models, repeated random tokens)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Task parameter key=value (repeatable)."),
    text: Optional[Path] = typer.Option(None, help="ICL-score data: prompts from a .txt / .jsonl file (hf models)."),
    max_len: Optional[int] = typer.Option(None, "--max-len", min=1,
                                          help="With --text: truncate prompts to this many tokens."),
    icl_samples: int = typer.Option(2000, "--icl-samples", min=1, help="Sequences for the ICL score."),
    late: Optional[int] = typer.Option(None, min=1, help="Late position of the ICL score (default 500, or 0.8 T)."),
    early: Optional[int] = typer.Option(None, min=0, help="Early position of the ICL score (default 50, or 0.08 T)."),
    ablate: Optional[str] = typer.Option(None, help="Heads to ablate, e.g. 1.0,1.2 (blocks from 0), or "
                                         "'induction' (every head of blocks >= 1 with induction score >= --threshold)."),
    ablation: str = typer.Option("zero", help="Ablation: zero, or mean (each position's mean output)."),
    threshold: float = typer.Option(0.5, callback=fraction, help="Score (0 to 1) from which a head counts as an "
                                    "induction (prev-token, duplicate) head."),
    batch_size: int = typer.Option(64, min=1, help="Sequences per forward pass."),
    threads: int = threads_option(),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
    plot: Optional[Path] = typer.Option(None, help="PNG to write (default: heads.png in the toy model's directory, "
                                        "or dynamics.png in the run's; others: the working directory); the "
                                        "eigenvalue plot goes next to it (.eig.png)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON instead of a table."),
) -> None:
    """Score every attention head of MODEL: previous-token, duplicate and induction attention on
    repeated random tokens, OV copying and QK prefix-matching eigen-scores, the ICL score, and
    the ICL score with heads ablated; or (--checkpoints) all of these through training."""
    from probekit.report import heads as report
    from probekit.lenses.heads.dynamics import HeadsSettings, run_dynamics, run_heads
    from probekit.errors import UsageError
    from probekit.plugin.host import PluginHost
    from probekit.tasks import parse_params

    if bool(model) == bool(checkpoints):
        raise UsageError("pass either --model or --checkpoints")
    from probekit import outputs

    png = outputs.check_output(plot or _default_plot(model, checkpoints), outputs.FIGURE, option="--plot")
    use_threads(threads)
    host = PluginHost.default()
    params = {}
    if param:
        if task:
            params = parse_params(host.tasks.get(task).Params, param)
        else:
            from probekit.tasks.resolve import PARAM_NEEDS_TASK, resolve_task

            params = resolve_task(host, model or _last_checkpoint(checkpoints), None, param,
                                  missing=PARAM_NEEDS_TASK).given
    settings = HeadsSettings(n_samples=n_samples, segment=segment, repeats=repeats, seed=seed, task=task,
                             task_params=params, text=str(text) if text else None, max_len=max_len,
                             icl_samples=icl_samples, late=late, early=early, ablate=ablate, ablation=ablation,
                             threshold=threshold, batch_size=batch_size, device=device)
    with progress("heads", 1, "steps", enabled=not as_json) as update:
        on_progress = lambda what, done, total: update(done, info=what, total=total)  # noqa: E731
        if checkpoints:
            if ablate:
                raise UsageError("--ablate works on one model (--model); pick a checkpoint with toy:<dir>")
            ds = run_dynamics(host, checkpoints, settings, on_progress=on_progress)
        else:
            ds = run_heads(host, model, settings, on_progress=on_progress)
    shown = report.render_dynamics(ds, png) if checkpoints else report.render_heads(ds, png, threshold)
    _show(*shown, as_json=as_json)


def _show(pngs: list[Path], payload: dict, table, *, as_json: bool) -> None:
    """Print the JSON payload (with the plots' paths), or the table and the plots' paths."""
    if as_json:
        payload["plots"] = [str(p) for p in pngs]
        print_json(payload)
        return
    stdout_console().print(table)
    stderr_console().print("plots: " + ", ".join(f"[bold]{p}[/bold]" for p in pngs))


def _last_checkpoint(source: str) -> str:
    from probekit.cache.checkpoints import resolve

    return resolve(source)[-1].spec


def _default_plot(model: str | None, checkpoints: str | None) -> Path:
    """``toy:DIR`` -> ``DIR/heads.png``; ``--checkpoints RUN/checkpoints`` -> ``RUN/dynamics.png``;
    anything else: the working directory."""
    if checkpoints:
        root = Path(checkpoints)
        if root.is_dir():
            return (root.parent if root.name == "checkpoints" else root) / "dynamics.png"
        return Path("dynamics.png")
    scheme, _, rest = model.partition(":")
    return Path(rest) / "heads.png" if scheme == "toy" else Path(f"heads.{Path(rest).name or 'model'}.png")
