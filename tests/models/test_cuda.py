"""The CUDA paths give the CPU paths' answers (skipped without a GPU; run on one with
``pytest tests/models/test_cuda.py``). Statistics are float64 on both devices, so the ridge
engine agrees to 1e-6; logistic probes and cached activations are float32 model
arithmetic and agree to a looser, stated tolerance."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _rows(n_groups=300, T=20, F=96, k=6, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n_groups * T, F)) + 5.0).astype(np.float32)
    Y = X @ rng.standard_normal((F, k)) * 0.2 + rng.standard_normal((n_groups * T, k))
    return X, Y, np.repeat(np.arange(n_groups), T)


@pytest.mark.parametrize("per_target", [False, True])
def test_ridge_probe_cuda_equals_cpu(per_target):
    from probekit.probes.estimators import RidgeProbe

    X, Y, g = _rows()
    cpu = RidgeProbe(cv=5, alpha_per_target=per_target, device="cpu").fit(X, Y, groups=g)
    gpu = RidgeProbe(cv=5, alpha_per_target=per_target, device="cuda").fit(X, Y, groups=g)
    # the same grid point: the grids differ in the last bits (their scale is a float64 trace)
    np.testing.assert_allclose(gpu.alpha_, cpu.alpha_, rtol=1e-12)
    assert _rel(gpu.coef_, cpu.coef_) < 1e-6
    assert _rel(gpu.intercept_, cpu.intercept_) < 1e-6
    assert abs(gpu.best_score_ - cpu.best_score_) < 1e-9
    assert _rel(gpu.predict(X[:50]), cpu.predict(X[:50])) < 1e-6


def test_nested_cv_statistics_cuda_equal_cpu():
    from probekit.probes.ridge import FoldStats, cross_validate, grouped_folds

    X, Y, g = _rows(k=4)
    fold = grouped_folds(300, 5, seed=1)[g]
    res = {}
    for dev in ("cpu", "cuda"):
        st = FoldStats(5, X.shape[1], Y.shape[1], device=dev)
        for i in range(0, len(X), 1000):
            st.add(X[i:i + 1000], Y[i:i + 1000], fold[i:i + 1000])
        res[dev] = cross_validate(st, col_groups=[0, 0, 1, 1])
    np.testing.assert_allclose(res["cuda"].alpha, res["cpu"].alpha, rtol=1e-12)
    assert _rel(res["cuda"].sse, res["cpu"].sse) < 1e-6
    assert _rel(res["cuda"].fold_coef, res["cpu"].fold_coef) < 1e-6


def test_logistic_probe_cuda_matches_cpu():
    from probekit.probes.estimators import LogisticProbe

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 32))
    y = (X[:, :4] @ rng.standard_normal((4, 5))).argmax(1)
    cpu = LogisticProbe(C=0.5).fit(X, y)
    gpu = LogisticProbe(C=0.5, device="cuda").fit(X, y)
    # the same float64 objective minimised by L-BFGS on both devices; reductions differ in order
    assert np.abs(gpu.predict_proba(X) - cpu.predict_proba(X)).max() < 1e-4
    assert (gpu.predict(X) == cpu.predict(X)).mean() > 0.995


def test_run_probe_cuda_equals_cpu(host, tiny_store):
    from probekit.probes.run import ProbeSettings, run_probe

    out = {}
    for dev in ("cpu", "cuda"):
        out[dev], _ = run_probe(host, tiny_store, "rls", ProbeSettings(n_folds=3, n_boot=200, n_perm=4, device=dev))
    a, b = out["cpu"], out["cuda"]
    for var in ("r2", "r2_lo", "r2_hi", "mse", "cosine"):
        x, y = a[var].values, b[var].values
        ok = np.isfinite(x)
        np.testing.assert_array_equal(ok, np.isfinite(y))
        assert np.abs(x[ok] - y[ok]).max() < 1e-6, var
    np.testing.assert_allclose(b["alpha"].values, a["alpha"].values, rtol=1e-12)


def test_cache_on_cuda_matches_cpu(host, tiny_checkpoint, tmp_path):
    from probekit.cache.run import CacheRequest, run_cache

    ds = {}
    for dev in ("cpu", "cuda"):
        req = CacheRequest(model=f"toy:{tiny_checkpoint}", out=str(tmp_path / f"{dev}.zarr"), n_samples=40, seed=3,
                           batch_size=16, device=dev, dtype="float32")
        ds[dev] = run_cache(host, req).dataset()
    a, b = ds["cpu"].resid.values, ds["cuda"].resid.values
    assert a.shape == b.shape
    assert _rel(b, a) < 1e-5  # float32 forward passes; cuBLAS and CPU BLAS sum in different orders
    np.testing.assert_array_equal(ds["cpu"].x.values, ds["cuda"].x.values)
