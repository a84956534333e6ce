"""Caching overhead: `run_cache` (hooks + float16 + zarr writes + manifest) vs a bare forward pass.

Both run the same model on the same inputs with the same batch size in this one run; the
ratio is what writing a resumable store costs on top of computing the activations.

    python benchmarks/bench_cache.py --samples 4000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from probekit.cache import CacheRequest, run_cache
    from probekit.models import checkpoint
    from probekit.models.toy import ToyTransformer
    from probekit.models.zoo import build_config
    from probekit.plugins import PluginHost

    torch.set_num_threads(args.threads)
    host = PluginHost.default()
    task = host.tasks.get("lds")()
    cfg = build_config("softmax", task.io, n_layers=args.layers, d_model=args.width)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = ToyTransformer(cfg)
        ckpt = checkpoint.save(model, checkpoint.Checkpoint(cfg, "lds", task.params.__dict__), Path(tmp) / "m")
        x = torch.as_tensor(task.generate(args.samples, seed=1)["x"].values, device=args.device)
        model = model.to(args.device).eval()
        with torch.no_grad():  # warm-up
            model(x[: args.batch_size])

        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, args.samples, args.batch_size):
                out = model(x[i : i + args.batch_size])
            float(out.sum())
        t_bare = time.perf_counter() - t0

        req = CacheRequest(model=f"toy:{ckpt}", out=str(Path(tmp) / "s.zarr"), n_samples=args.samples,
                           seed=1, batch_size=args.batch_size, device=args.device)
        t0 = time.perf_counter()
        store = run_cache(host, req)
        t_cache = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())

    print(f"{args.samples} sequences x {task.params.length} positions, {args.layers} layers x {args.width} "
          f"features, batch {args.batch_size}, {args.threads} threads, device {args.device}")
    print(f"bare forward pass       : {t_bare:7.3f} s")
    print(f"probekit cache (resid)  : {t_cache:7.3f} s  (store {size / 2**20:.1f} MiB, includes task generation)")
    print(f"cache / bare            : {t_cache / t_bare:7.2f}x")


if __name__ == "__main__":
    main()
