"""Probe speed: probekit's Gram engine vs scikit-learn running the same nested, grouped CV.

Both sides get identical folds (samples dealt into K groups), the same alpha grid, alpha
chosen per target by an inner CV over the other folds, and are scored on the held-out
fold. The script checks that both give the same held-out error, then prints the times
and their ratio, measured side by side in this one run.

    python benchmarks/bench_probe.py                 # demo-sized: 2000 x 30 rows, 64 features
    python benchmarks/bench_probe.py --features 512 --targets 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--positions", type=int, default=30)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--targets", type=int, default=5, help="target columns (one target group)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch
    from sklearn.linear_model import Ridge
    from threadpoolctl import threadpool_limits

    from probekit.probes.ridge import FoldStats, cross_validate, grouped_folds

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, T, F, k, K = args.samples, args.positions, args.features, args.targets, args.folds
    X = rng.standard_normal((n * T, F)).astype(np.float32)
    Y = (X @ rng.standard_normal((F, k)) * 0.3 + rng.standard_normal((n * T, k))).astype(np.float32)
    row_fold = grouped_folds(n, K, seed=0)[np.repeat(np.arange(n), T)]

    with threadpool_limits(args.threads):
        np.linalg.eigh(np.eye(8) + 1)  # BLAS warm-up, outside the timings
        torch.linalg.eigh(torch.eye(8, dtype=torch.float64) + 1)

        t0 = time.perf_counter()
        stats = FoldStats(K, F, k, device=args.device)
        for i in range(0, len(X), 8192):  # streamed, as from a store
            stats.add(X[i : i + 8192], Y[i : i + 8192], row_fold[i : i + 8192])
        res = cross_validate(stats)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t_pk = time.perf_counter() - t0

        alphas = res.alphas
        X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
        t0 = time.perf_counter()
        sse = np.zeros(k)
        fits = 0
        for j in range(K):
            inner = np.zeros(len(alphas))
            for i in range(K):
                if i == j:
                    continue
                tr, te = (row_fold != i) & (row_fold != j), row_fold == i
                for a, alpha in enumerate(alphas):
                    m = Ridge(alpha=alpha).fit(X64[tr], Y64[tr])
                    inner[a] += ((m.predict(X64[te]) - Y64[te]) ** 2).sum()
                    fits += 1
            tr, te = row_fold != j, row_fold == j
            m = Ridge(alpha=alphas[inner.argmin()]).fit(X64[tr], Y64[tr])
            sse += ((m.predict(X64[te]) - Y64[te]) ** 2).sum(0)
            fits += 1
        t_sk = time.perf_counter() - t0

    agree = np.allclose(res.sse, sse, rtol=1e-6)
    print(f"data: {n} samples x {T} positions = {n * T:,} rows, {F} features, {k} target columns, "
          f"{K} folds, {len(alphas)} alphas, {args.threads} threads, device {args.device}")
    print(f"held-out R²: probekit {res.r2():.6f}  scikit-learn {1 - sse.sum() / res.sst.sum():.6f}  "
          f"(same held-out SSE: {agree})")
    print(f"probekit Gram engine : {t_pk:8.3f} s  (one pass, {K + K * (K - 1) // 2} eigh)")
    print(f"scikit-learn Ridge   : {t_sk:8.3f} s  ({fits} fits)")
    print(f"speed-up             : {t_sk / t_pk:8.1f}x")
    if not agree:
        raise SystemExit("results differ: the comparison is not like for like")


if __name__ == "__main__":
    main()
