"""``probekit compare``: a model against a hypothesis' algorithm on held-out tasks (the behavioural lens)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from probekit.cli import app
from probekit.cli._common import (finite_floats, parse_options, print_json, progress, stderr_console,
                                  stdout_console, threads_option, use_threads)


@app.command()
def compare(
    model: str = typer.Option(..., "--model", help="Model spec, e.g. toy:store/models/lsa."),
    hypothesis: List[str] = typer.Option(..., "--hypothesis", "-H", help="Hypothesis to compare with (repeatable)."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="Hypothesis option key=value."),
    task: Optional[str] = typer.Option(None, help="Task (default: the one the toy model was trained on)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Task parameter key=value (repeatable)."),
    n_samples: int = typer.Option(10_000, "--n-samples", "-n", min=2, help="Held-out tasks."),
    fit_samples: int = typer.Option(10_000, "--fit-samples", min=1,
                                    help="Tasks the algorithm's hyperparameters are fitted on."),
    seed: int = typer.Option(5, min=0, help="Seed of the held-out tasks (the fitting tasks use seed + 1)."),
    ood: str = typer.Option("0.5,0.75,1,1.5,2,3,4,5", callback=finite_floats(gt=0),
                            help="Out-of-distribution scales (> 0) of the task's ood parameter, comma-separated "
                            "('' for none)."),
    ood_samples: int = typer.Option(2000, "--ood-samples", min=2, help="Tasks per out-of-distribution scale."),
    device: str = typer.Option("cpu", help="Device of the model: cpu, cuda, mps or auto."),
    plot: Optional[Path] = typer.Option(None, help="PNG to write (default: compare.<hypotheses>.png next to the model)."),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON instead of a table."),
) -> None:
    """Compare MODEL with one or more hypotheses' algorithms: losses, prediction gap, sensitivity cosine."""
    use_threads(threads)
    from probekit.lenses.compare import CompareSettings, run_compare
    from probekit.report.compare import compare_json, compare_table, plot_compare
    from probekit.errors import UsageError
    from probekit.plugin.host import PluginHost
    from probekit.tasks import parse_params

    from probekit import outputs

    png = outputs.check_output(plot or _default_plot(model, hypothesis), outputs.FIGURE, option="--plot")
    host = PluginHost.default()
    try:
        scales = tuple(float(s) for s in ood.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--ood must be comma-separated numbers, got {ood!r}") from None
    params = parse_params(host.tasks.get(task).Params, param) if task else {}
    if param and not task:
        from probekit.tasks.resolve import PARAM_NEEDS_TASK, resolve_task

        params = resolve_task(host, model, None, param, missing=PARAM_NEEDS_TASK).given
    settings = CompareSettings(n_samples=n_samples, seed=seed, fit_samples=fit_samples, fit_seed=seed + 1,
                               ood_scales=scales, ood_samples=ood_samples, task=task, task_params=params,
                               options=parse_options(option), device=device)
    with progress("compare", 1, "steps", enabled=not as_json) as update:
        results = run_compare(host, model, list(hypothesis), settings,
                              on_progress=lambda what, done, total: update(done, info=what, total=total))
    plot_compare(results, png)
    if scales and not results.attrs.get("ood_param"):
        stderr_console().print(f"no out-of-distribution sweep: task {results.attrs.get('task', task)!r} declares no "
                               "ood_param (the Params field --ood scales; see docs/plugins.md)", soft_wrap=True)
    if as_json:
        import json

        payload = json.loads(compare_json(results))
        payload["plot"] = str(png)
        print_json(payload)
        return
    stdout_console().print(compare_table(results))
    stderr_console().print(f"plot: [bold]{png}[/bold]")


def _default_plot(model: str, hypotheses: list[str]) -> Path:
    """``toy:store/models/lsa`` -> ``store/models/lsa/compare.gd-gdpp.png``; other specs: the working directory."""
    scheme, _, rest = model.partition(":")
    where = Path(rest) if scheme == "toy" else Path(".")
    return where / f"compare.{'-'.join(hypotheses)}.png"
