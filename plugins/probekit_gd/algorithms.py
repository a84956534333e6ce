"""Gradient descent on the in-context regression loss, in the transformer's own token format.

All functions take torch tensors (float64 for fitting; any float dtype for
autograd) of tokens ``x[b, N+1, d]`` (the last row is the query x_q) and context
labels ``y[b, N]``, and run the algorithm the way a linear self-attention layer
would: a "y-slot" per token starts at ``y_i`` (0 at the query) and each step k does

    r_j <- r_j - eta_k  (1/N) sum_i r_i  x_i^T A x_j        (GD: A = I; PGD: a preconditioner)
    x_j <- x_j - gamma_k  sum_i x_i x_i^T x_j               (GD++ only; all tokens, query included)

using the tokens before the step. With gamma = 0 and A = I the context slots hold
the residuals r_i = y_i - W_k x_i and the query slot holds -W_k x_q, where
W_{k+1} = W_k + (eta_k/N) sum_i r_i x_i^T is plain gradient descent on
L(W) = 1/(2N) sum_i (y_i - W x_i)^2 from W_0 = 0 (von Oswald et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Trajectory:
    """Per step k = 1..K: query prediction ``pred[k] [b]``, context residuals ``residual[k] [b, N]``,
    tokens' x-part ``x[k] [b, N+1, d]`` and (GD/PGD) the weights ``weights[k] [b, d]``."""

    pred: list
    residual: list
    x: list
    weights: list


def run_steps(x, y, etas, gammas=None, precond=None) -> Trajectory:
    """Run K = len(etas) steps of GD (``gammas`` None), GD++ or preconditioned GD (``precond`` [d, d])."""
    import torch

    b, T, d = x.shape
    N = T - 1
    r = torch.cat([y, y.new_zeros(b, 1)], 1)  # y-slots: labels, then the empty query slot
    W = x.new_zeros(b, d)
    traj = Trajectory([], [], [], [])
    for k, eta in enumerate(etas):
        g = torch.einsum("bi,bid->bd", r[:, :N], x[:, :N]) / N  # (1/N) sum_i r_i x_i
        step = g if precond is None else g @ precond.T  # A g
        r_new = r - eta * torch.einsum("bd,btd->bt", step, x)
        if gammas is not None:
            S = torch.einsum("bid,bie->bde", x[:, :N], x[:, :N])
            x = x - gammas[k] * torch.einsum("bde,bte->btd", S, x)
        else:
            W = W + eta * step
        r = r_new
        traj.pred.append(-r[:, N])
        traj.residual.append(r[:, :N])
        traj.x.append(x)
        traj.weights.append(W if gammas is None else None)
    return traj


def split_tokens(z):
    """Model-input tokens ``z[b, N+1, d+1]`` -> ``(x[b, N+1, d], y[b, N])``."""
    return z[..., :-1], z[:, :-1, -1]


def half_mse(pred, target) -> float:
    """Von Oswald's loss: 1/2 mean squared error."""
    return float(0.5 * ((pred - target) ** 2).mean())


def one_step_feature(x, y):
    """g_q = x_q^T (1/N) sum_i y_i x_i: one GD step with eta = 1 predicts eta * g_q."""
    import torch

    N = x.shape[1] - 1
    return torch.einsum("bd,bd->b", x[:, N], torch.einsum("bi,bid->bd", y, x[:, :N]) / N)


def best_eta(x, y, y_q) -> float:
    """The loss-minimising one-step learning rate, in closed form: <g, y_q> / <g, g>."""
    g = one_step_feature(x, y)
    return float((g * y_q).sum() / (g * g).sum())


def grid_search_eta(x, y, y_q, grid=None) -> tuple[float, float]:
    """Von Oswald's ``scan_lrs``: the eta of a grid ([0.001, 25) in steps of 0.1) with the lowest
    one-step loss; returns ``(eta, loss)``."""
    grid = np.arange(0.001, 25.0, 0.1) if grid is None else np.asarray(grid, dtype=float)
    g = one_step_feature(x, y)
    losses = [half_mse(eta * g, y_q) for eta in grid]
    i = int(np.argmin(losses))
    return float(grid[i]), float(losses[i])


def fit_preconditioner(x, y, y_q):
    """The one-step preconditioner A minimising 1/2 mean (x_q^T A g - y_q)^2, g = (1/N) sum_i y_i x_i,
    by least squares over A's d^2 entries (Ahn et al.'s one-layer optimum, fitted to data)."""
    import torch

    N = x.shape[1] - 1
    g = torch.einsum("bi,bid->bd", y, x[:, :N]) / N
    F = torch.einsum("ba,bc->bac", x[:, N], g).reshape(len(g), -1)
    sol = torch.linalg.lstsq(F, y_q[:, None]).solution
    d = x.shape[-1]
    return sol.reshape(d, d)


def fit_steps(x, y, y_q, n_steps: int, *, kind: str = "gd", tied: bool = False, max_iter: int = 200):
    """Fit per-step hyperparameters to task data by L-BFGS on the K-step loss (float64).

    ``kind``: ``"gd"`` fits eta_1..K; ``"gdpp"`` fits eta_k and gamma_k (von Oswald's GD++);
    ``"pgd"`` fits a preconditioner A (started at its one-step least-squares optimum) and
    eta_2..K (eta_1 = 1, absorbed in A). ``tied``: one eta (and gamma) for every step, as a
    recurrent model with shared weights must use (PGD: every eta_k = 1). Returns a dict of
    plain floats / nested lists, ``etas`` (and ``gammas``) always listing all K steps.
    """
    import torch

    x, y, y_q = (t.to(torch.float64) for t in (x, y, y_q))
    N = x.shape[1] - 1
    eta0 = best_eta(x, y, y_q)
    n_free = 1 if tied else n_steps
    # GD steps on one quadratic commute, so the loss is symmetric in untied etas: a symmetric
    # start would stay symmetric. Start them spread (decreasing) instead.
    spread = torch.linspace(1.25, 0.75, n_free, dtype=torch.float64) if n_free > 1 else torch.ones(1, dtype=torch.float64)
    if kind == "pgd":
        params = {"precond": fit_preconditioner(x, y, y_q).clone()}
        if not tied and n_steps > 1:
            params["etas"] = spread[1:].clone()
    else:
        params = {"etas": eta0 * spread}
        if kind == "gdpp":
            params["gammas"] = torch.full((n_free,), eta0 / N**2, dtype=torch.float64)
    if n_steps > 1 or kind == "gdpp":
        leaves = [p.requires_grad_() for p in params.values()]
        opt = torch.optim.LBFGS(leaves, lr=1, max_iter=max_iter, tolerance_grad=1e-12,
                                tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = 0.5 * ((run_steps(x, y, **_expand(params, n_steps, kind)).pred[-1] - y_q) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        return {k: v.tolist() for k, v in _expand(params, n_steps, kind).items() if v is not None}


def _expand(params: dict, n_steps: int, kind: str) -> dict:
    """``run_steps`` keyword arguments from fitted parameters (tied ones repeated K times)."""
    import torch

    if kind == "pgd":
        A = params["precond"]
        etas = torch.cat([torch.ones(1, dtype=A.dtype), params["etas"]]) if "etas" in params \
            else torch.ones(n_steps, dtype=A.dtype)
        return {"etas": etas, "gammas": None, "precond": A}
    rep = lambda v: v.expand(n_steps) if len(v) == 1 else v  # noqa: E731
    gammas = params.get("gammas")
    return {"etas": rep(params["etas"]), "gammas": rep(gammas) if gammas is not None else None, "precond": None}


def least_squares_pred(x, y, lam: float = 1e-6):
    """Ridge least squares on the context (lambda = ``lam``), evaluated at the query: the
    prediction of an exact in-context learner."""
    import torch

    N, d = x.shape[1] - 1, x.shape[-1]
    X = x[:, :N]
    R = X.transpose(1, 2) @ X + lam * torch.eye(d, dtype=x.dtype)
    w = torch.linalg.solve(R, (X.transpose(1, 2) @ y[..., None]))[..., 0]
    return torch.einsum("bd,bd->b", w, x[:, N])
