"""Grouped ridge CV: probekit's RidgeProbe vs scikit-learn's RidgeCV, timed side by side.

Rows come in groups (positions of one sequence); folds are whole groups, built once by
``GroupKFold`` and given to both sides, with the same absolute alpha grid. probekit makes
one streaming pass of Gram statistics and one eigh per training set; scikit-learn's
``RidgeCV(cv=...)`` refits Ridge for every alpha and fold (then once more on all rows).
``RidgeCV()`` without ``cv`` is the efficient leave-one-out shortcut: fast, but it
leaks between positions of one group, so it is shown for time only. Then probekit alone:
how time scales with alphas and targets, and peak memory, each in a fresh subprocess.
Last, the rows as `probekit probe` reads them: stored as a float16 activation array (one
chunk per sample block, as `probekit cache` writes it) with the crc32c checksum codec (the
default) and without it, every chunk read back alternately: what checksums cost a probe.

    python benchmarks/probe_vs_sklearn.py            # 2000 groups x 50 positions, 768 features
    python benchmarks/probe_vs_sklearn.py --quick    # seconds

Exits non-zero if probekit and grouped RidgeCV disagree on alpha, or on coefficients
beyond 1e-6 relative (max |difference| / max |coefficient|).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

CHUNK = 8192  # RidgeProbe's streaming chunk (probekit.probes.estimators._BATCH_ROWS)


def make_data(groups, positions, d, k, seed=0):
    """float32 X [N, d] with a shared per-group component and a nonzero mean; Y = X W + noise."""
    rng = np.random.default_rng(seed)
    N = groups * positions
    mu = rng.standard_normal(d).astype(np.float32)
    W = (rng.standard_normal((d, k)) / np.sqrt(d)).astype(np.float32)
    g_x = rng.standard_normal((groups, d), dtype=np.float32)
    g_y = rng.standard_normal((groups, k), dtype=np.float32)
    group = np.repeat(np.arange(groups), positions)
    X = np.empty((N, d), np.float32)
    Y = np.empty((N, k), np.float32)
    for i in range(0, N, CHUNK):  # chunked so generation does not raise the RSS high-water mark
        g = group[i : i + CHUNK]
        xb = mu + 0.6 * g_x[g] + 0.8 * rng.standard_normal((len(g), d), dtype=np.float32)
        X[i : i + len(g)] = xb
        Y[i : i + len(g)] = xb @ W + 0.4 * g_y[g] + 0.6 * rng.standard_normal((len(g), k), dtype=np.float32)
    return X, Y, group


def setup(threads):
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    limits = threadpool_limits(threads)
    a = np.random.default_rng(0).standard_normal((64, 64))
    np.linalg.eigh(a @ a.T)  # BLAS warm-up, outside the timings
    torch.linalg.eigh(torch.from_numpy(a @ a.T))
    return limits


def fit_probe(X, Y, group, rel_alphas, folds, device):
    import torch
    from sklearn.model_selection import GroupKFold

    from probekit.probes.estimators import RidgeProbe

    t0 = time.perf_counter()
    probe = RidgeProbe(alphas=rel_alphas, cv=GroupKFold(folds), device=device).fit(X, Y, groups=group)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return probe, time.perf_counter() - t0


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> float:
    """Reset the RSS high-water mark to the current RSS where Linux allows it; return the baseline (MiB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mib("VmRSS")
    except OSError:  # no reset: fall back to the process-lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss() -> float:
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(cfg: dict) -> None:
    """One probekit fit in this (fresh) process: time and peak-RSS increase during the fit."""
    setup(cfg["threads"])
    X, Y, group = make_data(cfg["groups"], cfg["positions"], cfg["d"], cfg["k"])
    rel = np.logspace(-6, 4, cfg["alphas"])
    fit_probe(X[:2000], Y[:2000], group[:2000], rel[:2], 2, cfg["device"])  # import and warm everything
    before = reset_peak_rss()
    _, t = fit_probe(X, Y, group, rel, cfg["folds"], cfg["device"])
    rss = peak_rss()
    print(json.dumps({"time": t, "rss_before": before, "rss_peak": rss, "products": products_time(X, Y)}))


def products_time(X, Y) -> float:
    """Seconds of the float64 products ``x^T [x | y]`` over all chunks, timed alone: the
    arithmetic any exact Gram method must do (the chunks' float64 copies are made untimed)."""
    import torch

    total = 0.0
    for i in range(0, len(X), CHUNK):
        buf = torch.from_numpy(np.concatenate([X[i : i + CHUNK], Y[i : i + CHUNK]], axis=1)).double()
        x = buf[:, : X.shape[1]]
        t0 = time.perf_counter()
        x.T @ buf
        total += time.perf_counter() - t0
    return total


def run_child(base: dict, **over) -> dict:
    cfg = {**base, **over}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)],
                         capture_output=True, text=True, check=True)
    return {**cfg, **json.loads(out.stdout.strip().splitlines()[-1])}


def store_read_times(X, groups, positions, repeat=3) -> dict:
    """Seconds to read every chunk of ``X`` stored as probekit stores it (``(sample, layer, pos,
    feature)`` float16, one sample block per chunk), read back as float32 like a probe does:
    ``{True: with crc32c, False: without}``, the fastest of ``repeat`` alternate reads."""
    import tempfile
    from pathlib import Path

    from probekit.cache.plan import sample_block
    from probekit.store.zarr_store import Store

    d = X.shape[1]
    block = sample_block(groups, positions * d * 2)
    times = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {}
        for checksum in (True, False):
            store = Store(Path(tmp) / f"{checksum}.zarr")
            store.create_activation("resid", (groups, 1, positions, d), dtype="float16", block=block,
                                    checksum=checksum)
            arr = store.writable(["resid"])["resid"]
            for s0 in range(0, groups, block):
                rows = X[s0 * positions : min(groups, s0 + block) * positions]
                arr[s0 : s0 + block] = rows.reshape(-1, 1, positions, d).astype(np.float16)
            arrays[checksum] = store.array("resid")
        for _ in range(repeat):
            for checksum, arr in arrays.items():
                t0 = time.perf_counter()
                for s0 in range(0, groups, block):
                    np.asarray(arr[s0 : s0 + block, 0], dtype=np.float32)
                times[checksum].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()} | {"block": block, "mib": groups * positions * d * 2 / 2**20}


def theory_mib(d, k, folds, alphas) -> tuple[float, float]:
    """(one float64 chunk of rows, fold statistics + solve) in MiB."""
    chunk = CHUNK * (d + k) * 8
    stats = (folds * (d * d + d * k) + 3 * d * d + min(alphas * d * k, 1 << 23)) * 8
    return chunk / 2**20, stats / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=2000)
    ap.add_argument("--positions", type=int, default=50)
    ap.add_argument("--features", type=int, default=768)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--alphas", type=int, default=30)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="400 groups x 50 positions, 128 features")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.quick:
        args.groups, args.features = 400, 128

    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold

    n, T, d, k, K, A = args.groups, args.positions, args.features, args.targets, args.folds, args.alphas
    _limits = setup(args.threads)  # keep the threadpool limiter alive for the whole run
    X, Y, group = make_data(n, T, d, k)
    rel = np.logspace(-6, 4, A)  # relative alphas: times trace(centred Gram) / d
    print(f"data: {n} groups x {T} positions = {n * T:,} rows, {d} features, {k} targets, {A} alphas, "
          f"GroupKFold({K}), {args.threads} threads, probekit device {args.device}")

    fit_probe(X[:2000], Y[:2000], group[:2000], rel[:2], 2, args.device)  # warm torch/sklearn paths
    probe, t_pk = fit_probe(X, Y, group, rel, K, args.device)
    splits = list(GroupKFold(K).split(X, Y, group))  # the same folds, as explicit (train, test) pairs
    assert all(len(te) == n * T // K for _, te in splits), "benchmark wants equal-size folds"
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    t0 = time.perf_counter()
    grouped = RidgeCV(alphas=probe.alphas_, cv=splits, scoring="neg_mean_squared_error").fit(X64, Y64)
    t_grouped = time.perf_counter() - t0
    t0 = time.perf_counter()
    loo = RidgeCV(alphas=probe.alphas_).fit(X64, Y64)
    t_loo = time.perf_counter() - t0
    del X64, Y64

    def diff(m):
        return np.abs(m.coef_ - probe.coef_).max() / np.abs(probe.coef_).max()

    rows = [
        (f"probekit RidgeProbe(cv=GroupKFold({K}))", t_pk, probe.alpha_, 0.0),
        (f"sklearn RidgeCV(cv=GroupKFold({K}))", t_grouped, grouped.alpha_, diff(grouped)),
        ("sklearn RidgeCV() LOO, leaks in groups", t_loo, loo.alpha_, diff(loo)),
    ]
    print(f"\n{'method':<42}{'time s':>9}{'vs probekit':>13}{'alpha':>11}{'max rel coef diff':>19}")
    for name, t, alpha, dc in rows:
        print(f"{name:<42}{t:>9.2f}{t / t_pk:>12.1f}x{alpha:>11.3g}{dc:>19.1e}")
    print(f"sklearn grouped RidgeCV fitted Ridge {A * K + 1} times; probekit made 1 pass + {K + 1} eigh. "
          f"Held-out R² at probekit's alpha: {probe.best_score_:.4f}")
    del X, Y

    base = dict(groups=n, positions=T, d=d, k=k, alphas=A, folds=K, threads=args.threads, device=args.device)
    print("\nprobekit scaling (each configuration in a fresh process; peak RSS rise during the fit):")
    cfgs = {"10 alphas": dict(alphas=10), "100 alphas": dict(alphas=100), "1 target": dict(k=1),
            "1000 targets": dict(k=1000)}
    res = {name: run_child(base, **over) for name, over in cfgs.items()}
    for name, r in res.items():
        chunk, stats = theory_mib(r["d"], r["k"], K, r["alphas"])
        print(f"  {name:>13}: {r['time']:7.2f} s, peak RSS +{r['rss_peak'] - r['rss_before']:7.1f} MiB "
              f"(theory: one float64 chunk {chunk:.1f} MiB + folds/solve {stats:.1f} MiB; "
              f"data held {(n * T * (d + r['k']) * 4) / 2**20:.0f} MiB)")
    print(f"  100 vs 10 alphas: {res['100 alphas']['time'] / res['10 alphas']['time']:.2f}x time; "
          f"1000 vs 1 targets: {res['1000 targets']['time'] / res['1 target']['time']:.2f}x time")
    one, many = res["1 target"], res["1000 targets"]
    print(f"  the products X^T X and X^T Y alone (float64, timed in the same processes): {one['products']:.2f} s "
          f"-> {many['products']:.2f} s = {many['products'] / one['products']:.2f}x, the floor for any exact "
          f"method (X^T Y costs {many['k'] / d:.2f}x X^T X when targets outnumber features); "
          f"the rest of the fit: {one['time'] - one['products']:.2f} s -> {many['time'] - many['products']:.2f} s")

    reads = store_read_times(make_data(n, T, d, 1)[0], n, T)
    print(f"\nthe same rows from a store ({reads['mib']:.0f} MiB of float16, {reads['block']} samples a chunk), every "
          f"chunk read as a probe reads it: {reads[True]:.3f} s with the crc32c checksum, {reads[False]:.3f} s "
          f"without ({100 * (reads[True] / reads[False] - 1):+.1f} %); probekit's fit above: {t_pk:.2f} s, so the "
          f"checksum adds {100 * 2 * (reads[True] - reads[False]) / t_pk:+.1f} % to a probe (two reads per chunk)")

    ok = grouped.alpha_ == probe.alpha_ and diff(grouped) <= 1e-6
    print("\nagreement with grouped RidgeCV:", "OK" if ok else "FAILED (alpha or coefficients differ)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
