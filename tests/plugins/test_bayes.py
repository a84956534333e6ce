"""The bayes plugin: exact posteriors against brute-force enumeration and independent closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from probekit.errors import StoreError, UsageError
from probekit_bayes import posterior
from probekit_bayes.hypothesis import BayesHypothesis
from probekit_bayes.tasks import AffinePromptsTask, CoinFiniteTask, CoinTask, MarkovTask


def test_beta_posterior_equals_beta_function_ratios_and_quadrature():
    tokens = CoinTask(length=12, alpha=2.0, beta=1.5).generate(50, 0)["tokens"].values
    post = posterior.beta_posterior(tokens, 2.0, 1.5)
    grid = np.linspace(0, 1, 200_001)[1:-1]
    for i, t in itertools.product(range(0, 50, 7), range(12)):
        h, n = int(tokens[i, : t + 1].sum()), t + 1
        lbeta = lambda a, b: math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)  # noqa: E731
        a, b = 2.0 + h, 1.5 + n - h
        mean = math.exp(lbeta(a + 1, b) - lbeta(a, b))  # E[theta] = B(a+1, b) / B(a, b)
        second = math.exp(lbeta(a + 2, b) - lbeta(a, b))
        assert post["mean"][i, t] == pytest.approx(mean, rel=1e-12)
        assert post["var"][i, t] == pytest.approx(second - mean**2, rel=1e-9)
        assert post["logit"][i, t] == pytest.approx(math.log(mean / (1 - mean)), rel=1e-12, abs=1e-12)
        # brute force: quadrature of theta^h (1-theta)^(n-h) prior
        w = np.exp((a - 1) * np.log(grid) + (b - 1) * np.log1p(-grid) - ((a - 1) * np.log(grid) + (b - 1) * np.log1p(-grid)).max())
        assert post["mean"][i, t] == pytest.approx((w * grid).sum() / w.sum(), abs=2e-6)


def test_finite_posterior_equals_enumeration_and_log_odds_are_linear():
    thetas, prior = [0.2, 0.5, 0.8], np.array([0.5, 0.3, 0.2])
    tokens = CoinFiniteTask(length=10, prior=prior.tolist()).generate(40, 1)["tokens"].values
    post = posterior.finite_posterior(tokens, thetas, prior)
    for i, t in itertools.product(range(40), range(10)):
        seq = tokens[i, : t + 1]
        lik = np.array([np.prod([th if b else 1 - th for b in seq]) for th in thetas]) * prior
        np.testing.assert_allclose(np.exp(post["log_post"][i, t]), lik / lik.sum(), rtol=1e-12)
        assert post["mean"][i, t] == pytest.approx(lik @ thetas / lik.sum(), rel=1e-12)
    # log odds = h log(th_k/th_0) + (n-h) log((1-th_k)/(1-th_0)) + log(pi_k/pi_0): exactly linear
    heads = np.cumsum(tokens, 1)[..., None]
    tails = np.arange(1, 11)[None, :, None] - heads
    th = np.array(thetas)
    expected = heads * np.log(th[1:] / th[0]) + tails * np.log((1 - th[1:]) / (1 - th[0])) + np.log(prior[1:] / prior[0])
    np.testing.assert_allclose(post["log_odds"], expected, rtol=1e-12, atol=1e-12)


def test_markov_predictive_equals_dirichlet_closed_form():
    k, c = 3, 0.7
    tokens = MarkovTask(length=15, states=k, concentration=c).generate(30, 2)["tokens"].values
    pred = posterior.markov_predictive(tokens, k, c)
    for i, t in itertools.product(range(30), range(15)):
        a = tokens[i, t]
        counts = np.zeros(k)
        for s in range(t):  # transitions within tokens 0..t
            if tokens[i, s] == a:
                counts[tokens[i, s + 1]] += 1
        # E[P(a -> b) | counts] for a Dirichlet(c + counts) row, via Gamma-function ratios
        alpha = c + counts
        expected = [math.exp(math.lgamma(alpha[b] + 1) - math.lgamma(alpha[b]) + math.lgamma(alpha.sum())
                             - math.lgamma(alpha.sum() + 1)) for b in range(k)]
        np.testing.assert_allclose(pred[i, t], expected, rtol=1e-12)


def test_task_statistics():
    ds = CoinTask(length=64).generate(20_000, 3)
    theta, tokens = ds["theta"].values, ds["tokens"].values
    assert abs(theta.mean() - 0.5) < 0.01 and abs(theta.var() - 1 / 12) < 0.005  # Beta(1, 1)
    np.testing.assert_array_equal(ds["next"].values[:, :-1], tokens[:, 1:])
    assert abs(tokens.mean(1) - theta).mean() < 0.06
    fin = CoinFiniteTask().generate(6000, 4)
    assert set(np.unique(fin["theta"].values)) == {0.2, 0.5, 0.8}
    mk = MarkovTask(states=4).generate(500, 5)
    P = mk["transitions"].values
    np.testing.assert_allclose(P.sum(-1), 1.0)
    assert mk["tokens"].values.max() == 3
    with pytest.raises(UsageError):
        CoinFiniteTask(thetas=[0.0, 0.5])


def test_bayes_hypothesis_targets_and_predict():
    ds = CoinFiniteTask(length=20).generate(300, 6)
    targets = BayesHypothesis().targets(ds)
    assert {"post_mean", "post_logit", "log_post", "log_odds"} <= set(targets.data_vars)
    hyp = BayesHypothesis().fit(ds)
    logp = hyp.predict(torch.as_tensor(ds["tokens"].values))
    np.testing.assert_allclose(logp.exp().sum(-1).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(logp[..., 1].exp().numpy(), targets["post_mean"].values[..., 0], rtol=1e-12)
    mk = MarkovTask().generate(50, 7)
    t = BayesHypothesis().targets(mk)
    np.testing.assert_allclose(t["predictive"].values.sum(-1), 1.0)
    with pytest.raises(StoreError, match="coin"):
        BayesHypothesis().targets(mk.assign_attrs(task="lds"))
    with pytest.raises(UsageError, match="no options"):
        BayesHypothesis(lam=1)


def test_affine_prompts_and_ideal_log_odds():
    task = AffinePromptsTask()
    p = task.prompts(3, 2, seed=0)[0]
    lines = p["text"].split("\n")
    assert len(lines) == 4 and lines[-1] == f"({p['x_q']}," and p["answer"] == f" {2 * p['x_q'] + 3})"
    assert all(line == f"({x}, {2 * x + 3})" for line, x in zip(lines[:3], p["xs"]))
    pairs = task.prompt_pairs(4, seed=1)
    assert len(pairs) == 4 and all(q["a"].endswith(q["b"]) and q["b"].count("\n") == 0 for q in pairs)
    rules = posterior.affine_rule_grid()
    n_answers = 5 * 99 + 10 - (-5 * 99 - 10) + 1
    eps = 0.05
    slope = posterior.affine_asymptotic_slope(eps, n_answers)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 100, 12)
    lo = [posterior.affine_rule_log_odds(xs[:n], 2 * xs[:n] + 3, rules, eps, n_answers, (2, 3)) for n in range(12)]
    # once the other rules are ruled out the true rule's log-odds grow by exactly the asymptotic slope
    np.testing.assert_allclose(np.diff(lo)[-2:], slope, rtol=1e-9)
    assert (np.diff(lo) <= slope + 1e-9).all()
    assert lo[0] == pytest.approx(-np.log(len(rules) - 1))
    # brute force: enumerate the rules' likelihoods directly
    noise = eps / n_answers
    lik = np.array([np.prod([(1 - eps + noise) if a * x + b == 2 * x + 3 else noise for x in xs[:5]])
                    for a, b in rules])
    i = int(np.flatnonzero((rules == [2, 3]).all(-1))[0])
    assert lo[5] == pytest.approx(np.log(lik[i]) - np.log(np.delete(lik, i).sum()), rel=1e-9)
    ans = [posterior.affine_answer_log_odds(xs[:n], 2 * xs[:n] + 3, 7, 17, rules, eps, n_answers) for n in range(12)]
    assert ans[0] < ans[1] < ans[3] and ans[-1] == pytest.approx(np.log((1 - eps + noise) / (eps - noise)), rel=1e-3)


def test_compare_on_token_tasks_scores_log_odds_r2():
    """per_task_tokens + logit_r2 against a direct computation: a fake model whose log-odds are the
    exact posterior logit plus noise."""
    from probekit.lenses.compare import logit_r2, per_task_tokens

    task = CoinTask(length=16)
    ds = task.generate(400, 8)
    hyp = BayesHypothesis().fit(ds)
    rng = np.random.default_rng(0)
    noise = torch.as_tensor(rng.normal(0, 0.3, ds["tokens"].shape))

    def model_fn(x):
        logit = torch.as_tensor(posterior.beta_posterior(x.numpy(), 1.0, 1.0)["logit"]) + noise[: len(x)]
        return torch.stack([-torch.nn.functional.softplus(logit), -torch.nn.functional.softplus(-logit)], -1)

    rows = per_task_tokens(model_fn, hyp, task, ds, batch_size=400)
    exact = posterior.beta_posterior(ds["tokens"].values, 1.0, 1.0)["logit"].ravel()
    model = exact + noise.numpy().ravel()
    r2 = 1 - ((model - exact) ** 2).sum() / ((exact - exact.mean()) ** 2).sum()
    point, lo, hi = logit_r2(rows)
    assert point == pytest.approx(r2, rel=1e-10) and lo < point < hi
    # cross-entropies of the true next tokens
    nxt = ds["next"].values.ravel()
    m = 1 / (1 + np.exp(-exact))
    np.testing.assert_allclose(rows["loss_alg"], -np.log(np.where(nxt == 1, m, 1 - m)), rtol=1e-10)
    assert np.isnan(rows["model_cos"]).all()


def test_rivals_are_the_wrong_priors_and_the_running_frequency():
    """Each task's rivals leave out its own prior; each rival's predictive is the closed form
    (a + n_{a->b}) / (n_{a->.} + k a) under its prior, written out here independently."""
    cases = [(CoinTask(length=9, alpha=0.5, beta=0.5), {"Beta(1,1)", "Beta(2,2)", "frequency"}),
             (CoinTask(length=9, alpha=3.0, beta=1.0), {"Beta(0.5,0.5) KT", "Beta(1,1)", "Beta(2,2)", "frequency"}),
             (CoinFiniteTask(length=9), {"Beta(0.5,0.5) KT", "Beta(1,1)", "Beta(2,2)", "frequency"}),
             (MarkovTask(length=9, states=3, concentration=2.0), {"Dir(0.5)", "Dir(1)", "frequency"})]
    for task, names in cases:
        ds = task.generate(30, 2)
        rivals = BayesHypothesis().fit(ds).rivals()
        assert set(rivals) == names, task.name
        tokens = ds["tokens"].values
        k = 3 if task.name == "markov" else 2
        for name, rival in rivals.items():
            logp = rival.fit(ds).predict(torch.as_tensor(tokens)).numpy()
            c = {"Beta(0.5,0.5) KT": 0.5, "Dir(0.5)": 0.5, "Beta(1,1)": 1.0, "Dir(1)": 1.0, "Beta(2,2)": 2.0,
                 "Dir(2)": 2.0, "frequency": None}[name]
            for i, t in itertools.product(range(0, 30, 7), range(9)):
                if k == 2:
                    counts = np.bincount(tokens[i, : t + 1], minlength=2).astype(float)
                else:
                    prev, nxt = tokens[i, :t], tokens[i, 1 : t + 1]
                    counts = np.bincount(nxt[prev == tokens[i, t]], minlength=3).astype(float)
                if name == "frequency":
                    p = counts / counts.sum() if counts.sum() else np.full(k, 1 / k)
                    p = np.clip(p, 0.01, 0.99)
                    p = p / p.sum()
                else:
                    p = (counts + c) / (counts.sum() + k * c)
                np.testing.assert_allclose(np.exp(logp[i, t]), p, rtol=1e-7, err_msg=f"{task.name} {name}")
