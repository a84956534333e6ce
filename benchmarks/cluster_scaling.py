"""Distributed cache and probe (issue 16): throughput on a dask LocalCluster of 1 and 2 worker
processes (more with --workers) against one process, as parallel efficiency.

A random toy transformer (``--layers`` x ``--width``) caches ``--n`` lds sequences (float16
``resid``; the default makes a store of about 2 GB): once in this process, then on clusters of
each size in ``--workers``, each store checked equal to the first, chunk for chunk. The first
store is then probed (hypothesis ``rls``, no baselines, no bootstrap) in this process and on each
cluster. Every worker is single-threaded (dask sets OMP_NUM_THREADS=1 in its workers; this
process uses ``--threads``). Efficiency at W workers = (1-worker time) / (W x W-worker time).
Cluster start-up and the workers' imports are not timed (a cluster serves many commands);
loading the model on each worker is.

    python benchmarks/cluster_scaling.py --threads 1                 # ~2 GB, minutes on 2 cores
    python benchmarks/cluster_scaling.py --n 2000 --workers 1 2      # a quick look
    python benchmarks/cluster_scaling.py --workers 1 2 4 8           # on a machine with 8+ cores
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def chunk_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file() and "/c/" in str(p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=26000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=["cache", "probe"])
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temporary folder)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"threads: this process {torch.get_num_threads()}, workers 1 each; cores {os.cpu_count()}")
    from probekit.cache.run import CacheRequest, run_cache
    from probekit.executors import dask_executor
    from probekit.models.toy import checkpoint
    from probekit.models.toy.model import ToyTransformer
    from probekit.models.toy.presets import build_config
    from probekit.plugin.host import PluginHost
    from probekit.probes.run import ProbeSettings, run_probe

    host = PluginHost.default()
    task = host.tasks.get("lds")()
    cfg = build_config("softmax", task.io, n_layers=args.layers, d_model=args.width)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        torch.manual_seed(0)
        ckpt = checkpoint.save(ToyTransformer(cfg), checkpoint.Checkpoint(cfg, "lds", task.params.__dict__),
                               Path(tmp) / "m")

        def request(name: str):
            return CacheRequest(model=f"toy:{ckpt}", out=f"{tmp}/{name}.zarr", n_samples=args.n, seed=1,
                                batch_size=256)

        t0 = time.perf_counter()
        store = run_cache(host, request("local"))
        seconds = {("cache", 0): time.perf_counter() - t0}
        gb = sum(p.stat().st_size for p in store.path.rglob("*") if p.is_file()) / 1e9
        tokens = args.n * task.io.seq_len
        print(f"store: {args.n} x {args.layers + 1} layers x {task.io.seq_len} pos x {args.width} float16 = "
              f"{gb:.2f} GB on disk")
        reference = chunk_bytes(store.path) if "cache" not in args.skip else None
        settings = ProbeSettings(baselines=False, n_boot=0)
        if "probe" not in args.skip:
            t0 = time.perf_counter()
            serial, _ = run_probe(host, store, "rls", settings, write=False)
            seconds[("probe", 0)] = time.perf_counter() - t0
        for w in args.workers:
            with dask_executor(workers=w) as executor:
                executor.client.run(_warm_up)  # imports: part of the cluster's start-up, not of a command
                if "cache" not in args.skip:
                    t0 = time.perf_counter()
                    other = run_cache(host, request(f"w{w}"), executor=executor)
                    seconds[("cache", w)] = time.perf_counter() - t0
                    same = chunk_bytes(other.path) == reference
                    print(f"cache on {w} worker(s): chunks identical to one process: {same}")
                    other.remove()
                if "probe" not in args.skip:
                    t0 = time.perf_counter()
                    res, _ = run_probe(host, store, "rls", settings, executor=executor, write=False)
                    seconds[("probe", w)] = time.perf_counter() - t0
                    diff = float(abs(res.r2 - serial.r2).max())
                    print(f"probe on {w} worker(s): max |R² - one process| = {diff:.2e}")
        _table(seconds, args.workers, tokens, gb)


def _warm_up() -> None:
    import probekit.cache.distributed  # noqa: F401
    import probekit.probes.blocks  # noqa: F401
    import torch  # noqa: F401


def _table(seconds: dict, workers: list[int], tokens: int, gb: float) -> None:
    print("\n| job | where | seconds | rate | efficiency vs 1 worker |")
    print("|---|---|---|---|---|")
    for job in ("cache", "probe"):
        if (job, 0) not in seconds:
            continue
        one = seconds.get((job, 1))
        for w in [0, *workers]:
            if (job, w) not in seconds:
                continue
            s = seconds[(job, w)]
            rate = f"{tokens / s:,.0f} tok/s" if job == "cache" else f"{gb * 1e3 / s:,.1f} MB/s"
            eff = f"{one / (w * s):.2f}" if one and w else "-"
            print(f"| {job} | {'this process' if w == 0 else f'{w} worker(s)'} | {s:.1f} | {rate} | {eff} |")


if __name__ == "__main__":
    main()
