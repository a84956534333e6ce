"""Hypothesis ``bayes``: the model tracks the exact Bayesian posterior of the sequence it reads.

Targets per position t (after tokens 0..t), by task:

* ``coin``        ``post_mean``, ``post_logit`` (the predictive log-odds of a head), ``post_var``;
* ``coin-finite`` the same, plus ``log_post`` (log posterior over the hypothesis set) and
  ``log_odds`` (log p(theta_k | .) - log p(theta_0 | .), exactly linear in the counts);
* ``markov``      ``predictive`` (the Dirichlet-multinomial next-state distribution) and
  ``log_predictive``.

``predict(tokens)`` returns the Bayes-optimal predictive's log-probabilities
``[batch, pos, vocab]`` for ``probekit compare`` (fit reads the task's parameters
from the data's attributes; nothing is fitted to the model).
"""

from __future__ import annotations

import numpy as np

from probekit import DataError, Hypothesis, StoreError, Target, UsageError

from probekit_bayes import posterior

TASKS = ("coin", "coin-finite", "markov")


class BayesHypothesis(Hypothesis):
    name = "bayes"
    description = "exact Bayesian posterior and predictive (coin, coin-finite, markov)"
    requires = ("tokens",)

    def __init__(self, **options):
        if options:
            raise UsageError(f"hypothesis 'bayes' takes no options, got {', '.join(map(repr, options))}")
        super().__init__()
        self.task: str | None = None
        self.params: dict = {}

    def fit(self, ds) -> "BayesHypothesis":
        """Read the task and its prior from the data's attributes (there is nothing to fit)."""
        self.check(ds)
        task = ds.attrs.get("task")
        if task not in TASKS:
            raise StoreError(f"hypothesis 'bayes' needs a store of task {', '.join(TASKS)}; this one has {task!r}")
        params = ds.attrs.get("task_params") or {}
        from probekit_bayes.tasks import CoinFiniteParams, CoinParams, MarkovParams

        cls = {"coin": CoinParams, "coin-finite": CoinFiniteParams, "markov": MarkovParams}[task]
        self.task, self.params = task, dict(params)
        self._p = cls(**params)
        return self

    def fitted(self) -> dict:
        return {"task": self.task, "task_params": self.params} if self.task else {}

    def _exact(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        p = self._p
        if tokens.size and (tokens.min() < 0 or tokens.max() >= (p.states if self.task == "markov" else 2)):
            raise DataError(f"tokens outside the vocabulary of task {self.task!r}")
        if self.task == "coin":
            return posterior.beta_posterior(tokens, p.alpha, p.beta)
        if self.task == "coin-finite":
            return posterior.finite_posterior(tokens, p.thetas, p.prior_probs())
        return {"predictive": posterior.markov_predictive(tokens, p.states, p.concentration)}

    def compute(self, ds):
        self.fit(ds)
        tokens = np.asarray(ds["tokens"].values)
        exact = self._exact(tokens)
        mask = np.ones(tokens.shape, dtype=bool)
        if self.task == "markov":
            pred = exact["predictive"]
            return [Target("predictive", pred, mask, "Dirichlet-multinomial predictive of the next state"),
                    Target("log_predictive", np.log(pred), mask, "its logarithm")]
        out = [Target("post_mean", exact["mean"], mask, "posterior mean of theta = P(next is 1)"),
               Target("post_logit", exact["logit"], mask, "logit of the posterior mean: the predictive log-odds"),
               ]
        if "var" in exact:
            out.append(Target("post_var", exact["var"], mask, "posterior variance of theta"))
        if "log_post" in exact:
            out += [Target("log_post", exact["log_post"], mask, "log posterior over the hypothesis set"),
                    Target("log_odds", exact["log_odds"], mask, "log posterior odds of theta_k against theta_0")]
        return out

    def predict(self, inputs):
        """Log-probabilities of the Bayes predictive for token ids ``[batch, pos]``, ``[batch, pos, vocab]``."""
        import torch

        if self.task is None:
            raise DataError("hypothesis 'bayes': call fit() on task data before predict()")
        exact = self._exact(inputs.detach().cpu().numpy())
        if self.task == "markov":
            logp = np.log(exact["predictive"])
        else:
            m = exact["mean"]
            logp = np.stack([np.log1p(-m), np.log(m)], -1)
        return torch.as_tensor(logp, dtype=torch.float64)
