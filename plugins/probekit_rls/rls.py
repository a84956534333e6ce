"""Hypothesis ``rls``: the transformer runs recursive least squares on the in-context pairs.

At position t (0-indexed) the pairs (x_tau, y_tau), tau < t, are known and x_t is
the query. With R_t = sum_{tau<t} x_tau x_tau^T + lam I:

* ``rls_pred``    = W_t x_t, the RLS prediction of the next state, where
  W_t = (sum_{tau<t} y_tau x_tau^T) R_t^{-1}; defined for t >= 1.
* ``precond``     = p_t = R_t^{-1} x_t, the preconditioned input; defined once R_t
  has full rank without the ridge (t >= D), since before that it is scaled by 1/lam.
* ``precond_dir`` = p_t / ||p_t||, the direction of the preconditioned input. Its norm is
  heavy-tailed (R_t is often badly conditioned on these sequences) and a LayerNorm model
  cannot carry such a scale linearly, so the direction is the fairer test; t >= D.
* ``rls_weights`` = vec(W_t), the RLS weight estimate; t >= D.
* ``neumann_k``   = c sum_{j<k} (I - c R_t)^j x_t with c = 1 / lambda_max(R_t): the
  order-k truncated Neumann series for p_t, one linear-attention operation per term,
  so "layer k holds iterate k"; t >= D.
* ``next_state``  = y_t and ``current_state`` = x_t: what the model must output and
  what it is given (a sanity target that layer 0 must hold).

The recursion uses the Sherman-Morrison update of P_t = R_t^{-1}, which is what
"recursive" least squares means; tests check it against a batch ridge solve.

For ``probekit compare``, ``predict`` gives ``rls_pred`` as a differentiable function of the
model's inputs, and ``rivals()`` names an over-regularised ridge, one GD step and predicting the
current state (:mod:`probekit_rls.behaviour`).
"""

from __future__ import annotations

import numpy as np

from probekit import Hypothesis, Target, UsageError


def rls_recursion(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run RLS over positions. ``x[n, T, dx]``, ``y[n, T, dy]``.

    Returns ``(pred[n, T, dy], precond[n, T, dx], weights[n, T, dy, dx])`` where entry t
    uses the pairs tau < t only (W_0 = 0, P_0 = I / lam).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, T, dx = x.shape
    dy = y.shape[-1]
    P = np.broadcast_to(np.eye(dx) / lam, (n, dx, dx)).copy()
    W = np.zeros((n, dy, dx))
    pred, precond, weights = np.empty((n, T, dy)), np.empty((n, T, dx)), np.empty((n, T, dy, dx))
    for t in range(T):
        xt = x[:, t]
        Px = np.einsum("nij,nj->ni", P, xt)
        precond[:, t] = Px
        weights[:, t] = W
        pred[:, t] = np.einsum("nij,nj->ni", W, xt)
        # Sherman-Morrison: absorb the pair (x_t, y_t)
        gain = Px / (1.0 + np.einsum("ni,ni->n", xt, Px))[:, None]
        W = W + np.einsum("ni,nj->nij", y[:, t] - pred[:, t], gain)
        P = P - np.einsum("ni,nj->nij", gain, Px)
        P = 0.5 * (P + P.transpose(0, 2, 1))  # keep symmetric against round-off
    return pred, precond, weights


def neumann_iterates(x: np.ndarray, lam: float, orders: list[int]) -> dict[int, np.ndarray]:
    """Truncated Neumann series for R_t^{-1} x_t at each order in ``orders``.

    p^(k) = c sum_{j<k} (I - c R_t)^j x_t with c = 1 / lambda_max(R_t) per position,
    which converges to R_t^{-1} x_t as k grows. Returns ``{k: array[n, T, dx]}``.
    """
    x = np.asarray(x, dtype=np.float64)
    n, T, dx = x.shape
    outer = np.einsum("nti,ntj->ntij", x, x)
    R = np.cumsum(outer, axis=1) - outer + lam * np.eye(dx)  # sum over tau < t
    c = 1.0 / np.linalg.eigvalsh(R)[..., -1]
    term = c[..., None] * x
    total = np.zeros_like(x)
    out: dict[int, np.ndarray] = {}
    for k in range(1, max(orders) + 1):
        total = total + term
        if k in orders:
            out[k] = total.copy()
        term = term - c[..., None] * np.einsum("ntij,ntj->nti", R, term)
    return out


class RLSHypothesis(Hypothesis):
    """Recursive least squares on in-context regression pairs (x_tau, y_tau)."""

    name = "rls"
    description = "mesa-optimizer: recursive least squares on the in-context pairs (von Oswald et al. 2023)"
    requires = ("x", "y")

    def __init__(self, lam: float = 1e-3, neumann_orders: int = 4, min_pos: int | None = None):
        if lam <= 0:
            raise UsageError(f"rls needs lam > 0, got {lam}")
        if neumann_orders < 0:
            raise UsageError(f"rls needs neumann_orders >= 0, got {neumann_orders}")
        super().__init__(lam=lam, neumann_orders=neumann_orders, min_pos=min_pos)
        self.lam, self.neumann_orders, self.min_pos = lam, neumann_orders, min_pos

    def predict(self, inputs):
        """``rls_pred`` at every position of the model's inputs ``[b, T, D]`` (states; the pairs are
        (x_tau, x_{tau+1}), tau < t), as ``[b, T, D]``; differentiable."""
        from probekit_rls.behaviour import rls_predict

        return rls_predict(inputs, self.lam)

    def rivals(self) -> dict:
        from probekit_rls.behaviour import CurrentState, OneStepGD, RidgeRival

        return {f"ridge λ={1000 * self.lam:g}": RidgeRival(1000 * self.lam), "one GD step": OneStepGD(),
                "current state": CurrentState()}

    def compute(self, ds):
        x = np.asarray(ds["x"].values, dtype=np.float64)
        y = np.asarray(ds["y"].values, dtype=np.float64)
        n, T, dx = x.shape
        pos = np.arange(T)
        full_rank = np.broadcast_to(pos >= (dx if self.min_pos is None else self.min_pos), (n, T))
        pred, precond, weights = rls_recursion(x, y, self.lam)
        targets = [
            Target("next_state", y, np.ones((n, T), bool), "true next state y_t = s_{t+1}"),
            Target("current_state", x, np.ones((n, T), bool), "input x_t = s_t (sanity: layer 0 holds it)",
                   expected_layer=0),
            Target("rls_pred", pred, np.broadcast_to(pos >= 1, (n, T)),
                   "RLS prediction W_t x_t from pairs tau < t"),
            Target("precond", precond, full_rank, "preconditioned input (sum x x^T + lam I)^-1 x_t"),
            Target("precond_dir", precond / np.linalg.norm(precond, axis=-1, keepdims=True), full_rank,
                   "direction of the preconditioned input p_t / |p_t|"),
            Target("rls_weights", weights.reshape(n, T, -1), full_rank, "RLS weight estimate vec(W_t)"),
        ]
        orders = list(range(1, self.neumann_orders + 1))
        for k, value in (neumann_iterates(x, self.lam, orders) if orders else {}).items():
            targets.append(Target(f"neumann_{k}", value, full_rank,
                                  f"order-{k} truncated Neumann series for the preconditioned input",
                                  expected_layer=k))
        return targets
