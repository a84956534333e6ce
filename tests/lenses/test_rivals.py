"""Rivals in ``probekit compare``: a model built to be the hypothesis is declared closest to it, with every
rival excluded by a paired CI; a model built to be a rival is declared closest to that rival instead.

The models are constructed independently of the hypotheses' code: GD weights from a numpy closed-form
step size, coin predictors from the Beta posterior written out by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probekit.cli import run
from probekit.lenses.compare import CompareSettings, measure, run_compare
from probekit.lenses.rivals import PairedBootstrap, rival_table, rivals_dataset
from probekit.lenses.compare import logit_r2
from probekit.models.toy import checkpoint
from probekit.plugin.host import PluginHost
from probekit_bayes.hypothesis import BayesHypothesis
from probekit_bayes.tasks import CoinTask
from probekit_gd.construct import gd_model
from probekit_gd.hypotheses import GDPPHypothesis
from probekit_gd.linreg import LinRegTask

D, N = 10, 10
SETTINGS = CompareSettings(n_samples=1500, fit_samples=3000, ood_scales=())


@pytest.fixture(scope="module")
def host():
    return PluginHost.default()


def save_model(model, path):
    return checkpoint.save(model.float(), checkpoint.Checkpoint(model.cfg, "linreg", {}, {}), path)


def closed_form_eta(ds) -> float:
    """One GD step's loss-minimising eta in numpy: <g, y_q> / <g, g>, g = x_q . (1/N) sum_i y_i x_i."""
    x = ds.x.values.astype(np.float64)
    y = ds.y.values[..., 0].astype(np.float64)
    g = np.einsum("nd,nd->n", x[:, -1], np.einsum("ni,nid->nd", y[:, :-1], x[:, :-1]) / N)
    return float(g @ y[:, -1] / (g @ g))


@pytest.fixture(scope="module")
def eta_star():
    return closed_form_eta(LinRegTask().generate(SETTINGS.fit_samples, SETTINGS.fit_seed))


def rivals_of(res, h):
    sel = res.rival.values[res.rival_of.values == h]
    return {str(res.rival_name.sel(rival=r).values): res.sel(rival=r) for r in sel}


def test_one_gd_step_is_closest_to_gd_and_excludes_every_rival(host, tmp_path, eta_star):
    res = run_compare(host, f"toy:{save_model(gd_model(D, N, [eta_star]), tmp_path / 'gd')}", ["gd"], SETTINGS)
    assert str(res.closest.sel(hypothesis="gd").values) == "gd"
    rivals = rivals_of(res, "gd")
    assert set(rivals) == {"gd η×0.8", "gd η×1.2", "least squares"}  # one GD++ step is one GD step: no rival
    for name, r in rivals.items():
        assert bool(r.rival_excluded) and float(r.rival_gap_lo) > 0, name
    # the rival's distance is what the model's predictions independently give: |eta* g - 0.8 eta* g| = 0.2 |eta* g|
    ds = LinRegTask().generate(SETTINGS.n_samples, SETTINGS.seed)
    x, y = ds.x.values.astype(np.float64), ds.y.values[..., 0].astype(np.float64)
    g = np.einsum("nd,nd->n", x[:, -1], np.einsum("ni,nid->nd", y[:, :-1], x[:, :-1]) / N)
    assert float(rivals["gd η×0.8"].rival_dist) == pytest.approx(np.mean(np.abs(0.2 * eta_star * g)), rel=2e-3)
    # the paired loss gap of an exact model is ~0, and its interval is tight
    assert abs(float(res.loss_gap.sel(hypothesis="gd"))) < 1e-4


def test_a_model_with_eta_times_08_is_declared_closest_to_that_rival(host, tmp_path, eta_star):
    res = run_compare(host, f"toy:{save_model(gd_model(D, N, [0.8 * eta_star]), tmp_path / 'gd08')}", ["gd"],
                      SETTINGS)
    assert str(res.closest.sel(hypothesis="gd").values) == "gd η×0.8"
    rivals = rivals_of(res, "gd")
    assert float(rivals["gd η×0.8"].rival_gap_hi) < 0 and not bool(rivals["gd η×0.8"].rival_excluded)
    assert bool(rivals["gd η×1.2"].rival_excluded)  # farther still than GD itself
    # its loss exceeds GD's, and the paired CI says so
    assert float(res.loss_gap_lo.sel(hypothesis="gd")) > 0


def test_a_gdpp_model_is_closest_to_gdpp_not_gd(host, tmp_path):
    settings = CompareSettings(n_samples=1000, fit_samples=2000, ood_scales=(), options={"steps": 2})
    fit = LinRegTask().generate(settings.fit_samples, settings.fit_seed)
    h = GDPPHypothesis(steps=2).fit(fit).hparams
    model = save_model(gd_model(D, N, h["etas"], h["gammas"]), tmp_path / "gdpp")
    res = run_compare(host, f"toy:{model}", ["gd", "gdpp"], settings)
    assert str(res.closest.sel(hypothesis="gd").values) == "gdpp"
    assert float(rivals_of(res, "gd")["gdpp"].rival_gap_hi) < 0
    assert str(res.closest.sel(hypothesis="gdpp").values) == "gdpp"
    assert all(bool(r.rival_excluded) for r in rivals_of(res, "gdpp").values())


def beta_predictive_logp(tokens: np.ndarray, a: float, b: float, clip: float = 0.0) -> torch.Tensor:
    """log P(next token) after tokens 0..t under a Beta(a, b) prior, written out: (a + h) / (a + b + t + 1)."""
    heads = np.cumsum(tokens, 1)
    p1 = (a + heads) / (a + b + np.arange(1, tokens.shape[1] + 1))
    if clip:
        p1 = np.clip(p1, clip, 1 - clip)
    return torch.as_tensor(np.log(np.stack([1 - p1, p1], -1)))


@pytest.mark.parametrize("built_as, a, b, clip", [
    ("bayes", 1.0, 1.0, 0.0),  # the task's own prior Beta(1, 1): the exact posterior
    ("Beta(0.5,0.5) KT", 0.5, 0.5, 0.0),
    ("Beta(2,2)", 2.0, 2.0, 0.0),
    ("frequency", 1e-12, 1e-12, 0.01),
])
def test_a_coin_predictor_is_declared_closest_to_what_it_was_built_as(built_as, a, b, clip):
    task = CoinTask(length=32)
    held_out, fit = task.generate(2000, 5), task.generate(10, 6)
    record = measure(lambda x: beta_predictive_logp(x.numpy(), a, b, clip), BayesHypothesis(), task, held_out,
                     fit, batch_size=512)
    assert set(record["rivals"]) == {"Beta(0.5,0.5) KT", "Beta(2,2)", "frequency"}  # Beta(1,1) is the truth
    cols = rival_table({"bayes": record}, ["bayes"], PairedBootstrap(record["id"]["sample"]), True, logit_r2)
    assert cols["closest"] == [built_as]
    for name, (m, lo, hi) in zip(cols["rival_name"], cols["rival_gap"]):
        if name == built_as:
            assert hi < 0  # closer to this rival than to the exact posterior, and the CI says so
        elif built_as == "bayes":
            assert lo > 0  # the exact posterior: every rival excluded
    data, coords = rivals_dataset(cols, tokens=True)
    assert list(data["rival_excluded"][1]) == [lo > 0 for _, lo, _ in cols["rival_gap"]]
    assert "rival_logit_r2" in data and len(coords["rival"]) == 3


def test_paired_bootstrap_resamples_tasks_and_pairs_differences():
    rng = np.random.default_rng(0)
    n_tasks, per = 400, 5
    sample = np.repeat(np.arange(n_tasks), per)
    task_effect = np.repeat(rng.normal(0, 1, n_tasks), per)  # rows of one task move together
    a = task_effect + rng.normal(0, 0.1, sample.size)
    b = task_effect + 0.05 + rng.normal(0, 0.1, sample.size)
    boot = PairedBootstrap(sample, n_boot=2000, seed=1)
    m, lo, hi = boot.mean_ci(b - a)
    assert m == pytest.approx(np.mean(b - a))
    # independent check: the normal interval of the per-task means of the difference
    task_means = (b - a).reshape(n_tasks, per).mean(1)
    half = 1.96 * task_means.std(ddof=1) / np.sqrt(n_tasks)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15) and lo > 0
    with_nan = (b - a).copy()
    with_nan[::7] = np.nan  # e.g. the cosine of a zero sensitivity: left out, not propagated
    assert boot.mean_ci(with_nan)[0] == pytest.approx(np.nanmean(with_nan))
    # unpaired, the task effect swamps the 0.05 difference
    _, lo_a, hi_a = boot.mean_ci(a)
    _, lo_b, hi_b = boot.mean_ci(b)
    assert (hi_a - lo_a) > 10 * (hi - lo)
    # clustering matters: resampling rows as if independent would understate the task-level spread of a
    assert (hi_a - lo_a) / 2 == pytest.approx(1.96 * a.reshape(n_tasks, per).mean(1).std(ddof=1) / np.sqrt(n_tasks),
                                              rel=0.15)


def test_compare_cli_shows_rivals_table_and_json(tmp_path, capsys, eta_star):
    path = save_model(gd_model(D, N, [eta_star]), tmp_path / "gd")
    args = ["compare", "--model", f"toy:{path}", "-H", "gd", "-n", "500", "--fit-samples", "1000", "--ood", "",
            "--threads", "1", "--plot", str(tmp_path / "c.png")]
    assert run([*args, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)["hypotheses"][0]
    assert rec["closest"] == "gd" and len(rec["loss_gap"]) == 3
    names = [r["rival"] for r in rec["rivals"]]
    assert names == ["gd η×0.8", "gd η×1.2", "least squares"]
    assert all(r["excluded"] and r["gap"][1] > 0 and "cos" in r for r in rec["rivals"])
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "against its rivals" in out and "gd η×1.2" in out and "model − alg (paired)" in out
