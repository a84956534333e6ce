"""Hypothesis ``bayes``: the model tracks the exact Bayesian posterior of the sequence it reads.

Targets per position t (after tokens 0..t), by task:

* ``coin``        ``post_mean``, ``post_logit`` (the predictive log-odds of a head), ``post_var``;
* ``coin-finite`` the same, plus ``log_post`` (log posterior over the hypothesis set) and
  ``log_odds`` (log p(theta_k | .) - log p(theta_0 | .), exactly linear in the counts);
* ``markov``      ``predictive`` (the Dirichlet-multinomial next-state distribution) and
  ``log_predictive``.

``predict(tokens)`` returns the Bayes-optimal predictive's log-probabilities
``[batch, pos, vocab]`` for ``probekit compare`` (fit reads the task's parameters
from the data's attributes; nothing is fitted to the model). Its ``rivals()`` are the
predictives a learner with the wrong prior would use: Beta(½,½) (Krichevsky-Trofimov),
Beta(1,1) and Beta(2,2) for the coins (Dirichlet ½, 1, 2 for ``markov``), leaving out the
task's own prior, and the running frequency (clipped to [0.01, 0.99] so that its
cross-entropy is finite).
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

    def _check_tokens(self, tokens: np.ndarray) -> None:
        if tokens.size and (tokens.min() < 0 or tokens.max() >= (self._p.states if self.task == "markov" else 2)):
            raise DataError(f"tokens outside the vocabulary of task {self.task!r}")

    def _exact(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        p = self._p
        self._check_tokens(tokens)
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

    def _predictive(self, tokens: np.ndarray) -> np.ndarray:
        """The predictive distribution of the next token, ``[batch, pos, vocab]``."""
        exact = self._exact(tokens)
        if self.task == "markov":
            return exact["predictive"]
        return np.stack([1 - exact["mean"], exact["mean"]], -1)

    def predict(self, inputs):
        """Log-probabilities of the predictive for token ids ``[batch, pos]``, ``[batch, pos, vocab]``."""
        import torch

        if self.task is None:
            raise DataError(f"hypothesis {self.name!r}: call fit() on task data before predict()")
        return torch.as_tensor(np.log(self._predictive(inputs.detach().cpu().numpy())), dtype=torch.float64)

    def rivals(self) -> dict:
        """Wrong priors and the running frequency (see the module docstring)."""
        if self.task is None:
            raise DataError("hypothesis 'bayes': call fit() before rivals()")
        p = self._p
        own = (p.concentration,) * 2 if self.task == "markov" else (
            (p.alpha, p.beta) if self.task == "coin" else None)
        label = "Dir({:g})" if self.task == "markov" else "Beta({:g},{:g})"
        out = {}
        for c in (0.5, 1.0, 2.0):
            if own != (c, c):
                name = label.format(c, c) + (" KT" if c == 0.5 and self.task != "markov" else "")
                out[name] = WrongPrior(c)
        out["frequency"] = WrongPrior(FREQUENCY_PRIOR, clip=FREQUENCY_CLIP)
        return out


FREQUENCY_PRIOR = 1e-9  # a vanishing prior: the predictive is the running frequency
FREQUENCY_CLIP = 0.01


class WrongPrior(BayesHypothesis):
    """A rival of ``bayes``: the Beta(c, c) (``markov``: Dirichlet(c)) predictive, whatever the task's
    prior; with ``clip`` > 0 its probabilities are clipped to [clip, 1 - clip] and renormalised.
    ``coin-finite`` is read as a coin with a continuous prior. Not registered: a rival."""

    name = "bayes-wrong-prior"
    description = "the Bayes predictive under a Beta(c, c) / Dirichlet(c) prior that is not the task's"

    def __init__(self, concentration: float, clip: float = 0.0):
        if concentration <= 0 or not 0 <= clip < 0.5:
            raise UsageError(f"a wrong prior needs concentration > 0 and 0 <= clip < 0.5, got {concentration}, {clip}")
        Hypothesis.__init__(self, concentration=concentration, clip=clip)
        self.task, self.params = None, {}
        self.concentration, self.clip = concentration, clip

    def _predictive(self, tokens: np.ndarray) -> np.ndarray:
        c = self.concentration
        self._check_tokens(tokens)
        if self.task == "markov":
            probs = posterior.markov_predictive(tokens, self._p.states, c)
        else:
            m = posterior.beta_posterior(tokens, c, c)["mean"]
            probs = np.stack([1 - m, m], -1)
        if self.clip:
            probs = np.clip(probs, self.clip, 1 - self.clip)
            probs = probs / probs.sum(-1, keepdims=True)
        return probs

    def compute(self, ds):
        self.fit(ds)
        tokens = np.asarray(ds["tokens"].values)
        return [Target("predictive", self._predictive(tokens), np.ones(tokens.shape, dtype=bool),
                       f"predictive under the prior {self.concentration:g}")]

    def fitted(self) -> dict:
        return {"concentration": self.concentration, "clip": self.clip} if self.task else {}

    def rivals(self) -> dict:
        return {}
