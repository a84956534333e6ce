"""``probekit demo``: the embedded default, end to end: train a toy model on ``lds``,
cache it (and a random-init twin), probe the ``rls`` hypothesis, print the table, plot."""

from __future__ import annotations

from pathlib import Path

import typer

from probekit.cli import app
from probekit.cli._common import progress, stderr_console, stdout_console, threads_option, use_threads


@app.command()
def demo(
    out: Path = typer.Option(Path("store/demo"), help="Directory for the checkpoint, store and plot."),
    steps: int = typer.Option(3000, min=1, help="Training steps (3000 take about 2-3 minutes on 2 CPU cores)."),
    n_samples: int = typer.Option(2000, "--n-samples", "-n", min=5,
                                  help="Held-out sequences to cache and probe (at least one per probe fold)."),
    seed: int = typer.Option(0, min=0, help="Training seed."),
    fresh: bool = typer.Option(False, help="Retrain and recache even if earlier results exist."),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the probe results as JSON records instead of the table."),
) -> None:
    """Train -> cache -> probe `rls` -> table + PNG, with the default settings."""
    use_threads(threads)
    import json

    from probekit.cache.run import CacheRequest, run_cache
    from probekit.cli.probe import default_plot_path
    from probekit.models.toy import checkpoint
    from probekit.models.toy.train import TrainSettings, train
    from probekit.models.toy.presets import build_config
    from probekit.plugin.host import PluginHost
    from probekit.probes.run import run_probe
    from probekit.report.probes import plot_r2, plot_r2_by_position, results_table

    err = stderr_console()
    host = PluginHost.default()
    task = host.tasks.get("lds")()
    config = build_config("softmax", task.io)
    settings = TrainSettings(steps=steps, seed=seed)
    ckpt_dir, store_path = out / "model", out / "demo.zarr"

    # 1. train (skipped when an identical checkpoint exists: the demo resumes)
    wanted = {"model": config.to_dict(), "task_params": json.loads(json.dumps(task.params.__dict__)),
              "steps": steps, "seed": seed}
    have = None
    if (ckpt_dir / checkpoint.CONFIG).is_file() and not fresh:
        c = checkpoint.read(ckpt_dir)
        have = {"model": c.config.to_dict(), "task_params": c.task_params,
                "steps": c.training.get("steps"), "seed": c.training.get("seed")}
    if have == wanted:
        err.print(f"[1/3] reusing trained model {ckpt_dir} (pass --fresh to retrain)")
    else:
        err.print(f"[1/3] training a {config.n_layers}-layer softmax transformer on lds "
                  f"(dim {task.params.dim}, length {task.params.length}) for {steps} steps")
        with progress("train lds", steps, "steps") as update:
            train(task, config, settings, ckpt_dir, overwrite=True,
                  on_step=lambda s, loss: update(s, info=f"loss {loss:.4f}") if s % 10 == 0 or s == steps else None)
        fresh = True  # a new model invalidates the old store
    err.print(f"      final training loss {checkpoint.read(ckpt_dir).training['final_loss']:.4f}")

    # 2. cache the trained model and a random-init twin on held-out sequences
    err.print(f"[2/3] caching the residual stream of {n_samples} held-out sequences (+ random-init baseline)")
    req = CacheRequest(model=f"toy:{ckpt_dir}", out=str(store_path), n_samples=n_samples, seed=seed + 1,
                       random_init=True)
    with progress("cache", 2 * n_samples, "samples") as update:
        run_cache(host, req, overwrite=fresh,
                  on_progress=lambda ph, d, n: update(d + (n if ph == "random-init" else 0), info=ph))

    # 3. probe every layer for every rls target
    err.print("[3/3] probing every layer for the rls targets (5-fold CV grouped by sequence)")
    with progress("probe rls", 1, "layers") as update:
        results, key = run_probe(host, store_path, "rls",
                                 on_progress=lambda what, d, t: update(d, info=what, total=t))
    png = plot_r2(results, default_plot_path(store_path, "rls"))
    heat = plot_r2_by_position(results, png.with_name(f"{png.stem}.pos{png.suffix}"))
    if as_json:
        from probekit.cli._common import print_json
        from probekit.report.probes import results_json

        print_json({**json.loads(results_json(results)), "store": str(store_path), "key": key,
                    "plots": [str(png), str(heat)]})
        return
    stdout_console().print(results_table(results))
    last = int(results.layer.values[-1])
    r2 = results.r2.sel(site="resid", layer=last, target="rls_pred")
    ci = results.sel(site="resid", layer=last, target="rls_pred", condition="model")
    line = f"model {float(ci.r2):.3f} [{float(ci.r2_lo):.3f}, {float(ci.r2_hi):.3f}]"
    line += "".join(f", {c} {float(r2.sel(condition=c)):.3f}" for c in results.condition.values[1:])
    stdout_console().print(f"rls_pred at the last layer (L{last}): held-out R² {line}")
    err.print(f"store: {store_path} (results in {key}) · plots: [bold]{png}[/bold], [bold]{heat}[/bold]")
