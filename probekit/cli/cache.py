"""``probekit cache``: run a model over task inputs and write activations to a zarr store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from probekit.cli import app
from probekit.cli._common import (dask_option, parse_resources, parse_storage_options, print_json, progress,
                                  scheduler_option, stderr_console, storage_option, threads_option, use_threads,
                                  worker_resources_option, workers_option)
from probekit.errors import UsageError


@app.command()
def cache(
    model: Optional[str] = typer.Option(None, "--model", help="Model spec, e.g. toy:store/models/demo "
                                        "(optional with --checkpoints)."),
    out: str = typer.Option(..., "--out", help="Store to write: a .zarr directory, or an object-store URL "
                            "(s3://bucket/run.zarr, gs://...; see --storage-option)."),
    task: Optional[str] = typer.Option(None, help="Task (default: the one the toy model was trained on)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Task parameter key=value (repeatable)."),
    n_samples: int = typer.Option(2000, "--n-samples", "-n", min=1,
                                  help="Sequences to cache (with --text: at most)."),
    text: Optional[Path] = typer.Option(None, help="Prompts to cache instead of a task: .txt (one per line) or "
                                        ".jsonl ({\"text\": ...} per line), tokenised by the model."),
    max_len: Optional[int] = typer.Option(None, "--max-len", min=1,
                                          help="With --text: truncate prompts to this many tokens."),
    seed: int = typer.Option(1, min=0, help="Seed of the task samples (use one unseen in training)."),
    site: Optional[List[str]] = typer.Option(None, "--site", help="Site to cache (repeatable; default resid): resid, "
                                             "attn_out, mlp_out, attn_pattern, or a TransformerLens hook name "
                                             "(blocks.3.hook_resid_post = resid layer 4; its whole site is cached)."),
    dtype: str = typer.Option("float16", help="Storage dtype: float16 (overflow-checked) or float32."),
    model_dtype: Optional[str] = typer.Option(None, "--model-dtype",
                                              help="Compute dtype of hf: models: float32, bfloat16 or float16."),
    random_init: bool = typer.Option(False, "--random-init", help="Also cache a random-init model of the same "
                                     "architecture (a probe baseline) into the store's random_init group."),
    batch_size: int = typer.Option(256, min=1, help="Sequences per forward pass."),
    block: Optional[int] = typer.Option(None, min=1, help="Samples per chunk (default: chunks of about 4 MB)."),
    shard: Optional[str] = typer.Option(None, help="Samples per shard (zarr sharding codec: one object holds every "
                                        "layer of that many samples), or auto (stores of 8 GiB or more); "
                                        "for millions of chunks on a filesystem or object store."),
    inflight: int = typer.Option(2, min=1, help="Blocks computed ahead of their writes (memory: about "
                                 "inflight + 1 blocks)."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
    checkpoints: Optional[str] = typer.Option(None, "--checkpoints", help="Cache the same inputs through every "
                                              "toy checkpoint of a training run into a checkpoint dim: a directory "
                                              "of them (OUT/checkpoints of `probekit train --checkpoint-every`) "
                                              "or a glob."),
    logits: str = typer.Option("keep", "--logits", help="Model output per position: keep (model_out), skip, or "
                               "topk:K (the K largest values and their indices)."),
    overwrite: bool = typer.Option(False, help="Replace an existing store."),
    dask: bool = dask_option("Compute and write the blocks"),
    scheduler: Optional[str] = scheduler_option(),
    workers: int = workers_option(),
    worker_resources: Optional[List[str]] = worker_resources_option(),
    storage: Optional[List[str]] = storage_option(),
    threads: int = threads_option(),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of text."),
) -> None:
    """Cache activations of MODEL on task samples; rerun the same command to resume."""
    use_threads(threads)
    from probekit.cache.run import CacheRequest
    from probekit.plugin.host import PluginHost
    from probekit.report.cache import cache_summary, cache_summary_line
    from probekit.tasks import parse_params
    from probekit.store.location import is_url

    host = PluginHost.default()
    err = stderr_console()
    if not model and not checkpoints:
        raise UsageError("pass --model (or --checkpoints with a training run's checkpoints)")
    params = {}
    if task and param:
        params = parse_params(host.tasks.get(task).Params, param)
    elif param:
        from probekit.tasks.resolve import PARAM_NEEDS_TASK, resolve_task

        params = resolve_task(host, model or _first_checkpoint(checkpoints), None, param,
                              missing=PARAM_NEEDS_TASK).given
    req = CacheRequest(model=model, out=out if is_url(out) else str(Path(out)), task=task, task_params=params,
                       n_samples=n_samples, seed=seed, sites=cache_sites(site, err if not as_json else None), dtype=dtype, random_init=random_init,
                       batch_size=batch_size, device=device, block=block, inflight=inflight,
                       shard=int(shard) if shard and shard.isdigit() else shard,
                       text=str(text) if text else None, max_len=max_len, model_dtype=model_dtype,
                       checkpoints=checkpoints, logits=logits,
                       storage_options=parse_storage_options(storage))
    started = time.perf_counter()
    with _cluster(dask, scheduler, workers, parse_resources(worker_resources)) as executor:
        store = _run(host, req, overwrite=overwrite, console=None if as_json else err, executor=executor)
    summary = cache_summary(store, time.perf_counter() - started)
    if as_json:
        print_json(summary)
    else:
        err.print(cache_summary_line(summary))


def _cluster(dask: bool, scheduler: str | None, workers: int, resources: dict | None):
    """The dask cluster the blocks run on (a context manager; yields None without --dask/--scheduler)."""
    import contextlib

    from probekit.executors import dask_executor

    if resources and not (dask or scheduler):
        raise UsageError("--worker-resources needs --dask or --scheduler")
    return dask_executor(scheduler, workers, resources) if (dask or scheduler) else contextlib.nullcontext(None)


def _run(host, req, *, overwrite: bool, console, executor=None):
    """:func:`probekit.cache.run.run_cache` with a progress bar and the size estimate on ``console``
    (none: quiet, for --json)."""
    from probekit.cache.run import run_cache

    factor = 2 if req.random_init else 1
    plan: dict = {}

    def on_start(info: dict) -> None:
        plan.update(info, t0=time.perf_counter())
        if console is not None:
            verb = "resuming" if info["resuming"] else "writing"
            console.print(f"{verb} {req.out}: about {info['estimated_bytes'] / 2**20:,.1f} MiB uncompressed "
                          + (f"({info['free_bytes'] / 2**30:,.1f} GiB free)" if info["free_bytes"] is not None
                             else "(object store)"))

    with progress("cache", req.n_samples * factor, "samples", enabled=console is not None) as update:
        def on_progress(phase: str, done: int, n: int) -> None:
            done = done + (n if phase == "random-init" else 0)
            update(done, info=f"{phase} · {rates(plan)}", total=n * factor)

        return run_cache(host, req, overwrite=overwrite, on_progress=on_progress, on_start=on_start,
                         executor=executor)


def rates(plan: dict) -> str:
    """Tokens (valid positions) and MB written per second by this run (resumed blocks not counted)."""
    written = plan.get("written") or {}
    seconds = max(time.perf_counter() - plan.get("t0", time.perf_counter()), 1e-9)
    return f"{written.get('tokens', 0) / seconds:,.0f} tok/s · {written.get('bytes', 0) / 2**20 / seconds:,.1f} MB/s"


def cache_sites(names: list[str] | None, console=None) -> tuple[str, ...]:
    """Sites to cache as given (TransformerLens hook names are mapped by the cache; each is noted here)."""
    from probekit.models.sites import alias_notes

    for note in alias_notes(names) if console else []:
        console.print(f"[dim]{note}[/dim]")
    return tuple(names or ("resid",))


def _first_checkpoint(source: str) -> str:
    from probekit.cache.checkpoints import resolve

    return resolve(source)[0].spec
