"""``probekit probe``: regress a hypothesis' targets on every cached layer, with baselines."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from probekit.cli import app
from probekit.cli._common import (dask_option, parse_options, parse_storage_options, print_json, progress,
                                  scheduler_option, stderr_console, stdout_console, storage_option, threads_option,
                                  use_threads, workers_option)


def default_plot_path(store, hypothesis: str) -> Path:
    """``store/demo.zarr`` -> ``store/demo.rls.png`` (next to the store); a store at a URL
    (``s3://bucket/demo.zarr``): ``demo.rls.png`` in the working directory."""
    from probekit.store.location import Location

    where = Location(store)
    name = f"{where.name.removesuffix('.zarr')}.{hypothesis}.png"
    return Path(name) if where.remote else where.path.with_name(name)


@app.command()
def probe(
    store: str = typer.Argument(..., help="Store written by `probekit cache`: a folder or an object-store URL."),
    hypothesis: str = typer.Option(..., "--hypothesis", "-H", help="Hypothesis whose targets to probe (e.g. rls)."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="Hypothesis option key=value."),
    site: Optional[List[str]] = typer.Option(None, "--site", help="Sites to probe (default: all cached)."),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Targets to probe (default: all)."),
    folds: int = typer.Option(5, help="Cross-validation folds, grouped by sample."),
    seed: int = typer.Option(0, min=0, help="Seed of the folds and of the shuffled baseline."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Shuffled-target and random-init baselines."),
    per_pos: bool = typer.Option(False, "--per-pos", help="Also fit a separate probe at every position."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples of samples for R² CIs (0: none)."),
    null_model: bool = typer.Option(True, "--null-model/--no-null-model",
                                    help="Let the nested CV choose the intercept-only model (alpha inf, R² 0)."),
    device: str = typer.Option("cpu", help="Device of the probe arithmetic: cpu or cuda."),
    dask: bool = dask_option("Sum per-chunk statistics"),
    scheduler: Optional[str] = scheduler_option(),
    workers: int = workers_option(),
    plot: Optional[Path] = typer.Option(None, help="PNG to write (default: next to the store)."),
    storage: Optional[List[str]] = storage_option(),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON records instead of a table."),
) -> None:
    """Probe every layer of STORE for the targets of a hypothesis; print a table and write a PNG."""
    use_threads(threads)
    import contextlib

    from probekit.plugin.host import PluginHost
    from probekit.executors import dask_executor
    from probekit.probes.run import ProbeSettings, run_probe
    from probekit.report.probes import best_target, checkpoint_table, results_json, results_table

    from probekit import outputs
    from probekit.probes.run import save_results

    from probekit.store.zarr_store import Store

    opts = parse_storage_options(storage)
    at = Store(store, opts)  # a folder, or a URL read with the storage options
    store = at.path
    png = outputs.check_output(plot or default_plot_path(store, hypothesis), outputs.FIGURE, option="--plot")
    outputs.check_writable(store, option="STORE", storage_options=opts)  # the results are stored in it
    host = PluginHost.default()
    settings = ProbeSettings(n_folds=folds, seed=seed, sites=tuple(site) if site else None,
                             targets=tuple(target) if target else None, baselines=baselines, n_boot=n_boot,
                             per_pos=per_pos, null_model=null_model, device=device, options=parse_options(option))
    cluster = dask_executor(scheduler, workers) if (dask or scheduler) else contextlib.nullcontext(None)
    with cluster as executor, progress(f"probe {hypothesis}", 1, "layers", enabled=not as_json) as update:
        results, _ = run_probe(host, at, hypothesis, settings, executor=executor, write=False,
                               on_progress=lambda what, done, total: update(done, info=what, total=total))
    pngs = _figures(results, png, hypothesis, per_pos)  # first: results are stored only when all else succeeded
    through_training = "checkpoint" in results.dims
    key = save_results(at, results, hypothesis, settings)
    if as_json:
        import json

        payload = json.loads(results_json(results))
        payload["plots"] = [str(p) for p in pngs]
        print_json(payload)
        return
    out = stdout_console()
    for s in results.site.values:
        if not through_training:
            out.print(results_table(results, site=str(s)))
            continue
        shown = list(target) if target else [best_target(results, str(s))]
        for t in shown:
            out.print(checkpoint_table(results, site=str(s), target=t))
        others = [str(t) for t in results.target.values if str(t) not in shown]
        if others and not target:
            stderr_console().print(f"[dim]site {s}: showing {', '.join(shown)} (its R² changed most over training); "
                                   f"-t NAME shows another of: {', '.join(others)}; --json has all[/dim]")
    stderr_console().print(f"results: {store}/{key} · plots: " + ", ".join(f"[bold]{p}[/bold]" for p in pngs))


def _figures(results, png: Path, hypothesis: str, per_pos: bool) -> list[Path]:
    """Every figure of a probe run, per site: R² by layer and by position (through training: R²
    against the training step, and by layer at the last checkpoint). Returns their paths."""
    from probekit.report.probes import plot_r2, plot_r2_by_position, plot_r2_vs_checkpoint

    pngs = []
    for s in results.site.values:
        path = png if len(results.site) == 1 else png.with_name(f"{png.stem}.{s}{png.suffix}")
        if "checkpoint" in results.dims:
            pngs.append(plot_r2_vs_checkpoint(results, path, site=str(s)))
            last = results.isel(checkpoint=-1)
            last.attrs = {**results.attrs, "hypothesis": f"{hypothesis} at step {int(last.checkpoint)}"}  # a copy
            pngs.append(plot_r2(last, path.with_name(f"{path.stem}.final{path.suffix}"), site=str(s)))
            continue
        pngs.append(plot_r2(results, path, site=str(s)))
        pngs.append(plot_r2_by_position(results, path.with_name(f"{path.stem}.pos{path.suffix}"), site=str(s)))
        if per_pos:
            pngs.append(plot_r2_by_position(results, path.with_name(f"{path.stem}.perpos{path.suffix}"),
                                            site=str(s), variable="r2_per_pos"))
    return pngs
