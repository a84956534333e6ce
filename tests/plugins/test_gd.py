"""The gd plugin: linear-regression tasks, GD / GD++ / PGD against independent closed forms, and
von Oswald's construction of linear self-attention weights that run GD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probekit.errors import DataError, StoreError, UsageError
from probekit_gd import algorithms as A
from probekit_gd.construct import gd_model
from probekit_gd.hypotheses import GDHypothesis, GDPPHypothesis, PGDHypothesis
from probekit_gd.linreg import AhnLinRegTask, LinRegTask, ahn_covariance

D, N = 10, 10


def tensors(ds):
    z = torch.as_tensor(ds.z.values, dtype=torch.float64)
    x, y = A.split_tokens(z)
    return z, x, y, torch.as_tensor(ds.y.values[:, -1, 0], dtype=torch.float64)


@pytest.fixture(scope="module")
def linreg10k():
    return LinRegTask().generate(10_000, 5)


# -- tasks ----------------------------------------------------------------------------------------

def test_linreg_token_format_and_statistics():
    ds = LinRegTask().generate(20_000, 0)
    z, x, w, y = ds.z.values, ds.x.values, ds.w.values, ds.y.values[..., 0]
    assert z.shape == (20_000, N + 1, D + 1) and ds["is_query"].values[:, -1].all() and not ds["is_query"].values[:, :-1].any()
    np.testing.assert_array_equal(z[..., :D], x)
    np.testing.assert_array_equal(z[:, :-1, D], y[:, :-1])
    assert (z[:, -1, D] == 0).all()  # the query's label slot is empty
    np.testing.assert_allclose(y, np.einsum("ntd,nd->nt", x.astype(np.float64), w), atol=1e-5)
    # x ~ U(-1/2, 1/2): range, mean 0, variance 1/12 (5 standard errors)
    assert x.min() >= -0.5 and x.max() <= 0.5
    se = np.sqrt(1 / 12 / x.size)
    assert abs(x.mean()) < 5 * se and abs(x.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / x.size)
    # w ~ N(0, I): second moment 1; E[y^2] = d / 12
    assert abs((w**2).mean() - 1) < 5 * np.sqrt(2 / w.size)
    assert abs((y**2).mean() - D / 12) < 0.03
    other = LinRegTask(dim=3, n_points=5, x_range=4.0, noise=0.1).generate(100, 0)
    assert other.z.shape == (100, 6, 4) and np.abs(other.x.values).max() <= 2.0
    assert not np.allclose(other.y.values[..., 0], np.einsum("ntd,nd->nt", other.x.values, other.w.values))


def test_linreg_ahn_covariances():
    task = AhnLinRegTask()
    ds = task.generate(50_000, 1)
    sigma = ahn_covariance(task.params)
    u = np.linalg.svd(np.random.default_rng(0).uniform(-1, 1, (5, 5)))[0]
    np.testing.assert_allclose(sigma, (u * np.array([1, 1, 0.5, 0.25, 1]) ** 2) @ u.T, atol=1e-12)
    x = ds.x.values.reshape(-1, 5).astype(np.float64)
    np.testing.assert_allclose(np.cov(x.T), sigma, atol=0.01)
    np.testing.assert_allclose(np.cov(ds.w.values.T.astype(np.float64)), np.linalg.inv(sigma), rtol=0.05, atol=0.1)
    assert ds.z.shape == (50_000, 21, 6)


def test_task_parameters_are_checked():
    with pytest.raises(UsageError, match="dim"):
        LinRegTask(dim=0)
    with pytest.raises(UsageError, match="5 positive scales"):
        AhnLinRegTask(scales=[1.0, 2.0])
    with pytest.raises(UsageError, match="choose from"):
        LinRegTask(dimension=3)


# -- one step of GD (von Oswald et al. 2023, arXiv 2212.07677, their code's scan_lrs on 10,000 tasks;
# `python -m probekit_gd.reference` prints eta* 6.050 / grid 6.001, loss 0.2071, zero predictor 0.4186) --

def test_one_step_gd_reproduces_von_oswald(linreg10k):
    _, x, y, y_q = tensors(linreg10k)
    eta, loss = A.grid_search_eta(x, y, y_q)
    assert abs(eta - 6.06) <= 0.1 and abs(loss - 0.207) <= 0.01
    assert abs(A.half_mse(0 * y_q, y_q) - 0.419) <= 0.01
    assert abs(A.best_eta(x, y, y_q) - eta) <= 0.1  # the closed form agrees with the grid
    # eta * x_q^T (1/N) sum_i y_i x_i, computed directly
    direct = eta * np.einsum("nd,nd->n", x[:, -1].numpy(), np.einsum("ni,nid->nd", y.numpy(), x[:, :-1].numpy()) / N)
    np.testing.assert_allclose(A.run_steps(x, y, [eta]).pred[0].numpy(), direct, rtol=1e-12, atol=1e-12)


# -- K steps against closed forms ----------------------------------------------------------------

def test_k_step_gd_equals_polynomial_closed_form(linreg10k):
    """W_K = [I - prod_k (I - eta_k S)] w_LS with S = X^T X / N and w_LS = S^{-1} X^T y / N."""
    _, x, y, _ = tensors(linreg10k.isel(sample=slice(0, 500)))
    etas = [7.0, 3.5, 5.0]
    traj = A.run_steps(x, y, torch.tensor(etas, dtype=torch.float64))
    X, xq = x[:, :-1].numpy(), x[:, -1].numpy()
    S = np.einsum("nid,nie->nde", X, X) / N
    w_ls = np.linalg.solve(S, np.einsum("nid,ni->nd", X, y.numpy())[..., None] / N)[..., 0]
    P = np.broadcast_to(np.eye(D), S.shape).copy()
    for k, eta in enumerate(etas):
        P = (np.eye(D) - eta * S) @ P
        W = w_ls - np.einsum("nde,ne->nd", P, w_ls)
        np.testing.assert_allclose(traj.weights[k].numpy(), W, rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(traj.pred[k].numpy(), np.einsum("nd,nd->n", W, xq), atol=1e-9)
        resid = y.numpy() - np.einsum("nd,nid->ni", W, X)
        np.testing.assert_allclose(traj.residual[k].numpy(), resid, atol=1e-9)


def test_gdpp_two_steps_closed_form(linreg10k):
    """pred = (W_1 + (eta_2/N) r_1^T X B^2) x_q with B = I - gamma_1 X^T X and W_1 = (eta_1/N) y^T X."""
    _, x, y, _ = tensors(linreg10k.isel(sample=slice(0, 300)))
    etas, gammas = [6.0, 9.0], [0.05, 0.02]
    traj = A.run_steps(x, y, torch.tensor(etas, dtype=torch.float64), gammas=torch.tensor(gammas, dtype=torch.float64))
    X, xq, yy = x[:, :-1].numpy(), x[:, -1].numpy(), y.numpy()
    W1 = etas[0] / N * np.einsum("ni,nid->nd", yy, X)
    r1 = yy - np.einsum("nd,nid->ni", W1, X)
    B = np.eye(D) - gammas[0] * np.einsum("nid,nie->nde", X, X)
    pred = np.einsum("nd,nd->n", W1, xq) + etas[1] / N * np.einsum("ni,nid,nde,nef,nf->n", r1, X, B, B, xq)
    np.testing.assert_allclose(traj.pred[1].numpy(), pred, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(traj.x[0].numpy(), np.einsum("nde,nte->ntd", B, x.numpy()), atol=1e-12)


def test_pgd_closed_forms():
    """K-step PGD: w_K = [I - prod_k (I - eta_k A S)] w_LS; on Ahn's data the fitted one-step
    preconditioner approaches the theory optimum A* = n/(n+1+d) Sigma^{-1} and beats scalar GD."""
    task = AhnLinRegTask()
    _, x, y, y_q = tensors(task.generate(100_000, 2))
    n, d = 20, 5
    sigma = ahn_covariance(task.params)
    A_star = n / (n + 1 + d) * np.linalg.inv(sigma)
    A_fit = A.fit_preconditioner(x, y, y_q).numpy()
    assert np.linalg.norm(A_fit - A_star) / np.linalg.norm(A_star) < 0.03
    loss_star = A.half_mse(A.run_steps(x, y, [1.0], precond=torch.as_tensor(A_star)).pred[0], y_q)
    # Ahn et al. 2023 (arXiv 2306.00297): on their data the preconditioned optimum beats scalar GD by far
    assert loss_star < 0.6 * A.grid_search_eta(x, y, y_q)[1]
    etas = [1.0, 0.5]
    xs, ys = x[:200], y[:200]
    traj = A.run_steps(xs, ys, etas, precond=torch.as_tensor(A_star))
    X = xs[:, :-1].numpy()
    S = np.einsum("nid,nie->nde", X, X) / n
    w_ls = np.linalg.solve(S, np.einsum("nid,ni->nd", X, ys.numpy())[..., None] / n)[..., 0]
    P = np.broadcast_to(np.eye(d), S.shape).copy()
    for eta in etas:
        P = (np.eye(d) - eta * A_star @ S) @ P
    W = w_ls - np.einsum("nde,ne->nd", P, w_ls)
    np.testing.assert_allclose(traj.weights[-1].numpy(), W, rtol=1e-8, atol=1e-9)


# -- the construction: LSA weights that run GD ----------------------------------------------------

@pytest.mark.parametrize("gammas", [None, [0.05, 0.2, 0.01]])
def test_lsa_construction_runs_gd_to_float_precision(linreg10k, gammas):
    z, x, y, _ = tensors(linreg10k.isel(sample=slice(0, 1000)))
    etas = [6.0, 11.0, 4.0]
    for K in (1, 2, 3):
        g = gammas[:K] if gammas else None
        model = gd_model(D, N, etas[:K], g, dtype=torch.float64)
        traj = A.run_steps(x, y, torch.tensor(etas[:K], dtype=torch.float64),
                           gammas=torch.tensor(g, dtype=torch.float64) if g else None)
        with torch.no_grad():
            out = model(z)[..., 0]
        np.testing.assert_allclose(out[:, -1].numpy(), traj.pred[-1].numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(-out[:, :-1].numpy(), traj.residual[-1].numpy(), rtol=1e-12, atol=1e-12)
    # float32, as the model is trained and cached
    model = gd_model(D, N, etas, dtype=torch.float32)
    with torch.no_grad():
        out = model(z.float())[:, -1, 0].double()
    np.testing.assert_allclose(out.numpy(), A.run_steps(x, y, etas).pred[-1].numpy(), atol=5e-5)


# -- hypotheses ----------------------------------------------------------------------------------

def test_gd_hypothesis_targets_line_up_with_steps(linreg10k):
    ds = linreg10k.isel(sample=slice(0, 2000))
    ds.attrs["model_config"] = {"n_layers": 2}
    hyp = GDHypothesis()
    targets = hyp.targets(ds)
    assert hyp.hparams["etas"][0] != hyp.hparams["etas"][1]  # untied steps, fitted jointly
    for k in (1, 2):
        assert targets[f"gd_pred_{k}"].attrs["expected_layer"] == k
        assert targets[f"gd_pred_{k}_mask"].values[:, -1].all()
        assert not targets[f"gd_residual_{k}_mask"].values[:, -1].any()
    _, x, y, y_q = tensors(ds)
    traj = A.run_steps(x, y, hyp.hparams["etas"])
    np.testing.assert_allclose(targets.gd_pred_2.values[:, -1, 0], traj.pred[1].numpy())
    np.testing.assert_allclose(targets.gd_weights_1.values[:, -1], traj.weights[0].numpy())
    assert targets.attrs["fitted"]["etas"] == hyp.hparams["etas"]
    # an exact learner: least squares at the query (N = d and no noise: y_q almost exactly)
    assert np.mean((targets.ls_pred.values[:, -1, 0] - y_q.numpy()) ** 2) < 0.01


def test_fitted_hyperparameters_reduce_the_loss(linreg10k):
    ds = linreg10k
    _, x, y, y_q = tensors(ds)
    losses = {}
    for cls in (GDHypothesis, GDPPHypothesis, PGDHypothesis):
        for K in (1, 2):
            hyp = cls(steps=K).fit(ds)
            losses[cls.name, K] = A.half_mse(hyp.predict(torch.as_tensor(ds.z.values, dtype=torch.float64))[:, -1, 0], y_q)
    # von Oswald et al. 2023's GD and GD++; `python -m probekit_gd.reference`: GD 0.2071 / 0.1421, GD++ (K=2) 0.1065
    assert abs(losses["gd", 1] - 0.207) < 0.01 and abs(losses["gd", 2] - 0.141) < 0.01
    assert abs(losses["gdpp", 2] - 0.104) < 0.01 and losses["gdpp", 2] < losses["gd", 2]
    assert losses["pgd", 2] < losses["pgd", 1] < 0.419


def test_fixed_eta_and_bad_options(linreg10k):
    ds = linreg10k.isel(sample=slice(0, 100))
    hyp = GDHypothesis(steps=2, eta=[6.0, 3.0]).fit(ds)
    assert hyp.hparams["etas"] == [6.0, 3.0]
    with pytest.raises(UsageError, match="choose from"):
        GDHypothesis(etta=3)
    with pytest.raises(UsageError, match="only be fixed for gd"):
        GDPPHypothesis(eta=3.0)
    with pytest.raises(UsageError, match="eta lists 2 steps"):
        GDHypothesis(steps=3, eta=[1.0, 2.0]).fit(ds)
    with pytest.raises(DataError, match="fit"):
        GDHypothesis().predict(torch.zeros(2, N + 1, D + 1))
    with pytest.raises(StoreError, match="is_query"):
        GDHypothesis().targets(ds.drop_vars("is_query"))


def test_probes_find_gd_step_k_at_layer_k(tmp_path):
    """Cache von Oswald's constructed 2-layer GD model and probe it with the engine: the step-k
    prediction is linearly readable (R² ~ 1) exactly from layer k on, and not before."""
    from probekit.cache.run import CacheRequest, run_cache
    from probekit.models.toy import checkpoint
    from probekit.plugin.host import PluginHost
    from probekit.probes.run import ProbeSettings, run_probe

    host = PluginHost.default()
    etas = [6.0, 4.0]
    model = gd_model(D, N, etas)
    path = checkpoint.save(model, checkpoint.Checkpoint(model.cfg, "linreg", {}, {}), tmp_path / "gd")
    store = tmp_path / "gd.zarr"
    run_cache(host, CacheRequest(model=f"toy:{path}", out=str(store), n_samples=1500, seed=1, dtype="float32"))
    settings = ProbeSettings(n_boot=0, options={"eta": etas}, targets=("gd_pred_1", "gd_pred_2", "gd_residual_1"),
                             baselines=False)
    results, _ = run_probe(host, store, "gd", settings)
    r2 = results.r2.sel(condition="model", site="resid")
    pred1, pred2 = r2.sel(target="gd_pred_1").values, r2.sel(target="gd_pred_2").values
    assert pred1[1] > 0.9999 and pred2[2] > 0.9999  # the query's y-slot holds -W_k x_q after layer k
    assert pred1[0] < 0.2 and pred2[1] < 0.99  # ...and not earlier
    assert r2.sel(target="gd_residual_1").values[1] > 0.9999


def test_tied_steps_for_recurrent_models(linreg10k):
    ds = linreg10k.isel(sample=slice(0, 4000))
    ds.attrs["model_config"] = {"n_layers": 3, "shared": True}  # a recurrent model: tied by default
    _, x, y, y_q = tensors(ds)
    z = torch.as_tensor(ds.z.values, dtype=torch.float64)
    loss = {}
    for name, hyp in {"tied": GDHypothesis(), "untied": GDHypothesis(tied=False), "one": GDHypothesis(steps=1),
                      "pp_tied": GDPPHypothesis()}.items():
        hyp.fit(ds)
        loss[name] = A.half_mse(hyp.predict(z)[:, -1, 0], y_q)
        if name.endswith("tied") and name != "untied":
            assert len(set(hyp.hparams["etas"])) == 1 and len(hyp.hparams["etas"]) == 3
    assert loss["untied"] <= loss["tied"] + 1e-9 < loss["one"]
    assert loss["pp_tied"] < loss["tied"]
    with pytest.raises(UsageError, match="tied"):
        GDHypothesis(tied="yes").fit(ds)


def test_rivals_and_least_squares(linreg10k):
    """gd's rivals: GD at 0.8 / 1.2 of its fitted step sizes, GD++ (K > 1 only) and least squares, whose
    prediction is numpy's least-squares solution on the context."""
    from probekit_gd.hypotheses import LeastSquares

    ds = linreg10k.isel(sample=slice(0, 2000))
    one = GDHypothesis(steps=1).fit(ds)
    assert set(one.rivals()) == {"gd η×0.8", "gd η×1.2", "least squares"}
    two = GDHypothesis(steps=2).fit(ds)
    rivals = two.rivals()
    assert set(rivals) == {"gd η×0.8", "gd η×1.2", "gdpp", "least squares"}
    slow = rivals["gd η×0.8"].fit(ds)
    np.testing.assert_allclose(slow.hparams["etas"], [0.8 * e for e in two.hparams["etas"]])
    assert set(GDPPHypothesis(steps=2).fit(ds).rivals()) == {"gd", "least squares"}
    assert set(PGDHypothesis(steps=1).fit(ds).rivals()) == {"gd", "least squares"}
    z = torch.as_tensor(ds.z.values[:50], dtype=torch.float64)
    pred = LeastSquares(lam=0.0).predict(z)[:, -1, 0].numpy()
    x, y = ds.x.values[:50].astype(np.float64), ds.y.values[:50, :, 0].astype(np.float64)
    w = np.stack([np.linalg.lstsq(x[i, :-1], y[i, :-1], rcond=None)[0] for i in range(50)])
    np.testing.assert_allclose(pred, np.einsum("nd,nd->n", w, x[:, -1]), rtol=1e-6, atol=1e-8)
