"""The Gram-statistics ridge engine against independent scikit-learn fits."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from probekit.errors import DataError, UsageError
from probekit.probes.ridge import DEFAULT_REL_ALPHAS, FoldStats, alpha_grid, cross_validate, grouped_folds, sum_stats


def make_rows(n_samples=60, T=7, F=6, k=3, noise=0.5, seed=0, offset=100.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, T, F)) + offset  # a large mean tests the centring
    W = rng.standard_normal((F, k))
    Y = X @ W + noise * rng.standard_normal((n_samples, T, k)) + 3.0
    sample = np.repeat(np.arange(n_samples), T)
    return X.reshape(-1, F), Y.reshape(-1, k), sample


def accumulate(X, Y, row_fold, K, batch=50):
    stats = FoldStats(K, X.shape[1], Y.shape[1])
    for i in range(0, len(X), batch):  # streamed in uneven batches
        stats.add(X[i : i + batch], Y[i : i + batch], row_fold[i : i + batch])
    return stats


def fit(alpha, X, Y):
    """scikit-learn's Ridge; alpha = inf is the intercept-only model (DummyRegressor: the mean)."""
    from sklearn.dummy import DummyRegressor

    return DummyRegressor().fit(X, Y) if np.isinf(alpha) else Ridge(alpha=alpha).fit(X, Y)


def sklearn_nested(X, Y, row_fold, K, alphas, groups):
    """Brute force: for each outer fold, choose alpha per target group by inner CV, then score."""
    sse = np.zeros(Y.shape[1])
    for j in range(K):
        inner = np.zeros((len(alphas), Y.shape[1]))
        for i in range(K):
            if i == j:
                continue
            tr, te = (row_fold != i) & (row_fold != j), row_fold == i
            for a, alpha in enumerate(alphas):
                inner[a] += ((fit(alpha, X[tr], Y[tr]).predict(X[te]) - Y[te]) ** 2).sum(0)
        tr, te = row_fold != j, row_fold == j
        for g in np.unique(groups):
            cols = groups == g
            best = alphas[inner[:, cols].sum(1).argmin()]
            m = fit(best, X[tr], Y[tr][:, cols])
            pred = m.predict(X[te]).reshape(-1, cols.sum())
            sse[cols] += ((pred - Y[te][:, cols]) ** 2).sum(0)
    return sse


@pytest.mark.parametrize("null_model", [False, True])
def test_nested_cv_matches_sklearn_brute_force(null_model):
    X, Y, sample = make_rows()
    K = 4
    row_fold = grouped_folds(sample.max() + 1, K, seed=3)[sample]
    groups = np.array([0, 1, 1])
    if null_model:  # a target with no linear signal, so the intercept-only model is in play
        Y[:, 0] = 3.0 + np.random.default_rng(7).standard_normal(len(Y))
    stats = accumulate(X, Y, row_fold, K)
    res = cross_validate(stats, col_groups=groups, null_model=null_model)
    assert np.isinf(res.alphas[-1]) == null_model
    expected = sklearn_nested(X, Y, row_fold, K, res.alphas, groups)
    np.testing.assert_allclose(res.sse, expected, rtol=1e-8)
    # R²'s reference: each outer fold's rows predicted by the mean of the other folds
    sst = sum(((Y[row_fold == j] - Y[row_fold != j].mean(0)) ** 2).sum(0) for j in range(K))
    np.testing.assert_allclose(res.sst, sst, rtol=1e-9)
    r2 = 1 - expected[1:].sum() / sst[1:].sum()
    assert res.r2(groups == 1) == pytest.approx(r2, rel=1e-8)


def test_alpha_choice_tracks_noise():
    # noiseless data: tiny alpha wins; pure noise: the largest alpha wins and R² <= 0
    X, Y, sample = make_rows(noise=0.0, offset=0.0)
    fold = grouped_folds(sample.max() + 1, 5)[sample]
    res = cross_validate(accumulate(X, Y, fold, 5))
    assert res.r2() > 0.999999
    assert res.alpha[0] == res.alphas.min()
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(Y.shape)
    res = cross_validate(accumulate(X, noise, fold, 5))
    assert res.r2() < 0.01
    assert res.alpha[0] == res.alphas.max()


def test_null_model_scores_noise_exactly_zero():
    """With alpha = inf among the candidates, pure-noise targets whose outer folds all chose it
    score R² = 0 exactly, in the CV statistics and in pass 2's per-sample sums (bootstrap CI [0, 0])."""
    from probekit.probes import scoring
    X, _, sample = make_rows(n_samples=80, T=6, F=6)
    rng = np.random.default_rng(3)
    Y = 5.0 + rng.standard_normal((len(X), 8))  # eight noise targets, each its own alpha
    K = 4
    folds = grouped_folds(80, K, seed=2)
    res = cross_validate(accumulate(X, Y, folds[sample], K), col_groups=np.arange(8), null_model=True)
    null_cols = np.flatnonzero((res.fold_coef == 0).all(axis=(0, 1)))
    chose_null = (res.fold_coef == 0).all(axis=1)  # [fold, column]
    assert chose_null.mean() > 0.5 and len(null_cols) >= 1, chose_null  # the null model wins most folds on noise
    assert all(res.r2([c]) == 0.0 for c in null_cols)
    assert abs(res.r2()) < 0.02
    held = scoring.block_held_out(X.reshape(80, 6, -1), np.ones((80, 6), bool), Y.reshape(80, 6, -1), folds,
                                  res.fold_coef, res.fold_intercept, res.x_shift,
                                  [slice(c, c + 1) for c in range(8)], res.fold_mean)
    weights = scoring.bootstrap_weights(80, 200, seed=0)
    for c in range(8):
        assert scoring.pooled_r2(held[c]) == pytest.approx(res.r2([c]), rel=1e-9, abs=1e-12)
        if c in null_cols:
            assert scoring.bootstrap_r2_ci(held[c], weights) == (0.0, 0.0)


def test_grouped_sse_paths_agree_with_per_column_sse(monkeypatch):
    """sse_grouped's direct path (small problems) and its per-group loop (large ones) both equal
    the per-column sse summed within groups."""
    import torch

    from probekit.probes import ridge as probes
    X, Y, sample = make_rows(n_samples=50, T=4, F=6, k=7)
    fold = grouped_folds(50, 3)[sample]
    stats = accumulate(X, Y, fold, 3)
    sol = probes.RidgeSolution.fit(probes._minus(stats.subset(range(3)), stats.subset([0])))
    test = stats.subset([0])
    alphas = torch.cat([alpha_grid(stats), torch.tensor([float("inf")], dtype=torch.float64)])
    groups = np.array([0, 0, 1, 2, 2, 2, 3])
    onehot = torch.tensor(groups[None, :] == np.arange(4)[:, None], dtype=torch.float64)
    expected = (sol.sse(alphas, test) @ onehot.T).numpy()
    direct = sol.sse_grouped(alphas, test, onehot).numpy()
    monkeypatch.setattr(probes, "_DIRECT_FLOPS", 0)
    looped = sol.sse_grouped(alphas, test, onehot).numpy()
    np.testing.assert_allclose(direct, expected, rtol=1e-10)
    np.testing.assert_allclose(looped, expected, rtol=1e-10)


def test_alpha_grid_is_scale_aware():
    X, Y, sample = make_rows(offset=0.0)
    fold = grouped_folds(sample.max() + 1, 3)[sample]
    a1 = alpha_grid(accumulate(X, Y, fold, 3)).numpy()
    a2 = alpha_grid(accumulate(10 * X, Y, fold, 3)).numpy()
    np.testing.assert_allclose(a2 / a1, 100.0)
    assert len(a1) == len(DEFAULT_REL_ALPHAS)


def test_grouped_folds_never_split_a_sample():
    n, T, K = 37, 5, 5
    folds = grouped_folds(n, K, seed=11)
    sample = np.repeat(np.arange(n), T)
    row_fold = folds[sample]
    for s in range(n):
        assert len(set(row_fold[sample == s])) == 1
    counts = np.bincount(folds, minlength=K)
    assert counts.max() - counts.min() <= 1
    assert set(folds) == set(range(K))


def test_grouped_folds_errors():
    with pytest.raises(UsageError, match="cannot make 5 sample-grouped folds from 3 samples"):
        grouped_folds(3, 5)
    with pytest.raises(UsageError):
        grouped_folds(10, 1)


def test_nan_and_shape_errors():
    stats = FoldStats(2, 3, 1)
    with pytest.raises(DataError, match="NaN"):
        stats.add(np.array([[np.nan, 0, 0]]), np.zeros((1, 1)), np.zeros(1, int))
    with pytest.raises(DataError, match=r"\[rows, 3\]"):
        stats.add(np.zeros((2, 4)), np.zeros((2, 1)), np.zeros(2, int))


def test_outer_fold_models_reproduce_the_cv_error():
    """Pass 2 (predict each row with its outer fold's model) gives exactly the CV's held-out SSE."""
    from probekit.probes import scoring
    X, Y, sample = make_rows(n_samples=40, T=6)
    K = 4
    folds = grouped_folds(40, K, seed=1)
    res = cross_validate(accumulate(X, Y, folds[sample], K), col_groups=np.array([0, 1, 1]))
    acts, y = X.reshape(40, 6, -1), Y.reshape(40, 6, -1)
    mask = np.ones((40, 6), bool)
    mask[:, 0] = False  # a mask the rows of the CV did not have: score only rows it had
    held = scoring.block_held_out(acts, np.ones((40, 6), bool), y, folds, res.fold_coef, res.fold_intercept,
                                  res.x_shift, [slice(0, 1), slice(1, 3)], res.fold_mean)
    np.testing.assert_allclose(held[0].sse.sum(), res.sse[0], rtol=1e-9)
    np.testing.assert_allclose(held[1].sse.sum(), res.sse[1:].sum(), rtol=1e-9)
    assert scoring.pooled_r2(held[1]) == pytest.approx(res.r2(slice(1, 3)), rel=1e-9)
    assert held[0].rows.sum() == 240 and held[0].pos_rows.tolist() == [40] * 6


def test_statistics_merge_across_workers_equals_one_pass():
    X, Y, sample = make_rows(n_samples=30, T=5)
    fold = grouped_folds(30, 3)[sample]
    one = accumulate(X, Y, fold, 3)
    shift = (one.x_shift.numpy(), one.y_shift.numpy())
    parts = [FoldStats(3, X.shape[1], Y.shape[1]).set_shift(*shift) for _ in range(3)]
    for i, p in enumerate(parts):
        sl = slice(i * 50, (i + 1) * 50)
        p.add(X[sl], Y[sl], fold[sl])
    total = parts[0].to_numpy()
    for p in parts[1:]:
        total = sum_stats(total, p.to_numpy())
    a, b = cross_validate(one), cross_validate(FoldStats.from_numpy(total))
    np.testing.assert_allclose(a.sse, b.sse, rtol=1e-10)
    other = FoldStats(3, X.shape[1], Y.shape[1]).set_shift(shift[0] + 1, shift[1])
    other.add(X[:5], Y[:5], fold[:5])
    with pytest.raises(DataError, match="different shifts"):
        sum_stats(total, other.to_numpy())


def test_accepts_torch_tensors_and_leaves_inputs_untouched():
    import torch

    X, Y, sample = make_rows(n_samples=20, T=4)
    fold = grouped_folds(20, 2)[sample]
    Xt = torch.tensor(X)
    a, b = FoldStats(2, X.shape[1], 3), FoldStats(2, X.shape[1], 3)
    a.add(Xt, torch.tensor(Y), torch.tensor(fold))
    b.add(X, Y, fold)
    assert torch.equal(a.xtx, b.xtx)
    assert torch.equal(Xt, torch.tensor(X))  # the in-place shift worked on a copy


def test_grouped_sse_equals_summed_column_sse():
    import torch

    from probekit.probes.ridge import RidgeSolution

    X, Y, sample = make_rows(n_samples=30, T=5, k=5)
    stats = accumulate(X, Y, grouped_folds(30, 3)[sample], 3)
    sol = RidgeSolution.fit(_train := stats.subset((1, 2)))
    test = stats.subset((0,))
    alphas = alpha_grid(stats)
    onehot = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.float64)
    np.testing.assert_allclose(sol.sse_grouped(alphas, test, onehot).numpy(),
                               (sol.sse(alphas, test) @ onehot.T).numpy(), rtol=1e-9)
