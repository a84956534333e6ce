"""The rls hypothesis against independent computations: batch ridge per position, exact inverses."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from probekit.errors import UsageError
from probekit_rls import LDSTask, RLSHypothesis, neumann_iterates, rls_recursion


@pytest.fixture(scope="module")
def lds():
    return LDSTask(dim=4, length=16).generate(20, seed=3)


def test_rls_recursion_equals_batch_ridge_per_position(lds):
    x, y = lds["x"].values.astype(float), lds["y"].values.astype(float)
    lam = 1e-3
    pred, precond, weights = rls_recursion(x, y, lam)
    n, T, d = x.shape
    for i in range(n):
        for t in range(1, T):
            ridge = Ridge(alpha=lam, fit_intercept=False, solver="cholesky").fit(x[i, :t], y[i, :t])
            np.testing.assert_allclose(weights[i, t], ridge.coef_, atol=1e-6, rtol=1e-6)
            np.testing.assert_allclose(pred[i, t], ridge.predict(x[i, t : t + 1])[0], atol=1e-6, rtol=1e-6)
            R = x[i, :t].T @ x[i, :t] + lam * np.eye(d)
            np.testing.assert_allclose(precond[i, t], np.linalg.solve(R, x[i, t]), rtol=1e-6, atol=1e-6 * np.abs(precond[i, t]).max())
    # t = 0: no pairs yet, so W_0 = 0 and P_0 = I / lam
    np.testing.assert_array_equal(pred[:, 0], 0.0)
    np.testing.assert_allclose(precond[:, 0], x[:, 0] / lam)


def test_rls_recovers_the_teacher(lds):
    """With noise 0.01 and T >> D, W_T is the orthogonal teacher up to noise on typical sequences
    (badly conditioned sequences, which excite some directions weakly, are estimated worse)."""
    x, y = lds["x"].values.astype(float), lds["y"].values.astype(float)
    _, _, weights = rls_recursion(x, y, 1e-3)
    err = np.abs(weights[:, -1] - lds["teacher"].values).max(axis=(1, 2))
    assert np.median(err) < 0.03


def test_neumann_iterates_converge_to_the_preconditioned_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 40, 4))  # i.i.d. inputs: R_t well conditioned for t >= 20
    lam = 1e-3
    R = np.cumsum(np.einsum("nti,ntj->ntij", x, x), axis=1)
    p = np.linalg.solve(R[:, 19:-1] + lam * np.eye(4), x[:, 20:, :, None])[..., 0]  # R_t sums tau < t
    orders = [1, 2, 4, 16, 64, 256]
    its = neumann_iterates(x, lam, orders)
    errors = [np.abs(its[k][:, 20:] - p).max() / np.abs(p).max() for k in orders]
    assert errors[0] > 0.1  # order 1 is far off, so convergence is not vacuous
    assert errors[-1] < 1e-6, errors


def test_neumann_error_never_grows_on_lds(lds):
    """With c = 1 / lambda_max every eigen-component of the error shrinks: the error norm is monotone."""
    x = lds["x"].values.astype(float)
    _, precond, _ = rls_recursion(x, lds["y"].values.astype(float), 1e-3)
    orders = [1, 2, 3, 4, 8, 32, 128]
    its = neumann_iterates(x, 1e-3, orders)
    err = np.stack([np.linalg.norm(its[k] - precond, axis=-1) for k in orders])  # [order, n, T]
    assert (np.diff(err, axis=0) <= 1e-9 * err[:-1]).all()
    assert (err[-1, :, 1:] < err[0, :, 1:]).all()  # strictly better from t = 1 (at t = 0, R = lam I: exact)


def test_neumann_order_one_is_scaled_input(lds):
    x = lds["x"].values.astype(float)
    it = neumann_iterates(x, 1e-3, [1])[1]
    ratio = it / x
    np.testing.assert_allclose(ratio, ratio[..., :1] * np.ones_like(ratio), rtol=1e-9)


def test_targets_dataset_masks_and_attrs(lds):
    tds = RLSHypothesis(neumann_orders=3).targets(lds)
    names = [v for v in tds.data_vars if not v.endswith("_mask")]
    assert names == ["next_state", "current_state", "rls_pred", "precond", "precond_dir", "rls_weights",
                     "neumann_1", "neumann_2", "neumann_3"]
    assert tds["rls_weights"].shape == (20, 16, 16)
    assert not tds["rls_pred_mask"][:, 0].any() and tds["rls_pred_mask"][:, 1:].all()
    assert not tds["precond_mask"][:, :4].any() and tds["precond_mask"][:, 4:].all()
    assert tds["neumann_2"].attrs["expected_layer"] == 2
    assert tds["next_state"].attrs["kind"] == "continuous"
    np.testing.assert_array_equal(tds["next_state"].values, lds["y"].values)
    d, p = tds["precond_dir"].values, tds["precond"].values
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.einsum("nti,nti->nt", d, p), np.linalg.norm(p, axis=-1), rtol=1e-12)


def test_rls_requires_regression_pairs(lds):
    from probekit.errors import StoreError

    with pytest.raises(StoreError, match="needs variables \\['y'\\]"):
        RLSHypothesis().targets(lds.drop_vars("y"))
    with pytest.raises(UsageError, match="lam > 0"):
        RLSHypothesis(lam=0)


def test_lds_task_is_seeded_and_orthogonal():
    a = LDSTask(dim=3, length=5).generate(4, seed=1)
    b = LDSTask(dim=3, length=5).generate(4, seed=1)
    c = LDSTask(dim=3, length=5).generate(4, seed=2)
    np.testing.assert_array_equal(a["x"].values, b["x"].values)
    assert not np.array_equal(a["x"].values, c["x"].values)
    W = a["teacher"].values.astype(float)
    np.testing.assert_allclose(W @ W.transpose(0, 2, 1), np.broadcast_to(np.eye(3), W.shape), atol=1e-6)
    np.testing.assert_array_equal(a["x"].values[:, 1:], a["y"].values[:, :-1])
    assert a.attrs["task"] == "lds" and a.attrs["task_params"]["dim"] == 3 and a.attrs["seed"] == 1
    with pytest.raises(UsageError, match="choose from: clip, dim, length, sigma"):
        LDSTask(dimension=3)


def test_condition_numbers_quoted_in_the_docs():
    """docs/rls.md and the README: median cond(R_t) ≈ 15 and the worst tenth > 200 on the tutorial store's
    sequences (2,000, seed 1, t >= D). Checked against eigenvalue ratios computed here, at full size
    (it takes a second); tolerance: the median within 15.4 ± 0.5, the 90th percentile above 200."""
    from probekit_rls import conditioning

    x = LDSTask().generate(300, 3)["x"].values.astype(np.float64)
    cond = conditioning.condition_numbers(x, 1e-3, 5)
    for i, t in [(0, 5), (7, 12), (299, 29)]:
        R = sum(np.outer(x[i, s], x[i, s]) for s in range(t)) + 1e-3 * np.eye(5)
        ev = np.linalg.eigvalsh(R)
        assert cond.reshape(300, -1)[i, t - 5] == pytest.approx(ev[-1] / ev[0], rel=1e-8)
    out = conditioning.main(["-n", "2000", "--seed", "1"])
    assert abs(out["median"] - 15.4) <= 0.5 and out["p90"] > 200


def batch_ridge_pred(x, lam: float):
    """W_t x_t by a fresh ridge solve per position from the pairs (x_tau, x_{tau+1}), tau < t, position by
    position (torch, so that a model built from it has sensitivities)."""
    import torch

    x = torch.as_tensor(x, dtype=torch.float64)
    n, T, D = x.shape
    out = [torch.zeros(n, D, dtype=x.dtype)]
    for t in range(1, T):
        X, Y = x[:, :t], x[:, 1 : t + 1]
        R = X.transpose(1, 2) @ X + lam * torch.eye(D, dtype=x.dtype)
        W = torch.linalg.solve(R, X.transpose(1, 2) @ Y).transpose(1, 2)  # [n, D_out, D_in]
        out.append(torch.einsum("nij,nj->ni", W, x[:, t]))
    return torch.stack(out, 1)


def test_predict_is_rls_pred_and_a_model_built_as_rls_beats_its_rivals():
    import torch

    from probekit.lenses.compare import logit_r2, measure
    from probekit.lenses.rivals import PairedBootstrap, rival_table

    task = LDSTask(dim=3, length=10)
    held_out, fit = task.generate(400, 5), task.generate(400, 6)
    x = held_out["x"].values.astype(np.float64)
    hyp = RLSHypothesis()
    pred = hyp.predict(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(pred, batch_ridge_pred(x, 1e-3).numpy(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(pred[:, 1:], rls_recursion(x, held_out["y"].values, 1e-3)[0][:, 1:],
                               rtol=1e-5, atol=1e-7)
    for built_as, model in (("rls", lambda z: batch_ridge_pred(z.double(), 1e-3)),
                            ("current state", lambda z: z.double())):
        record = measure(model, hyp, task, held_out, fit, batch_size=200)
        assert set(record["rivals"]) == {"ridge λ=1", "one GD step", "current state"}
        cols = rival_table({"rls": record}, ["rls"], PairedBootstrap(record["id"]["sample"]), False, logit_r2)
        assert cols["closest"] == [built_as]
        gaps = dict(zip(cols["rival_name"], cols["rival_gap"]))
        if built_as == "rls":
            assert all(lo > 0 for _, lo, _ in gaps.values())
        else:
            assert gaps["current state"][2] < 0
    # one GD step's eta is the closed form <g, y> / <g, g> on the fitting tasks, computed here in numpy
    xf, yf = fit["x"].values.astype(np.float64), fit["y"].values.astype(np.float64)
    g = np.zeros_like(xf)
    for t in range(1, xf.shape[1]):
        g[:, t] = np.einsum("nti,ntj,nj->ni", xf[:, 1 : t + 1], xf[:, :t], xf[:, t]) / t
    eta = record["rivals_fitted"]["one GD step"]["etas"][0]
    assert eta == pytest.approx(float((g * yf).sum() / (g * g).sum()), rel=1e-6)
