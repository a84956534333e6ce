"""Tasks ``linreg`` and ``linreg-ahn``: in-context linear regression in von Oswald's token format.

Each sample is one regression task: N context tokens ``e_i = (x_i, y_i)`` and a query
token ``e_q = (x_q, 0)`` at position N; the model must output ``y_q`` at the query.

* ``linreg`` (von Oswald et al. 2023, their code's defaults): d = 10, N = 10,
  x ~ U(-r/2, r/2)^d with r = ``x_range`` = 1, w ~ N(0, w_scale^2 I), y = w^T x + noise.
* ``linreg-ahn`` (Ahn et al. 2023): d = 5, N = 20, x = U D z with z ~ N(0, I), U the
  left singular vectors of a U(-1, 1) d x d matrix (fixed by ``basis_seed``) and
  D = diag(``scales``), so Cov(x) = U D^2 U^T; w = U D^{-1} g with g ~ N(0, I), i.e.
  w ~ N(0, Sigma^{-1}).

Variables: ``z`` (model input tokens), ``x``, ``y`` (labels; at the query the true
y_q, which the model never sees), ``is_query`` (bool mask of the query position: the
only position trained and compared) and ``w`` (the task's weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probekit import ModelIO, Task, UsageError


@dataclass(frozen=True)
class LinRegParams:
    dim: int = 10  # d: input dimension
    n_points: int = 10  # N: context examples before the query
    x_range: float = 1.0  # x ~ U(-x_range/2, x_range/2)^d
    w_scale: float = 1.0  # w ~ N(0, w_scale^2 I)
    noise: float = 0.0  # std of Gaussian label noise

    def __post_init__(self):
        if self.dim < 1 or self.n_points < 1:
            raise UsageError(f"linreg needs dim >= 1 and n_points >= 1, got {self.dim}, {self.n_points}")
        if self.x_range <= 0 or self.w_scale <= 0 or self.noise < 0:
            raise UsageError("linreg needs x_range > 0, w_scale > 0 and noise >= 0")


@dataclass(frozen=True)
class AhnParams:
    dim: int = 5
    n_points: int = 20
    scales: list = field(default_factory=lambda: [1.0, 1.0, 0.5, 0.25, 1.0])  # D's diagonal
    basis_seed: int = 0  # fixes U, the same for every task
    x_scale: float = 1.0  # multiplies x (for out-of-distribution tests)
    noise: float = 0.0

    def __post_init__(self):
        if self.dim < 1 or self.n_points < 1:
            raise UsageError(f"linreg-ahn needs dim >= 1 and n_points >= 1, got {self.dim}, {self.n_points}")
        if len(self.scales) != self.dim or min(self.scales) <= 0:
            raise UsageError(f"linreg-ahn needs {self.dim} positive scales, got {self.scales}")
        if self.x_scale <= 0 or self.noise < 0:
            raise UsageError("linreg-ahn needs x_scale > 0 and noise >= 0")


class _RegressionTokens(Task):
    """Shared token format; subclasses draw ``x[n, N+1, d]`` and ``w[n, d]``."""

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    @property
    def io(self) -> ModelIO:
        p = self.params
        return ModelIO(input_var="z", target_var="y", kind="continuous", d_in=p.dim + 1, d_out=1,
                       seq_len=p.n_points + 1, loss_mask_var="is_query", sensitivity_features=(0, p.dim))

    def generate(self, n: int, seed: int):
        import xarray as xr

        p = self.params
        rng = np.random.default_rng(seed)
        x, w = self.draw(n, rng)
        y = np.einsum("ntd,nd->nt", x, w) + p.noise * rng.standard_normal((n, p.n_points + 1))
        z = np.concatenate([x, y[..., None]], -1)
        z[:, -1, -1] = 0.0  # the query's label slot is empty
        query = np.zeros((n, p.n_points + 1), dtype=bool)
        query[:, -1] = True
        return xr.Dataset(
            {
                "z": (("sample", "pos", "z_dim"), z.astype(np.float32), {"description": "tokens (x_i, y_i); query (x_q, 0)"}),
                "x": (("sample", "pos", "x_dim"), x.astype(np.float32), {"description": "inputs x_i and x_q"}),
                "y": (("sample", "pos", "y_dim"), y[..., None].astype(np.float32),
                      {"description": "labels y_i and the query's true y_q"}),
                "is_query": (("sample", "pos"), query, {"description": "the query position"}),
                "w": (("sample", "x_dim"), w.astype(np.float32), {"description": "the task's weights"}),
            },
            coords={"pos": np.arange(p.n_points + 1)},
            attrs=self.provenance(seed),
        )


class LinRegTask(_RegressionTokens):
    """von Oswald et al.'s linear regression: x ~ U(-r/2, r/2)^d, w ~ N(0, I)."""

    name = "linreg"
    Params = LinRegParams
    #: the parameter an out-of-distribution sweep scales (``probekit compare --ood``)
    ood_param = "x_range"

    def draw(self, n, rng):
        p = self.params
        x = rng.uniform(-p.x_range / 2, p.x_range / 2, (n, p.n_points + 1, p.dim))
        return x, p.w_scale * rng.standard_normal((n, p.dim))


def ahn_basis(p: AhnParams) -> np.ndarray:
    """U: the left singular vectors of a U(-1, 1) matrix drawn from ``basis_seed``."""
    u, _, _ = np.linalg.svd(np.random.default_rng(p.basis_seed).uniform(-1, 1, (p.dim, p.dim)))
    return u


def ahn_covariance(p: AhnParams) -> np.ndarray:
    """Sigma = Cov(x) = U D^2 U^T (times x_scale^2)."""
    u = ahn_basis(p)
    return p.x_scale**2 * (u * np.asarray(p.scales, dtype=float) ** 2) @ u.T


class AhnLinRegTask(_RegressionTokens):
    """Ahn et al.'s anisotropic linear regression: Cov(x) = U D^2 U^T, w ~ N(0, Sigma^{-1})."""

    name = "linreg-ahn"
    Params = AhnParams
    ood_param = "x_scale"

    def draw(self, n, rng):
        p = self.params
        u, D = ahn_basis(p), np.asarray(p.scales, dtype=float)
        x = p.x_scale * rng.standard_normal((n, p.n_points + 1, p.dim)) @ (u * D).T
        w = rng.standard_normal((n, p.dim)) @ (u / D).T
        return x, w
