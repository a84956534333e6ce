"""CUDA vs CPU for RidgeProbe at the probe benchmark's size, timed side by side in one run.

2000 groups x 50 positions = 100,000 rows, 768 features, 8 targets, 30 alphas, GroupKFold(5),
the data of ``probe_vs_sklearn.py``. Each device is warmed up, then timed ``--repeats``
times (median reported). Prints the speed-up and the agreement (chosen alpha, coefficients,
held-out R²), then how the CUDA path scales with alphas and targets. Needs a CUDA device.

    python benchmarks/gpu_ridge_check.py --threads 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from probe_vs_sklearn import make_data, setup  # noqa: E402


def timed_fit(X, Y, group, rel, device, repeats):
    import torch
    from sklearn.model_selection import GroupKFold

    from probekit.probes.estimators import RidgeProbe

    times, probe = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        probe = RidgeProbe(alphas=rel, cv=GroupKFold(5), device=device).fit(X, Y, groups=group)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return probe, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=16, help="CPU threads for the CPU side")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_ridge_check: no CUDA device")
    _limits = setup(args.threads)
    X, Y, group = make_data(2000, 50, 768, 8)
    rel = np.logspace(-6, 4, 30)
    for dev in ("cpu", "cuda"):  # warm-up: imports, BLAS/cuBLAS/cusolver handles
        timed_fit(X[:5000], Y[:5000], group[:5000], rel[:2], dev, 1)
    cpu, t_cpu = timed_fit(X, Y, group, rel, "cpu", args.repeats)
    gpu, t_gpu = timed_fit(X, Y, group, rel, "cuda", args.repeats)
    print(f"RidgeProbe 100,000 x 768, 8 targets, 30 alphas, GroupKFold(5); median of {args.repeats}")
    print(f"  cpu ({args.threads} threads) {t_cpu:7.3f} s")
    print(f"  cuda ({torch.cuda.get_device_name()}) {t_gpu:7.3f} s   speed-up {t_cpu / t_gpu:.1f}x")
    coef = float(np.abs(cpu.coef_ - gpu.coef_).max() / np.abs(cpu.coef_).max())
    same = bool(np.isclose(cpu.alpha_, gpu.alpha_, rtol=1e-12))  # grids differ in the last bits
    print(f"  same alpha: {same}  max rel coef diff {coef:.1e}  "
          f"R² cpu {cpu.best_score_:.6f} cuda {gpu.best_score_:.6f}")
    del X, Y
    print("cuda scaling:")
    base = None
    for k, A in ((1, 30), (8, 10), (8, 100), (1000, 30)):
        X, Y, group = make_data(2000, 50, 768, k)
        _, t = timed_fit(X, Y, group, np.logspace(-6, 4, A), "cuda", args.repeats)
        base = base or t
        print(f"  {k:5d} targets {A:4d} alphas: {t:7.3f} s ({t / base:.2f}x the 1-target fit)")
    ok = same and coef <= 1e-6
    print("agreement:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
