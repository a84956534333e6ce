"""Exact Bayesian posteriors and predictives, position by position (numpy, float64).

At position t the observer has seen tokens 0..t. Every function returns arrays over
``[sample, pos, ...]``.
"""

from __future__ import annotations

import numpy as np


def beta_posterior(tokens: np.ndarray, alpha: float, beta: float) -> dict[str, np.ndarray]:
    """Beta-Bernoulli: with h heads in t+1 flips, mean m = (alpha+h)/(alpha+beta+t+1),
    variance m(1-m)/(alpha+beta+t+2), and logit(m) (= the predictive's log-odds of a head)."""
    heads = np.cumsum(tokens, axis=1, dtype=np.float64)
    seen = np.arange(1, tokens.shape[1] + 1, dtype=np.float64)[None, :]
    a, b = alpha + heads, beta + seen - heads
    mean = a / (a + b)
    return {"mean": mean, "logit": np.log(a) - np.log(b), "var": mean * (1 - mean) / (a + b + 1)}


def finite_posterior(tokens: np.ndarray, thetas, prior) -> dict[str, np.ndarray]:
    """Finite hypotheses theta_k with prior pi_k: log p(k | b_0..b_t) =
    log pi_k + h log theta_k + (t+1-h) log(1-theta_k) - log Z; and the predictive mean."""
    thetas = np.asarray(thetas, dtype=np.float64)
    heads = np.cumsum(tokens, axis=1, dtype=np.float64)[..., None]
    tails = np.arange(1, tokens.shape[1] + 1, dtype=np.float64)[None, :, None] - heads
    joint = np.log(np.asarray(prior, dtype=np.float64)) + heads * np.log(thetas) + tails * np.log1p(-thetas)
    log_post = joint - np.logaddexp.reduce(joint, axis=-1, keepdims=True)
    mean = np.exp(log_post) @ thetas
    return {"log_post": log_post, "mean": mean, "logit": np.log(mean) - np.log1p(-mean),
            "log_odds": log_post[..., 1:] - log_post[..., :1]}


def markov_predictive(tokens: np.ndarray, k: int, concentration: float) -> np.ndarray:
    """Dirichlet-multinomial predictive of the next state from the current one:
    p(b | a) = (n_{a->b} + c) / (n_{a->.} + k c), transitions counted within tokens 0..t."""
    n, T = tokens.shape
    counts = np.zeros((n, k, k))
    out = np.empty((n, T, k))
    rows = np.arange(n)
    for t in range(T):
        if t > 0:
            counts[rows, tokens[:, t - 1], tokens[:, t]] += 1
        row = counts[rows, tokens[:, t]] + concentration
        out[:, t] = row / row.sum(-1, keepdims=True)
    return out


def affine_rule_grid(a_range=(-5, 5), b_range=(-10, 10)) -> np.ndarray:
    """Candidate rules (a, b) on an integer grid, ``[R, 2]``."""
    a, b = np.meshgrid(np.arange(a_range[0], a_range[1] + 1), np.arange(b_range[0], b_range[1] + 1), indexing="ij")
    return np.stack([a.ravel(), b.ravel()], -1)


def _rule_hits(rules: np.ndarray, x, y) -> np.ndarray:
    """``[R, n]``: whether rule r maps x_i to y_i."""
    return (rules[:, 0:1] * np.atleast_1d(x)[None] + rules[:, 1:2]) == np.atleast_1d(y)[None]


def affine_log_posterior(xs, ys, rules: np.ndarray, epsilon: float, n_answers: int) -> np.ndarray:
    """Log posterior over ``rules`` (uniform prior) after examples (x_i, y_i), each with likelihood
    (1 - eps) 1[y = a x + b] + eps / |Y| under rule (a, b)."""
    noise = epsilon / n_answers
    if len(xs) == 0:
        return np.full(len(rules), -np.log(len(rules)))
    loglik = np.log(np.where(_rule_hits(rules, xs, ys), 1 - epsilon + noise, noise)).sum(-1)
    return loglik - np.logaddexp.reduce(loglik)


def affine_rule_log_odds(xs, ys, rules, epsilon, n_answers, true_rule) -> float:
    """log P(true rule | examples) - log P(any other rule | examples): grows by exactly
    :func:`affine_asymptotic_slope` per example once every other rule is contradicted."""
    log_post = affine_log_posterior(xs, ys, rules, epsilon, n_answers)
    i = int(np.flatnonzero((rules == np.asarray(true_rule)).all(-1))[0])
    others = np.logaddexp.reduce(np.delete(log_post, i))
    return float(log_post[i] - others)


def affine_answer_log_odds(xs, ys, x_q, y_q, rules, epsilon, n_answers) -> float:
    """The ideal observer's log-odds of answering ``y_q`` to ``x_q`` (its posterior predictive)."""
    noise = epsilon / n_answers
    post = np.exp(affine_log_posterior(xs, ys, rules, epsilon, n_answers))
    p = float(post @ np.where(_rule_hits(rules, x_q, y_q)[:, 0], 1 - epsilon + noise, noise))
    return float(np.log(p) - np.log1p(-p))


def affine_asymptotic_slope(epsilon: float, n_answers: int) -> float:
    """Per-example growth of the true rule's log-odds once the others are ruled out:
    log((1 - eps + eps/|Y|) / (eps/|Y|))."""
    noise = epsilon / n_answers
    return float(np.log((1 - epsilon + noise) / noise))
