"""The scikit-learn estimators against scikit-learn's own checks and fits."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
from sklearn.model_selection import GroupKFold, KFold, PredefinedSplit
from sklearn.utils.estimator_checks import parametrize_with_checks

from probekit.errors import ProbekitWarning
from probekit.probes.estimators import LogisticProbe, RidgeProbe


@parametrize_with_checks([RidgeProbe(), LogisticProbe(max_iter=100)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def grouped_rows(n_groups=60, T=7, F=6, k=3, noise=0.5, seed=0, offset=100.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_groups * T, F)) + offset  # a large mean tests the shift handling
    W = rng.standard_normal((F, k))
    Y = X @ W + noise * rng.standard_normal((n_groups * T, k)) + 3.0
    return X, Y, np.repeat(np.arange(n_groups), T)


def rel_err(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()


@pytest.mark.parametrize("one_d", [False, True])
def test_fixed_alpha_equals_sklearn_ridge(one_d):
    X, Y, groups = grouped_rows()
    Y = Y[:, 0] if one_d else Y
    for a in (1e-3, 1.0, 50.0):
        probe = RidgeProbe(alphas=[a], alpha_scale="absolute").fit(X, Y, groups=groups)
        ref = Ridge(alpha=a).fit(X, Y)
        assert probe.coef_.shape == ref.coef_.shape
        assert rel_err(probe.coef_, ref.coef_) < 1e-8
        assert rel_err(probe.intercept_, ref.intercept_) < 1e-8
        assert probe.alpha_ == a
        np.testing.assert_allclose(probe.predict(X), ref.predict(X), rtol=1e-9)


@pytest.mark.filterwarnings("ignore:The groups parameter is ignored by PredefinedSplit")
def test_grouped_cv_matches_ridgecv():
    X, Y, groups = grouped_rows(n_groups=400, T=10, F=12, k=4, noise=3.0, offset=5.0, seed=2)
    grid = np.logspace(-2, 4, 13)
    ref = RidgeCV(alphas=grid, cv=list(GroupKFold(5).split(X, Y, groups)), scoring="neg_mean_squared_error")
    ref.fit(X, Y)
    for cv in (GroupKFold(5), PredefinedSplit(_fold_ids(GroupKFold(5), X, Y, groups))):
        probe = RidgeProbe(alphas=grid, alpha_scale="absolute", cv=cv).fit(X, Y, groups=groups)
        assert probe.alpha_ == ref.alpha_
        assert grid[0] < probe.alpha_ < grid[-1]  # an interior choice: the comparison means something
        assert rel_err(probe.coef_, ref.coef_) < 1e-6
        assert rel_err(probe.intercept_, ref.intercept_) < 1e-6
        # the pooled held-out MSE at the chosen alpha is sklearn's best (equal folds: mean = pooled)
        assert probe.cv_mse_[grid == probe.alpha_].mean() == pytest.approx(-ref.best_score_, rel=1e-8)


def _fold_ids(splitter, X, Y, groups):
    fold = np.empty(len(X), dtype=int)
    for j, (_, test) in enumerate(splitter.split(X, Y, groups)):
        fold[test] = j
    return fold


def test_alpha_per_target_and_cv_scores():
    X, Y, groups = grouped_rows(n_groups=100, T=5, noise=0.0, offset=0.0)
    Y = np.column_stack([Y[:, 0], np.random.default_rng(9).standard_normal(len(Y))])  # signal, pure noise
    probe = RidgeProbe(alpha_per_target=True).fit(X, Y, groups=groups)
    assert probe.alpha_.shape == (2,)
    assert probe.cv_mse_.shape == (len(probe.alphas_), 2)
    np.testing.assert_array_equal(probe.alpha_, probe.alphas_[probe.cv_mse_.argmin(0)])
    assert probe.alpha_[0] == probe.alphas_.min() and probe.alpha_[1] >= probe.alphas_[-3]
    joint = RidgeProbe().fit(X, Y, groups=groups)  # one alpha minimising the SSE summed over targets
    assert joint.cv_mse_.shape == (len(joint.alphas_),)
    assert joint.alpha_ == joint.alphas_[joint.cv_mse_.argmin()]
    assert probe.best_score_ < 0.6  # mean of ~1 and ~0
    np.testing.assert_allclose(probe.alphas_ / probe.alphas_[0], 10.0 ** np.arange(10))


def test_int_cv_keeps_groups_whole():
    X, Y, groups = grouped_rows(n_groups=37, T=5)
    shuffled = np.random.default_rng(4).permutation(len(X))  # rows of a group are not contiguous
    X, Y, groups = X[shuffled], Y[shuffled], groups[shuffled] * 7 + 3  # arbitrary group labels
    probe = RidgeProbe(cv=5, random_state=11).fit(X, Y, groups=groups)
    assert probe.n_folds_ == 5
    for g in np.unique(groups):
        assert len(set(probe.fold_of_row_[groups == g])) == 1
    sizes = np.bincount(probe.fold_of_row_) / 5  # 37 groups of 5 rows dealt round-robin
    assert sizes.max() - sizes.min() <= 1
    # seeded: the same random_state gives the same folds, another one different folds
    again = RidgeProbe(cv=5, random_state=11).fit(X, Y, groups=groups)
    other = RidgeProbe(cv=5, random_state=12).fit(X, Y, groups=groups)
    np.testing.assert_array_equal(again.fold_of_row_, probe.fold_of_row_)
    assert (other.fold_of_row_ != probe.fold_of_row_).any()


@pytest.mark.filterwarnings("ignore:The groups parameter is ignored by KFold")
def test_splitter_that_breaks_groups_is_refused():
    X, Y, groups = grouped_rows(n_groups=20, T=5)
    with pytest.raises(ValueError, match="group"):
        RidgeProbe(cv=KFold(5, shuffle=True, random_state=0)).fit(X, Y, groups=groups)
    with pytest.raises(ValueError, match="groups must be 1-d"):
        RidgeProbe().fit(X, Y, groups=groups[:-1])


def test_few_groups():
    X, Y, groups = grouped_rows(n_groups=3, T=10)
    probe = RidgeProbe(cv=5).fit(X, Y, groups=groups)
    assert probe.n_folds_ == 3
    with pytest.warns(ProbekitWarning, match="middle alpha"):
        probe = RidgeProbe().fit(X, Y, groups=np.zeros(len(X)))
    assert probe.alpha_ == probe.alphas_[len(probe.alphas_) // 2]
    assert np.isnan(probe.best_score_)


def test_bad_input_is_a_value_error():
    X, Y, groups = grouped_rows(n_groups=10)
    X[3, 2] = np.nan
    with pytest.raises(ValueError):
        RidgeProbe().fit(X, Y, groups=groups)
    with pytest.raises(ValueError):
        LogisticProbe().fit(X, (Y[:, 0] > 0).astype(int))
    with pytest.raises(ValueError, match="alphas"):
        RidgeProbe(alphas=[1.0, -1.0]).fit(np.ones((10, 2)), np.ones(10))
    with pytest.raises(ValueError, match="alpha_scale"):
        RidgeProbe(alpha_scale="relative").fit(np.ones((10, 2)), np.ones(10))


def blobs(n=600, F=5, K=4, sep=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = sep * rng.standard_normal((K, F))
    y = rng.integers(0, K, n)
    return centres[y] + rng.standard_normal((n, F)) + 3.0, y


@pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("K, C", [(2, 0.1), (4, 1.0), (5, 0.05)])
def test_logistic_matches_sklearn(K, C):
    X, y = blobs(K=K)
    probe = LogisticProbe(C=C, tol=1e-8).fit(X, y)
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
    assert probe.coef_.shape == ref.coef_.shape and probe.intercept_.shape == ref.intercept_.shape
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(X), atol=1e-5)
    np.testing.assert_allclose(probe.coef_, ref.coef_, atol=1e-4)
    assert (probe.predict(X) == ref.predict(X)).mean() > 0.99


def test_logistic_separable_and_labels():
    X, y = blobs(K=3, sep=4.0)
    labels = np.array(["cat", "dog", "eel"])[y]
    probe = LogisticProbe().fit(X, labels)
    assert list(probe.classes_) == ["cat", "dog", "eel"]
    assert probe.score(X, labels) > 0.9
    assert probe.n_iter_[0] >= 1
    np.testing.assert_allclose(probe.predict_proba(X).sum(1), 1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogisticProbe().fit(X, np.zeros(len(X)))


def test_best_score_is_r2_of_cross_validated_predictions():
    from sklearn.metrics import r2_score
    from sklearn.model_selection import cross_val_predict

    X, Y, groups = grouped_rows(n_groups=100, T=5, noise=3.0)
    probe = RidgeProbe(cv=GroupKFold(4)).fit(X, Y, groups=groups)
    pred = cross_val_predict(Ridge(alpha=probe.alpha_), X, Y, cv=GroupKFold(4), groups=groups)
    assert probe.best_score_ == pytest.approx(r2_score(Y, pred), rel=1e-9)
    np.testing.assert_allclose(probe.cv_mse_[probe.alphas_ == probe.alpha_][0], ((pred - Y) ** 2).mean(), rtol=1e-9)
