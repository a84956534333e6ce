"""``probekit compare``: model vs algorithm — losses, prediction gap and the sensitivity cosine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probekit.cli import run
from probekit.lenses.compare import CompareSettings, mean_ci, per_task, run_compare
from probekit.models.toy import checkpoint
from probekit.plugin.host import PluginHost
from probekit_gd import algorithms as A
from probekit_gd.construct import gd_model
from probekit_gd.hypotheses import GDHypothesis
from probekit_gd.linreg import LinRegTask

D, N = 10, 10


@pytest.fixture(scope="module")
def host():
    return PluginHost.default()


def save_model(model, path, task="linreg", params=None):
    ckpt = checkpoint.Checkpoint(model.cfg, task, params or {}, {})
    return checkpoint.save(model.float(), ckpt, path)


def finite_difference(f, z, h=1e-5):
    """Central differences of f(z)[:, -1, 0] by the query's x features, in float64."""
    grads = []
    for j in range(D):
        e = torch.zeros_like(z)
        e[:, -1, j] = h
        grads.append((f(z + e)[:, -1, 0] - f(z - e)[:, -1, 0]) / (2 * h))
    return torch.stack(grads, -1)


def test_sensitivities_match_finite_differences():
    task = LinRegTask()
    ds = task.generate(300, 3)
    fit = task.generate(2000, 4)
    hyp = GDHypothesis(steps=2).fit(fit)
    torch.manual_seed(0)
    model = gd_model(D, N, [5.0, 3.0], dtype=torch.float64)
    with torch.no_grad():  # perturb the construction: a model that is not exactly GD
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = per_task(lambda x: model(x), hyp, task, ds, batch_size=128, model_dtype=torch.float64)
    z = torch.as_tensor(ds.z.values, dtype=torch.float64)
    with torch.no_grad():
        s_m = finite_difference(model, z)
        s_a = finite_difference(hyp.predict, z)
    cos = (s_m * s_a).sum(-1) / (s_m.norm(dim=-1) * s_a.norm(dim=-1))
    np.testing.assert_allclose(rows["model_cos"], cos.numpy(), atol=1e-7)
    np.testing.assert_allclose(rows["model_l2"], (s_m - s_a).norm(dim=-1).numpy(), rtol=1e-6, atol=1e-7)
    assert 0.5 < rows["model_cos"].mean() < 0.999  # the perturbed model is measurably not GD
    y_q = ds.y.values[:, -1, 0]
    with torch.no_grad():
        out = model(z)[:, -1, 0].numpy()
    np.testing.assert_allclose(rows["loss_model"], 0.5 * (out - y_q) ** 2, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(rows["loss_zero"], 0.5 * y_q.astype(np.float64) ** 2, rtol=1e-6)


def test_constructed_gd_model_is_gd_and_a_rescaled_one_is_not(host, tmp_path):
    task = LinRegTask()
    settings = CompareSettings(n_samples=2000, fit_samples=4000, ood_scales=(0.5, 2.0), ood_samples=500)
    eta = GDHypothesis(steps=1).fit(task.generate(settings.fit_samples, settings.fit_seed)).hparams["etas"]
    exact = save_model(gd_model(D, N, eta), tmp_path / "gd")
    res = run_compare(host, f"toy:{exact}", ["gd"], settings).sel(hypothesis="gd")
    assert float(res.model_cos) > 1 - 1e-6 and float(res.pred_diff) < 1e-4
    assert abs(float(res.loss_model) - float(res.loss_alg)) < 1e-5
    assert (res.ood_model_cos.values > 1 - 1e-6).all()
    # twice the learning rate: the same sensitivity direction (cos 1) but different predictions
    doubled = save_model(gd_model(D, N, [2 * eta[0]]), tmp_path / "gd2")
    res2 = run_compare(host, f"toy:{doubled}", ["gd"], settings).sel(hypothesis="gd")
    assert float(res2.model_cos) > 1 - 1e-6
    assert float(res2.pred_diff) > 0.1 and float(res2.loss_model) > float(res2.loss_alg) + 0.05


def test_compare_cli_json_and_errors(tmp_path, capsys):
    task = LinRegTask()
    eta = A.best_eta(*[torch.as_tensor(v, dtype=torch.float64) for v in
                       (task.generate(3000, 6).x.values, task.generate(3000, 6).y.values[:, :-1, 0],
                        task.generate(3000, 6).y.values[:, -1, 0])])
    path = save_model(gd_model(D, N, [eta, eta / 2]), tmp_path / "gd2")
    png = tmp_path / "cmp.png"
    code = run(["compare", "--model", f"toy:{path}", "-H", "gd", "-H", "gdpp", "-n", "500", "--fit-samples", "2000",
                "--ood", "1,3", "--ood-samples", "200", "--plot", str(png), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [h["hypothesis"] for h in out["hypotheses"]] == ["gd", "gdpp"]
    assert out["attrs"]["fitted"]["gd"]["etas"] and png.stat().st_size > 10_000
    gd = out["hypotheses"][0]
    assert gd["model_cos"][1] <= gd["model_cos"][0] <= gd["model_cos"][2]
    assert set(gd["ood"]["loss_model"]) == {"1", "3"}
    # errors are one line
    assert run(["compare", "--model", f"toy:{path}", "-H", "induction", "-n", "100", "--ood", ""]) == 2
    assert "has no predict()" in capsys.readouterr().err
    assert run(["compare", "--model", f"toy:{path}", "-H", "nope", "--ood", ""]) == 2
    err = capsys.readouterr().err
    assert "gd" in err and "rls" in err and len(err.strip().splitlines()) == 1
    assert run(["compare", "--model", f"toy:{path}", "-H", "gd", "--ood", "a,b"]) == 2
    assert run(["compare", "--model", f"toy:{path}", "-H", "gd", "-p", "dim=5", "--ood", ""]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_mean_ci():
    rng = np.random.default_rng(0)
    m, lo, hi = mean_ci(rng.normal(3.0, 2.0, 40_000))
    assert lo < 3.0 < hi and abs((hi - lo) / 2 - 1.96 * 2 / 200) < 1e-3
    assert mean_ci(np.array([1.0, np.nan, 3.0]))[0] == 2.0


def test_trained_one_layer_lsa_matches_one_gd_step(tmp_path, capsys):
    """Acceptance (issue #5): a 1-layer LSA trained with `probekit train` reaches one GD step's loss
    (within 3 %) and its sensitivities align with GD's (model cos >= 0.99 over 10,000 held-out tasks)."""
    out = tmp_path / "lsa"
    assert run(["train", "--task", "linreg", "--model", "lsa", "--out", str(out), "--steps", "2000",
                "--batch-size", "2048", "--lr", "1e-3", "--weight-decay", "0", "--json"]) == 0
    capsys.readouterr()
    assert run(["compare", "--model", f"toy:{out}", "-H", "gd", "--ood", "", "--json"]) == 0
    gd = json.loads(capsys.readouterr().out)["hypotheses"][0]
    loss_model, loss_gd = gd["loss_model"][0], gd["loss_alg"][0]
    assert abs(loss_model - loss_gd) <= 0.03 * loss_gd
    assert gd["model_cos"][0] >= 0.99
    # issue #18: and it is closer to GD at the fitted eta than to GD at 0.8 or 1.2 times it (paired CIs)
    assert gd["closest"] == "gd"
    assert all(r["excluded"] for r in gd["rivals"] if r["rival"].startswith("gd η"))


def closed_form_eta(ds) -> float:
    """One GD step's loss-minimising eta, in numpy: <g, y_q> / <g, g> with g = x_q . (1/N) sum_i y_i x_i."""
    x = ds.x.values.astype(np.float64)
    y = ds.y.values[..., 0].astype(np.float64)
    g = np.einsum("nd,nd->n", x[:, -1], np.einsum("ni,nid->nd", y[:, :-1], x[:, :-1]) / (x.shape[1] - 1))
    return float(g @ y[:, -1] / (g @ g))


def test_fit_samples_beyond_10000_are_all_used(tmp_path, capsys):
    """`--fit-samples 100000` fits one GD step's eta on all 100,000 tasks (it was silently capped at 10,000)."""
    path = save_model(gd_model(D, N, [6.0]), tmp_path / "gd1")
    assert run(["compare", "--model", f"toy:{path}", "-H", "gd", "-n", "200", "--fit-samples", "100000",
                "--seed", "5", "--ood", "", "--json", "--threads", "1"]) == 0
    eta = json.loads(capsys.readouterr().out)["attrs"]["fitted"]["gd"]["etas"][0]
    fit_tasks = LinRegTask().generate(100_000, 6)  # the fitting tasks: seed + 1
    eta_all, eta_10k = closed_form_eta(fit_tasks), closed_form_eta(fit_tasks.isel(sample=slice(0, 10_000)))
    assert abs(eta_all - eta_10k) > 1e-3  # the two fits are distinguishable
    assert eta == pytest.approx(eta_all, rel=1e-9)
    # an explicit option still caps, and a store's compute() fits its first 10,000 tasks by default
    capped = GDHypothesis(steps=1, fit_samples=10_000).fit(fit_tasks).hparams["etas"][0]
    assert capped == pytest.approx(eta_10k, rel=1e-9)


def test_train_labels_its_loss_as_full_mse_beside_compares_half_mse(tmp_path, capsys):
    """train's loss is the full MSE; compare's is ½·MSE: train names both, so neither is misread."""
    out = tmp_path / "tiny"
    assert run(["train", "--task", "linreg", "--model", "lsa", "--out", str(out), "--steps", "3", "--batch-size", "8",
                "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "MSE" in err and "full MSE" in err and "½·MSE" in err
    assert run(["train", "--task", "linreg", "--model", "lsa", "--out", str(tmp_path / "t2"), "--steps", "3",
                "--batch-size", "8", "--threads", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["loss"] == "mse" and summary["final_half_mse"] == pytest.approx(summary["final_loss"] / 2)
    assert checkpoint.read(tmp_path / "t2").training["loss"] == "mse"
