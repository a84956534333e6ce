"""Tasks with exact posteriors: ``coin``, ``coin-finite``, ``markov``; and ``affine-prompts`` for LLMs.

Token tasks generate ``tokens[sample, pos]`` (what the model reads) and ``next`` (the
following token, what it predicts). At position t the model has seen tokens 0..t.

* ``coin``: theta ~ Beta(alpha, beta) per sequence, flips ~ Bernoulli(theta) (tokens 0/1).
* ``coin-finite``: theta uniform on a finite set (default {0.2, 0.5, 0.8}).
* ``markov``: an in-context Markov chain over k states with transition rows ~ Dir(c 1)
  drawn per sequence and a uniform first state (Edelman et al. 2024).
* ``affine-prompts``: text prompts of n examples ``(x, a*x+b)`` then a query ``(x_q,``;
  the answer is `` y_q)``. Not a token task: tokenisation belongs to the model, so it
  provides ``prompts(n_examples, count, seed)`` and ``prompt_pairs(count, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probekit import ModelIO, Task, UsageError


@dataclass(frozen=True)
class CoinParams:
    length: int = 64  # positions T
    alpha: float = 1.0  # Beta prior
    beta: float = 1.0

    def __post_init__(self):
        if self.length < 1 or self.alpha <= 0 or self.beta <= 0:
            raise UsageError("coin needs length >= 1 and alpha, beta > 0")


@dataclass(frozen=True)
class CoinFiniteParams:
    length: int = 64
    thetas: list = field(default_factory=lambda: [0.2, 0.5, 0.8])
    prior: list = field(default_factory=list)  # empty: uniform

    def __post_init__(self):
        if self.length < 1 or not self.thetas or not all(0 < t < 1 for t in self.thetas):
            raise UsageError(f"coin-finite needs length >= 1 and thetas in (0, 1), got {self.thetas}")
        if self.prior and (len(self.prior) != len(self.thetas) or min(self.prior) <= 0):
            raise UsageError(f"coin-finite prior needs {len(self.thetas)} positive weights, got {self.prior}")

    def prior_probs(self) -> np.ndarray:
        p = np.asarray(self.prior or [1.0] * len(self.thetas), dtype=np.float64)
        return p / p.sum()


@dataclass(frozen=True)
class MarkovParams:
    length: int = 64
    states: int = 3  # k
    concentration: float = 1.0  # c of the Dir(c 1) prior on each transition row

    def __post_init__(self):
        if self.length < 1 or self.states < 2 or self.concentration <= 0:
            raise UsageError("markov needs length >= 1, states >= 2 and concentration > 0")


class _TokenTask(Task):
    @property
    def io(self) -> ModelIO:
        return ModelIO(input_var="tokens", target_var="next", kind="tokens", d_in=self.vocab_size,
                       d_out=self.vocab_size, seq_len=self.params.length)

    @property
    def vocab_size(self) -> int:
        return 2

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:  # pragma: no cover
        raise NotImplementedError

    def generate(self, n: int, seed: int):
        import xarray as xr

        seq, extra = self.draw(n, np.random.default_rng(seed))  # [n, T + 1]
        data = {
            "tokens": (("sample", "pos"), seq[:, :-1].astype(np.int64), {"description": "observed tokens"}),
            "next": (("sample", "pos"), seq[:, 1:].astype(np.int64), {"description": "the following token"}),
        }
        data.update(extra)
        return xr.Dataset(data, coords={"pos": np.arange(self.params.length)}, attrs=self.provenance(seed))


class CoinTask(_TokenTask):
    """Beta-Bernoulli coin flips."""

    name = "coin"
    Params = CoinParams

    def draw(self, n, rng):
        p = self.params
        theta = rng.beta(p.alpha, p.beta, n)
        flips = (rng.random((n, p.length + 1)) < theta[:, None]).astype(np.int64)
        return flips, {"theta": (("sample",), theta, {"description": "the sequence's bias"})}


class CoinFiniteTask(_TokenTask):
    """Coin flips whose bias is one of a finite set."""

    name = "coin-finite"
    Params = CoinFiniteParams

    def draw(self, n, rng):
        p = self.params
        k = rng.choice(len(p.thetas), size=n, p=p.prior_probs())
        theta = np.asarray(p.thetas, dtype=np.float64)[k]
        flips = (rng.random((n, p.length + 1)) < theta[:, None]).astype(np.int64)
        return flips, {"theta": (("sample",), theta, {"description": "the sequence's bias"}),
                       "hypothesis_index": (("sample",), k, {"description": "index into thetas"})}


class MarkovTask(_TokenTask):
    """In-context Markov chains with Dirichlet transition rows."""

    name = "markov"
    Params = MarkovParams

    @property
    def vocab_size(self) -> int:
        return self.params.states

    def draw(self, n, rng):
        p = self.params
        k = p.states
        P = rng.dirichlet(np.full(k, p.concentration), size=(n, k))  # [n, from, to]
        seq = np.empty((n, p.length + 1), dtype=np.int64)
        seq[:, 0] = rng.integers(0, k, n)
        cum = P.cumsum(-1)
        for t in range(p.length):
            row = cum[np.arange(n), seq[:, t]]  # [n, k]
            seq[:, t + 1] = np.minimum((rng.random((n, 1)) > row).sum(-1), k - 1)
        return seq, {"transitions": (("sample", "from_state", "to_state"), P, {"description": "the chain's matrix"})}


@dataclass(frozen=True)
class AffineParams:
    a: int = 2
    b: int = 3
    x_max: int = 99  # x uniform on 0..x_max
    max_examples: int = 20  # n = 0..max_examples

    def __post_init__(self):
        if self.x_max < 1 or self.max_examples < 0:
            raise UsageError("affine-prompts needs x_max >= 1 and max_examples >= 0")


class AffinePromptsTask(Task):
    """Prompts ``(x, a*x+b)`` lines then a query ``(x_q,``; the answer is `` y_q)``."""

    name = "affine-prompts"
    Params = AffineParams

    @property
    def io(self) -> ModelIO:
        raise UsageError("affine-prompts is a text task: it is tokenised by a model "
                         "(use probekit icl or probekit patch --task affine-prompts with an hf: model)")

    def rule(self, x):
        return self.params.a * np.asarray(x) + self.params.b

    def prompt(self, xs, x_q) -> tuple[str, str]:
        """The prompt with examples at ``xs`` and the query ``x_q``, and its answer."""
        lines = "".join(f"({x}, {int(self.rule(x))})\n" for x in xs)
        return f"{lines}({x_q},", f" {int(self.rule(x_q))})"

    def prompts(self, n_examples: int, count: int, seed: int) -> list[dict]:
        """``count`` prompts with ``n_examples`` examples each: dicts with text, answer, xs, x_q."""
        rng = np.random.default_rng([seed, n_examples])
        out = []
        for _ in range(count):
            xs = rng.integers(0, self.params.x_max + 1, n_examples + 1)
            text, answer = self.prompt(xs[:-1].tolist(), int(xs[-1]))
            out.append({"text": text, "answer": answer, "xs": xs[:-1].tolist(), "x_q": int(xs[-1]),
                        "n_examples": n_examples})
        return out

    def rule_grid(self) -> np.ndarray:
        """The ideal observer's candidate rules: integer a in [-5, 5], b in [-10, 10] (widened to
        contain the task's own rule)."""
        from probekit_bayes.posterior import affine_rule_grid

        p = self.params
        return affine_rule_grid((min(-5, p.a), max(5, p.a)), (min(-10, p.b), max(10, p.b)))

    def n_answers(self) -> int:
        """|Y|: the integers any candidate rule can produce on x in 0..x_max."""
        rules = self.rule_grid()
        ends = rules[:, :1] * np.array([[0, self.params.x_max]]) + rules[:, 1:]
        return int(ends.max() - ends.min() + 1)

    def ideal_log_odds(self, prompt: dict, epsilon: float) -> float:
        """The exact Bayesian observer's log-odds of this prompt's answer (see probekit_bayes.posterior)."""
        from probekit_bayes.posterior import affine_answer_log_odds

        xs = np.asarray(prompt["xs"], dtype=np.int64)
        return affine_answer_log_odds(xs, self.rule(xs), prompt["x_q"], int(self.rule(prompt["x_q"])),
                                      self.rule_grid(), epsilon, self.n_answers())

    def asymptotic_slope(self, epsilon: float) -> float:
        """Per-example growth of the true rule's posterior log-odds once the others are contradicted."""
        from probekit_bayes.posterior import affine_asymptotic_slope

        return affine_asymptotic_slope(epsilon, self.n_answers())

    def prompt_pairs(self, n: int, seed: int) -> list[dict]:
        """``n`` patching pairs: ``a`` with ``max_examples`` examples, ``b`` the same query alone."""
        pairs = []
        for p in self.prompts(self.params.max_examples, n, seed):
            b, _ = self.prompt([], p["x_q"])
            pairs.append({"a": p["text"], "b": b, "answer": p["answer"]})
        return pairs

    def generate(self, n: int, seed: int):
        import xarray as xr

        rows = [p for k in range(self.params.max_examples + 1)
                for p in self.prompts(k, max(1, n // (self.params.max_examples + 1)), seed)][:n]
        return xr.Dataset(
            {"text": (("sample",), np.array([r["text"] for r in rows], dtype=object)),
             "answer": (("sample",), np.array([r["answer"] for r in rows], dtype=object)),
             "n_examples": (("sample",), np.array([r["n_examples"] for r in rows]))},
            attrs=self.provenance(seed))
