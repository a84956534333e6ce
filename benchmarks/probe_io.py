"""Probe I/O (issue 15, item 5): bytes read from the store per full probe sweep, and probe MB/s
against a raw read of the same chunk files.

Caches ``--n`` lds sequences of a random toy transformer (``--layers`` x ``--width``, float16
``resid``), then runs ``run_probe`` (hypothesis ``rls``) twice: model probes only
(``baselines=False``) and with baselines. Every chunk read goes through the zarr store's ``get``,
which is wrapped to count the bytes of the activation chunks it returns; the table gives them
per sweep as a multiple of the activation bytes in the store (goal <= 1.1 for model-only), the
probe's MB/s of activation bytes, and the MB/s of reading every activation chunk file once
(``cat``-like, after the probe, so both find the page cache warm).

    python benchmarks/probe_io.py --n 4000 --threads 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def count_reads(prefix: str):
    """Wrap zarr's LocalStore.get: returns the counter of bytes read under keys starting ``prefix``."""
    import zarr.storage

    counter = {"bytes": 0, "gets": 0}
    real = zarr.storage.LocalStore.get

    async def get(self, key, *a, **kw):
        buf = await real(self, key, *a, **kw)
        if buf is not None and key.startswith(prefix) and "/c/" in key:
            counter["bytes"] += len(buf)
            counter["gets"] += 1
        return buf
    zarr.storage.LocalStore.get = get
    return counter


def raw_read(folder: Path) -> tuple[int, float]:
    files = [p for p in folder.rglob("*") if p.is_file() and "/c/" in str(p)]
    t0 = time.perf_counter()
    n = sum(len(p.read_bytes()) for p in files)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    from probekit.cache.run import CacheRequest, run_cache
    from probekit.models.toy import checkpoint
    from probekit.models.toy.model import ToyTransformer
    from probekit.models.toy.presets import build_config
    from probekit.plugin.host import PluginHost
    from probekit.probes.run import ProbeSettings, run_probe

    host = PluginHost.default()
    task = host.tasks.get("lds")()
    cfg = build_config("softmax", task.io, n_layers=args.layers, d_model=args.width)
    counter = count_reads("resid")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ckpt = checkpoint.save(ToyTransformer(cfg), checkpoint.Checkpoint(cfg, "lds", task.params.__dict__),
                               Path(tmp) / "m")
        store = run_cache(host, CacheRequest(model=f"toy:{ckpt}", out=f"{tmp}/s.zarr", n_samples=args.n, seed=1))
        act_bytes = sum(p.stat().st_size for p in (store.path / "resid").rglob("*") if p.is_file() and
                        "/c/" in str(p))
        print(f"store: {args.n} x {args.layers + 1} layers x {task.params.length} pos x {args.width} float16 resid = "
              f"{act_bytes / 1e6:.1f} MB of chunks (compressed as stored)")
        print("| probe | bytes read / activation bytes | chunk reads | probe s | probe MB/s | raw read MB/s |")
        print("|---|---|---|---|---|---|")
        for label, base in (("model only (--no-baselines)", False), ("with baselines", True)):
            counter.update(bytes=0, gets=0)
            t0 = time.perf_counter()
            run_probe(host, store.path, "rls", ProbeSettings(baselines=base, n_boot=0), write=False)
            secs = time.perf_counter() - t0
            raw, raw_secs = raw_read(store.path / "resid")
            print(f"| {label} | {counter['bytes'] / act_bytes:.2f} | {counter['gets']} | {secs:.2f} | "
                  f"{counter['bytes'] / secs / 1e6:.1f} | {raw / raw_secs / 1e6:.0f} |")


if __name__ == "__main__":
    main()
