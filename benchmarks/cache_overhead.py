"""Caching overhead, measured side by side in one run: bare forward pass vs `probekit cache`.

For N and 4N sequences (each size in a fresh process), on the same inputs and batch size:
the bare forward pass, `run_cache` (hooks on every layer's `resid`, float16 conversion with
overflow check, zarr writes by chunk, the manifest), their ratio, MB/s written, and the
process's peak RSS. Imports are warmed up before timing, so the ratio is the per-sample
cost; the fixed cost of creating a store (task generation, metadata, consolidation) is
printed separately. In the same process the cache runs with the crc32c checksum codec on every
array (the default) and without it (``Store``'s ``checksum=False``), alternately, ``--repeat``
times each (the fastest is shown): what the checksum costs, free of the drift between processes.

    python benchmarks/cache_overhead.py            # N = 8000, demo-sized model (4 layers x 64)
    python benchmarks/cache_overhead.py --n 2000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import torch
n, threads, batch, layers, width, device = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
repeat = int(sys.argv[7])
torch.set_num_threads(threads)
import shutil
from probekit.store.zarr_store import Store
CHECKSUM = [True]  # every array the cache creates gets checksum=CHECKSUM[0]
for name in ("create_activation", "create_variable"):
    setattr(Store, name, lambda self, *a, _orig=getattr(Store, name), **kw: _orig(self, *a, **kw, checksum=CHECKSUM[0]))
_create = Store.create.__func__
Store.create = classmethod(lambda cls, *a, **kw: _create(cls, *a, **kw, checksum=CHECKSUM[0]))
import numpy as np, xarray, zarr  # warm the imports run_cache would otherwise pay inside the timing
from probekit.cache.run import CacheRequest, run_cache
from probekit.models.toy import checkpoint
from probekit.models.toy.model import ToyTransformer
from probekit.models.toy.presets import build_config
from probekit.plugin.host import PluginHost
host = PluginHost.default()
task = host.tasks.get("lds")()
cfg = build_config("softmax", task.io, n_layers=layers, d_model=width)
with tempfile.TemporaryDirectory() as tmp:
    torch.manual_seed(0)
    model = ToyTransformer(cfg)
    ckpt = checkpoint.save(model, checkpoint.Checkpoint(cfg, "lds", task.params.__dict__), Path(tmp) / "m")
    t0 = time.perf_counter(); x = torch.as_tensor(task.generate(n, seed=1)["x"].values); t_gen = time.perf_counter() - t0
    model = model.to(device).eval()
    with torch.no_grad():
        model(x[:batch].to(device))
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            out = model(x[i:i + batch].to(device)).cpu()
        t_bare = time.perf_counter() - t0
    # a tiny cache first: the fixed cost of making a store, and warm code paths
    t0 = time.perf_counter()
    run_cache(host, CacheRequest(model=f"toy:{ckpt}", out=f"{tmp}/warm.zarr", n_samples=8, seed=1, device=device))
    t_fixed = time.perf_counter() - t0
    t_cache, written = {0: [], 1: []}, {}
    for i in range(repeat):
        for checksum in (0, 1):
            CHECKSUM[0] = bool(checksum)
            t0 = time.perf_counter()
            store = run_cache(host, CacheRequest(model=f"toy:{ckpt}", out=f"{tmp}/s{checksum}.zarr", n_samples=n,
                                                 seed=1, batch_size=batch, device=device))
            t_cache[checksum].append(time.perf_counter() - t0)
            written[checksum] = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
            shutil.rmtree(store.path)
    raw = n * (layers + 1) * task.params.length * width * 2
print(json.dumps(dict(n=n, bare=t_bare, fixed=t_fixed, gen=t_gen, raw=raw,
                      rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      cache=min(t_cache[1]), written=written[1],
                      cache_off=min(t_cache[0]), written_off=written[0])))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8000, help="N; the second run uses 4N")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2, help="caches with and without the checksum, alternately, "
                                                         "in each process; the fastest of each is shown")
    args = ap.parse_args()
    rows = []
    for n in (args.n, 4 * args.n):
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(args.threads), str(args.batch_size),
                              str(args.layers), str(args.width), args.device, str(args.repeat)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"toy softmax transformer {args.layers} layers x {args.width}, lds length 30, caching every layer's resid "
          f"(float16), batch {args.batch_size}, {args.threads} threads, device {args.device}")
    print(f"{'samples':>8} {'bare s':>8} {'cache s':>8} {'no crc s':>8} {'crc':>6} {'ratio':>6} {'ex-gen':>6} "
          f"{'MB/s':>7} {'raw MiB':>8} "
          f"{'disk MiB':>9} {'peak RSS MiB':>13} {'fixed s':>8} {'task gen s':>10}")
    for r in rows:
        print(f"{r['n']:>8} {r['bare']:>8.3f} {r['cache']:>8.3f} {r['cache_off']:>8.3f} "
              f"{100 * (r['cache'] / r['cache_off'] - 1):>+5.1f}% {r['cache'] / r['bare']:>6.2f} "
              f"{(r['cache'] - r['gen']) / r['bare']:>6.2f} "
              f"{r['raw'] / 2**20 / r['cache']:>7.1f} {r['raw'] / 2**20:>8.1f} {r['written'] / 2**20:>9.1f} "
              f"{r['rss_mib']:>13.1f} {r['fixed']:>8.3f} {r['gen']:>10.3f}")
    a, b = rows
    print(f"peak RSS at 4N vs N: {b['rss_mib'] / a['rss_mib']:.2f}x  (the cache streams: memory is bounded by a block)")
    print("cache s: with the crc32c checksum codec (the default), no crc s: the same cache without it, crc: "
          f"its cost; disk MiB with it ({(rows[-1]['written'] - rows[-1]['written_off']):,} bytes more than "
          "without at 4N: 4 per chunk, and the codec in each array's metadata)")
    print("ratio = cache time / bare forward time on the same inputs; the cache time includes generating the "
          "task's samples and writing them, the fixed cost is a separate 8-sample cache; ex-gen = the same "
          "without generating the task's samples (the bare pass is timed on inputs generated beforehand)")


if __name__ == "__main__":
    main()
