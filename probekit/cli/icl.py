"""``probekit icl``: P(correct answer) against the number of in-context examples, with a Bayesian reference."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from probekit.cli import app
from probekit.cli._common import (open_fraction, print_json, progress, stderr_console, stdout_console,
                                  threads_option, use_threads)


@app.command()
def icl(
    model: str = typer.Option(..., "--model", help="Model with a tokenizer, e.g. hf:path/to/model."),
    task: str = typer.Option("affine-prompts", help="Prompt task (one with prompts(n, count, seed))."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Task parameter key=value (repeatable)."),
    count: int = typer.Option(50, min=1, help="Prompts per number of examples."),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", min=0, help="Largest n (default: the task's)."),
    epsilon: float = typer.Option(0.05, callback=open_fraction,
                                  help="Noise level of the ideal Bayesian observer (between 0 and 1)."),
    seed: int = typer.Option(0, min=0, help="Seed of the prompts."),
    batch_size: int = typer.Option(16, min=1, help="Prompts per forward pass."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
    model_dtype: Optional[str] = typer.Option(None, "--model-dtype", help="float32, bfloat16 or float16 (hf:)."),
    plot: Path = typer.Option(Path("icl.png"), help="PNG to write."),
    out: Optional[Path] = typer.Option(None, help="Also save the curve (per-prompt values) as a zarr store: a new "
                                       "path, or the curve of an earlier icl run (replaced)."),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the curve as JSON instead of a table."),
) -> None:
    """Score P(correct answer) for n = 0..N in-context examples; fit logit P against n; compare with
    the task's ideal Bayesian observer."""
    use_threads(threads)
    from probekit import outputs
    from probekit.lenses.icl import ICLSettings, icl_curve, save_curve
    from probekit.report.icl import icl_table, plot_icl
    from probekit.models.adapters import load_adapter
    from probekit.plugin.host import PluginHost
    from probekit.tasks import parse_params

    outputs.check_output(plot, outputs.FIGURE, option="--plot")  # both outputs checked before any work
    if out is not None:
        outputs.check_output(out, outputs.CURVE)
    host = PluginHost.default()
    task_cls = host.tasks.get(task)
    task_obj = task_cls(**parse_params(task_cls.Params, param))
    settings = ICLSettings(count=count, max_examples=max_examples, seed=seed, epsilon=epsilon, batch_size=batch_size)
    adapter = load_adapter(host, model, device=device, dtype=model_dtype)
    with progress("icl", 1, "n", enabled=not as_json) as update:
        res = icl_curve(adapter, task_obj, settings,
                        on_progress=lambda what, done, total: update(done, info=what, total=total))
    if out is not None:
        save_curve(res, out)
    plot_icl(res, plot)
    if as_json:
        print_json({"attrs": dict(res.attrs), "n_examples": res.n_examples.values.tolist(),
                    "p_correct": res.p_correct.values.tolist(), "mean_logit": res.mean_logit.values.tolist(),
                    "ideal_mean_logit": res.ideal_mean_logit.values.tolist() if "ideal_mean_logit" in res else None,
                    "plot": str(plot)})
        return
    stdout_console().print(icl_table(res))
    stderr_console().print(f"plot: [bold]{plot}[/bold]" + (f" · curve: [bold]{out}[/bold]" if out else ""))
