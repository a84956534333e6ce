"""``rls`` in the behavioural lens (``probekit compare``): its predictions as a differentiable torch
function of the model's inputs, and its rivals.

On ``lds`` the model reads the states x_t = s_t and predicts s_{t+1}; at position t the pairs
(x_tau, y_tau = x_{tau+1}), tau < t, are all in the input, so RLS's prediction W_t x_t with
W_t = (sum_{tau<t} y_tau x_tau^T) R_t^{-1}, R_t = sum_{tau<t} x_tau x_tau^T + lam I, is a function of
the inputs up to t alone. The rivals are what else could produce a next-state guess from them:

* ``ridge λ×1000``: the same least squares, over-regularised (lam * 1000);
* ``one GD step``: W_t = eta (1/t) sum_{tau<t} y_tau x_tau^T from W = 0 (von Oswald et al. 2023's
  mesa-optimizer comparison, arXiv 2309.05858), eta fitted in closed form on the fitting tasks;
* ``current state``: predict x_t itself (no learning in context).
"""

from __future__ import annotations

import numpy as np

from probekit import DataError, Hypothesis


def rls_predict(x, lam: float):
    """W_t x_t at every position of ``x[b, T, D]`` (a torch tensor), from the pairs (x_tau, x_{tau+1}),
    tau < t; differentiable in ``x``."""
    import torch

    b, T, D = x.shape
    pairs_x, pairs_y = x[:, :-1], x[:, 1:]
    zero = x.new_zeros(b, 1, D, D)
    R = torch.cat([zero, torch.cumsum(torch.einsum("bti,btj->btij", pairs_x, pairs_x), 1)], 1)
    C = torch.cat([zero, torch.cumsum(torch.einsum("bti,btj->btij", pairs_y, pairs_x), 1)], 1)
    p = torch.linalg.solve(R + lam * torch.eye(D, dtype=x.dtype), x[..., None])  # R_t^{-1} x_t
    return (C @ p)[..., 0]


def gd_feature(x):
    """g_t = (1/t) sum_{tau<t} x_{tau+1} x_tau^T x_t (0 at t = 0): one GD step with eta = 1."""
    import torch

    b, T, D = x.shape
    zero = x.new_zeros(b, 1, D, D)
    C = torch.cat([zero, torch.cumsum(torch.einsum("bti,btj->btij", x[:, 1:], x[:, :-1]), 1)], 1)
    seen = torch.arange(T, dtype=x.dtype).clamp(min=1)[None, :, None]
    return torch.einsum("btij,btj->bti", C, x) / seen


class _Rival(Hypothesis):
    requires = ("x", "y")

    def compute(self, ds):  # pragma: no cover - rivals serve compare only
        raise DataError(f"{self.name!r} is a rival for probekit compare; it has no probe targets")


class RidgeRival(_Rival):
    """RLS with another ridge lambda."""

    name = "rls-ridge"
    description = "recursive least squares with another ridge lambda"

    def __init__(self, lam: float):
        super().__init__(lam=lam)
        self.lam = lam

    def predict(self, inputs):
        return rls_predict(inputs, self.lam)

    def fitted(self) -> dict:
        return {"lam": self.lam}


class OneStepGD(_Rival):
    """One step of gradient descent on the in-context pairs, eta fitted in closed form on task data."""

    name = "rls-one-gd-step"
    description = "one GD step on the in-context pairs from W = 0"

    def __init__(self):
        super().__init__()
        self.eta: float | None = None

    def fit(self, ds) -> "OneStepGD":
        import torch

        self.check(ds)
        x = torch.as_tensor(np.asarray(ds["x"].values, dtype=np.float64))
        y = torch.as_tensor(np.asarray(ds["y"].values, dtype=np.float64))
        g = gd_feature(x)
        self.eta = float((g * y).sum() / (g * g).sum())
        return self

    def predict(self, inputs):
        if self.eta is None:
            raise DataError("one GD step: call fit() before predict()")
        return self.eta * gd_feature(inputs)

    def fitted(self) -> dict:
        return {"etas": [self.eta]} if self.eta is not None else {}


class CurrentState(_Rival):
    """Predict the current state: x_t."""

    name = "rls-current-state"
    description = "predicts the next state to be the current one"

    def predict(self, inputs):
        return inputs * 1.0
