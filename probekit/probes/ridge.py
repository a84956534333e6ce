"""Linear probes on sufficient statistics: grouped, nested cross-validated ridge.

One streaming pass accumulates, per fold, ``X^T X``, ``X^T Y``, sums, counts and
``sum y^2`` in float64 (on data shifted by a reference row, so centring does not
cancel catastrophically). Training statistics for any set of folds are sums of
fold statistics; one ``eigh`` per training set then gives the ridge solution for
every alpha and every target column as a diagonal rescale, and held-out errors
follow from the test fold's statistics without touching the data again.

Folds are groups of whole samples: positions of one sequence never straddle train
and test. Alpha is chosen *inside* the training folds (nested CV), per target.

R² is out-of-sample: ``1 - SSE / SSE_0`` where ``SSE_0`` is the held-out error of the
training folds' mean (the intercept-only model), so R² > 0 means the probe beats the best
prediction that ignores the activations. With ``null_model=True`` that intercept-only
model (alpha = inf) is also a candidate of the alpha search: on data with no linear signal
the nested CV can pick it, and its R² is then exactly 0 rather than the small negative
number any fitted probe scores on noise.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from itertools import combinations
from typing import Iterator

import numpy as np

from probekit.errors import DataError, UsageError

DEFAULT_REL_ALPHAS = tuple(10.0 ** np.arange(-6, 4))  # times trace(XᵀX)/(n·F)


_DIRECT_FLOPS = 1 << 27  # sse_grouped: below this A·F²·k, score every column directly (no per-group loop)
SMALL_GRAM = 256  # below this many features, solves run single-threaded (threads only add overhead)


def _torch():
    import torch

    return torch


@contextlib.contextmanager
def _solver_threads(n_features: int, device: str) -> Iterator[None]:
    """Run small CPU solves on one thread: for d < SMALL_GRAM a 2-thread eigh is up to 100x
    slower when the cores are busy, and never faster."""
    torch = _torch()
    if n_features >= SMALL_GRAM or not str(device).startswith("cpu") or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def grouped_folds(n_samples: int, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of each sample: a seeded shuffle dealt round-robin into ``n_folds`` groups."""
    if n_folds < 2:
        raise UsageError(f"need at least 2 folds, got {n_folds}")
    if n_samples < n_folds:
        raise UsageError(f"cannot make {n_folds} sample-grouped folds from {n_samples} samples")
    order = np.random.default_rng(seed).permutation(n_samples)
    folds = np.empty(n_samples, dtype=np.int64)
    folds[order] = np.arange(n_samples) % n_folds
    return folds


@dataclass
class FoldStats:
    """Per-fold sufficient statistics of rows ``(x, y)`` for ridge regression.

    Rows are shifted by a common point before accumulating (by default the mean of the
    first batch; :meth:`set_shift` fixes it) so that centring the float64 sums later
    does not cancel catastrophically.
    """

    n_folds: int
    n_features: int
    n_targets: int
    device: str = "cpu"
    xtx: object = field(init=False)
    xty: object = field(init=False)
    sx: object = field(init=False)
    sy: object = field(init=False)
    yy: object = field(init=False)  # per-column sum of y^2
    n: object = field(init=False)
    x_shift: object = field(init=False, default=None)
    y_shift: object = field(init=False, default=None)

    def __post_init__(self) -> None:
        torch = _torch()
        K, F, k = self.n_folds, self.n_features, self.n_targets
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self.device)  # noqa: E731
        self.xtx, self.xty, self.sx, self.sy, self.yy, self.n = z(K, F, F), z(K, F, k), z(K, F), z(K, k), z(K, k), z(K)

    FIELDS = ("xtx", "xty", "sx", "sy", "yy", "n")

    def set_shift(self, x_shift, y_shift) -> "FoldStats":
        """Fix the reference row subtracted before accumulating (needed when statistics
        accumulated separately, e.g. on dask workers, are summed)."""
        torch = _torch()
        self.x_shift = torch.as_tensor(np.asarray(x_shift), dtype=torch.float64, device=self.device)
        self.y_shift = torch.as_tensor(np.asarray(y_shift), dtype=torch.float64, device=self.device)
        return self

    def to_numpy(self) -> dict:
        """Plain arrays (picklable, device-free): what a worker sends back."""
        out = {name: getattr(self, name).cpu().numpy() for name in self.FIELDS}
        out["x_shift"] = None if self.x_shift is None else self.x_shift.cpu().numpy()
        out["y_shift"] = None if self.y_shift is None else self.y_shift.cpu().numpy()
        return out

    @classmethod
    def from_numpy(cls, d: dict, device: str = "cpu") -> "FoldStats":
        torch = _torch()
        K, F, k = d["xty"].shape
        stats = cls(K, F, k, device=device)
        for name in cls.FIELDS:
            setattr(stats, name, torch.as_tensor(d[name], device=device))
        if d["x_shift"] is not None:
            stats.set_shift(d["x_shift"], d["y_shift"])
        return stats

    def add(self, x, y, fold) -> None:
        """Accumulate rows ``x[N, F]``, ``y[N, k]`` whose fold indices are ``fold[N]``.

        Inputs are read, never modified. Unless ``fold`` is already sorted, rows are first
        gathered by fold in their own dtype; then they are copied once into one float64 buffer
        ``[x | y]`` on ``device``, shifted in place, and each fold's ``x^T [x | y]`` is one
        matrix product.
        """
        torch = _torch()
        x, y = self._tensor(x), self._tensor(y)
        fold = np.asarray(fold.cpu() if isinstance(fold, torch.Tensor) else fold).astype(np.int64, copy=False)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise DataError(f"probe inputs must be [rows, {self.n_features}], got {tuple(x.shape)}")
        if y.ndim != 2 or y.shape != (x.shape[0], self.n_targets):
            raise DataError(f"probe targets must be [{x.shape[0]}, {self.n_targets}], got {tuple(y.shape)}")
        if fold.shape != (x.shape[0],):
            raise DataError(f"need one fold index per row ({x.shape[0]}), got shape {fold.shape}")
        n, F = x.shape[0], self.n_features
        if n == 0:
            return
        if fold.min() < 0 or fold.max() >= self.n_folds:
            raise DataError(f"fold indices must lie in [0, {self.n_folds}), got {fold.min()}..{fold.max()}")
        if torch.device(self.device).type != "cpu":  # to the GPU in their own dtype; gather and widen there
            x, y = x.to(self.device), y.to(self.device)
        if n > 1 and np.any(fold[1:] < fold[:-1]):  # rows of one fold contiguous: slices below, not copies
            order = np.argsort(fold, kind="stable")
            fold = fold[order]
            idx = torch.from_numpy(order)
            x, y = (a[idx.to(a.device)] for a in (x, y))  # gathered in their own dtype: fewer bytes
        buf = torch.empty(n, F + self.n_targets, dtype=torch.float64, device=self.device)
        buf[:, :F].copy_(x)  # (a mixed-dtype torch.sub into buf is slower than copy_ then sub_)
        buf[:, F:].copy_(y)
        if self.x_shift is None:  # a reference point keeps the float64 sums well conditioned
            mean = buf.mean(0)
            self.x_shift, self.y_shift = mean[:F].clone(), mean[F:].clone()
        buf.sub_(torch.cat([self.x_shift, self.y_shift]))
        counts = np.bincount(fold, minlength=self.n_folds)
        start = 0
        for k, c in enumerate(counts.tolist()):
            if c:
                rows = buf[start : start + c]
                xk, yk = rows[:, :F], rows[:, F:]
                prod = xk.T @ rows  # [F, F + k]: X^T X and X^T Y in one product
                self.xtx[k] += prod[:, :F]
                self.xty[k] += prod[:, F:]
                sums = rows.sum(0)
                self.sx[k] += sums[:F]
                self.sy[k] += sums[F:]
                self.yy[k] += yk.square_().sum(0)  # last use of these rows: square in place
                self.n[k] += c
            start += c
        # NaN/inf anywhere in the rows reaches these sums: checking them is O(F + k), not O(rows)
        if not (torch.isfinite(self.sx).all() and torch.isfinite(self.yy).all()
                and torch.isfinite(self.xtx.diagonal(dim1=1, dim2=2)).all()):
            raise DataError("probe inputs or targets contain NaN or inf (or values too large to square)")

    def _tensor(self, a):
        """``a`` as a tensor without copying where possible (CPU arrays stay on the CPU until
        the single float64 copy in :meth:`add`, so a GPU receives them in their own dtype)."""
        torch = _torch()
        if isinstance(a, torch.Tensor):
            return a
        a = np.asarray(a)
        if a.dtype.kind not in "fiub":
            raise DataError(f"probe inputs and targets must be numeric, got dtype {a.dtype}")
        return torch.from_numpy(np.require(a, requirements=["C", "W"]))

    def subset(self, folds) -> tuple:
        """Summed statistics ``(xtx, xty, sx, sy, yy, n)`` of the given folds."""
        idx = list(folds)
        return tuple(a[idx].sum(0) for a in (self.xtx, self.xty, self.sx, self.sy, self.yy, self.n))


def sum_stats(a: dict, b: dict) -> dict:
    """Add two accumulations given as ``FoldStats.to_numpy()`` dicts (into ``a``): how statistics
    of separate blocks or dask workers combine. Both must use the same shift."""
    if b["x_shift"] is None:
        return a
    if a["x_shift"] is None:
        return b
    if not (np.array_equal(a["x_shift"], b["x_shift"]) and np.array_equal(a["y_shift"], b["y_shift"])):
        raise DataError("cannot merge probe statistics accumulated with different shifts")
    for name in FoldStats.FIELDS:
        a[name] += b[name]
    return a


@dataclass
class RidgeSolution:
    """Ridge fits of one training set for all alphas, kept in the Gram's eigenbasis."""

    V: object  # eigenvectors [F, F]
    e: object  # eigenvalues [F]
    VC: object  # V^T (centred X^T Y) [F, k]
    mx: object  # training means [F], [k]
    my: object

    @classmethod
    def fit(cls, train: tuple) -> "RidgeSolution":
        """Fit from summed training statistics ``(xtx, xty, sx, sy, yy, n)``."""
        torch = _torch()
        xtx, xty, sx, sy, _, n = train
        if float(n) < 2:
            raise DataError("too few training rows for a probe")
        mx, my = sx / n, sy / n
        G = xtx - n * torch.outer(mx, mx)
        C = xty - n * torch.outer(mx, my)
        e, V = torch.linalg.eigh(0.5 * (G + G.T))
        return cls(V=V, e=e.clamp_min(0), VC=V.T @ C, mx=mx, my=my)

    def coef(self, alphas):
        """Weights ``[A, F, k]`` and intercepts ``[A, k]`` for each alpha (shifted coordinates)."""
        Z = self.VC[None] / (self.e[None, :, None] + alphas[:, None, None])
        W = self.V[None] @ Z
        b = self.my[None] - (self.mx[None, None] @ W)[:, 0]
        return W, b

    def sse(self, alphas, test) -> object:
        """Held-out sum of squared errors ``[A, k]`` on a test set given by its statistics."""
        xtx, xty, sx, sy, yy, n = test
        W, b = self.coef(alphas)
        quad = ((xtx[None] @ W) * W).sum(1)  # diag(W^T xtx W)
        cross = (xty[None] * W).sum(1)  # diag(W^T xty)
        xw = (sx[None, None] @ W)[:, 0]  # sx^T W
        return yy[None] - 2 * cross - 2 * b * sy[None] + quad + 2 * b * xw + n * b * b


    def sse_grouped(self, alphas, test, onehot) -> object:
        """Held-out SSE summed within column groups, ``[A, G]`` (``onehot[G, k]`` marks each group's columns).

        Equals ``sse(alphas, test) @ onehot.T`` but costs O(F²·k + A·G·F²) instead of
        O(A·F²·k): in the eigenbasis, a group's quadratic term is ``dᵀ (H ⊙ Q_g Q_gᵀ) d``
        with ``d = 1 / (e + alpha)``, so many targets sharing an alpha cost little more
        than one. Small problems (``A·F²·k`` under ``_DIRECT_FLOPS``) score every column
        directly instead, which avoids a Python loop over many small groups.
        """
        xtx, xty, sx, sy, yy, n = test
        D = 1.0 / (self.e[None, :] + alphas[:, None])  # [A, F]
        Q, V = self.VC, self.V
        H = V.T @ xtx @ V
        R = V.T @ xty
        cross = D @ (R * Q)  # [A, k]  diag(Wᵀ xty)
        beta = D @ ((V.T @ self.mx)[:, None] * Q)  # [A, k]  mxᵀ W
        omega = D @ ((V.T @ sx)[:, None] * Q)  # [A, k]  sxᵀ W
        b = self.my[None] - beta
        linear = yy[None] - 2 * cross - 2 * b * sy[None] + n * b * b + 2 * b * omega
        out = linear @ onehot.T  # [A, G]
        A, F, k = len(alphas), Q.shape[0], Q.shape[1]
        if A * F * F * k <= _DIRECT_FLOPS:  # small: every column at once, no loop over groups
            Z = D[:, :, None] * Q[None]  # [A, F, k]
            return out + ((H @ Z) * Z).sum(1) @ onehot.T
        for g in range(onehot.shape[0]):
            cols = onehot[g].nonzero().flatten()
            Qg = Q[:, cols]
            M = H * (Qg @ Qg.T)
            out[:, g] += ((D @ M) * D).sum(1)
        return out


@dataclass
class CVResult:
    """Nested cross-validation of one set of target columns."""

    sse: np.ndarray  # held-out SSE per column (alpha chosen inside each outer training set)
    sst: np.ndarray  # held-out SSE per column of the training folds' mean (R²'s reference)
    n: int  # rows
    alpha: np.ndarray  # per column: alpha chosen by CV over all folds (for the final refit)
    alphas: np.ndarray  # the grid searched
    # per outer fold j, the model scored on fold j (fitted without it, alpha chosen inside):
    # predictions are (x - x_shift) @ fold_coef[j] + fold_intercept[j]  (intercept includes y_shift)
    fold_coef: np.ndarray | None = None  # [K, F, k]
    fold_intercept: np.ndarray | None = None  # [K, k]
    x_shift: np.ndarray | None = None  # [F]
    fold_mean: np.ndarray | None = None  # [K, k] training folds' mean of y: the intercept-only prediction

    def r2(self, cols=None) -> float:
        """Pooled out-of-sample R² over ``cols``: ``1 - SSE / SSE_0`` summed over the columns,
        ``SSE_0`` the held-out error of each outer fold's training mean."""
        cols = slice(None) if cols is None else cols
        sst = self.sst[cols].sum()
        return float(1.0 - self.sse[cols].sum() / sst) if sst > 0 else float("nan")

    def mse(self, cols=None) -> float:
        cols = slice(None) if cols is None else cols
        return float(self.sse[cols].sum() / (self.n * np.size(self.sse[cols])))


def alpha_grid(stats: FoldStats, rel_alphas=DEFAULT_REL_ALPHAS, null_model: bool = False):
    """Scale-aware alphas: ``rel_alphas`` times the mean eigenvalue of the centred Gram,
    then ``inf`` (the intercept-only model) when ``null_model``."""
    torch = _torch()
    xtx, _, sx, _, _, n = stats.subset(range(stats.n_folds))
    scale = float(torch.trace(xtx - torch.outer(sx, sx) / n) / stats.n_features)
    scale = scale if scale > 0 else 1.0
    grid = [scale * a for a in rel_alphas] + ([float("inf")] if null_model else [])
    return torch.tensor(grid, dtype=torch.float64, device=stats.device)


def cross_validate(stats: FoldStats, *, col_groups=None, rel_alphas=DEFAULT_REL_ALPHAS,
                   null_model: bool = False) -> CVResult:
    """Nested, sample-grouped CV of ridge for every column of Y at once (see :func:`_cross_validate`)."""
    with _solver_threads(stats.n_features, stats.device):
        return _cross_validate(stats, col_groups=col_groups, rel_alphas=rel_alphas, null_model=null_model)


def _cross_validate(stats: FoldStats, *, col_groups=None, rel_alphas=DEFAULT_REL_ALPHAS,
                    null_model: bool = False) -> CVResult:
    """Nested, sample-grouped CV of ridge for every column of Y at once.

    For each outer fold j, alpha is chosen by an inner CV over the other folds
    (minimum summed SSE within each column group, i.e. per target), then scored
    on fold j. ``col_groups[c]`` names the target of column c (default: one group).
    ``null_model`` adds alpha = inf (predict the training mean) to the candidates.
    """
    torch = _torch()
    K = stats.n_folds
    empty = [k for k in range(K) if float(stats.n[k]) == 0]
    if empty:
        raise DataError(f"folds {empty} have no rows; use fewer folds or more samples")
    k_cols = stats.n_targets
    groups = np.zeros(k_cols, dtype=np.int64) if col_groups is None else np.asarray(col_groups)
    ids = np.unique(groups)
    onehot = torch.tensor(groups[None, :] == ids[:, None], dtype=torch.float64, device=stats.device)  # [G, k]
    alphas = alpha_grid(stats, rel_alphas, null_model)
    everything = stats.subset(range(K))

    def fold_stats(j):
        return tuple(a[j] for a in (stats.xtx, stats.xty, stats.sx, stats.sy, stats.yy, stats.n))

    # SSE[A, G] of training on all folds but {i, j} and testing on i, for every pair: one eigh per pair.
    inner = {}
    for i, j in combinations(range(K), 2):
        sol = RidgeSolution.fit(_minus(everything, stats.subset((i, j))))
        inner[(i, j)] = sol.sse_grouped(alphas, fold_stats(i), onehot)
        inner[(j, i)] = sol.sse_grouped(alphas, fold_stats(j), onehot)

    col_group = torch.as_tensor(np.searchsorted(ids, groups), device=stats.device)

    def choose(sse_by_alpha):  # [A, G] -> alpha index per column, minimising within each group
        return sse_by_alpha.argmin(0)[col_group]

    held_out = torch.zeros(k_cols, dtype=torch.float64, device=stats.device)
    all_folds_sse = torch.zeros(len(alphas), len(ids), dtype=torch.float64, device=stats.device)
    cols = torch.arange(k_cols, device=stats.device)
    fold_coef, fold_intercept, fold_mean = [], [], []
    sst = torch.zeros(k_cols, dtype=torch.float64, device=stats.device)
    for j in range(K):
        sol = RidgeSolution.fit(_minus(everything, fold_stats(j)))
        all_folds_sse += sol.sse_grouped(alphas, fold_stats(j), onehot)
        pick = choose(sum(inner[(i, j)] for i in range(K) if i != j))
        used = torch.unique(pick)  # per-column errors only at the (few) chosen alphas
        outer = sol.sse(alphas[used], fold_stats(j))  # [len(used), k]
        held_out += outer.gather(0, torch.searchsorted(used, pick)[None])[0]
        W, b = sol.coef(alphas[used])  # [U, F, k], [U, k]
        at = torch.searchsorted(used, pick)
        fold_coef.append(W[at, :, cols].T)  # column c from its chosen alpha -> [F, k]
        fold_intercept.append(b[at, cols] + stats.y_shift)
        _, _, _, sy_j, yy_j, n_j = fold_stats(j)  # the training mean's held-out error, as sse() computes it
        sst += yy_j - 2 * sol.my * sy_j + n_j * sol.my * sol.my
        fold_mean.append(sol.my + stats.y_shift)
    n = everything[-1]
    final_alpha = alphas[choose(all_folds_sse)]
    return CVResult(
        sse=held_out.clamp_min(0).cpu().numpy(),
        sst=sst.clamp_min(0).cpu().numpy(),
        n=int(n),
        alpha=final_alpha.cpu().numpy(),
        alphas=alphas.cpu().numpy(),
        fold_coef=torch.stack(fold_coef).cpu().numpy(),
        fold_intercept=torch.stack(fold_intercept).cpu().numpy(),
        x_shift=stats.x_shift.cpu().numpy(),
        fold_mean=torch.stack(fold_mean).cpu().numpy(),
    )


def _minus(a: tuple, b: tuple) -> tuple:
    return tuple(x - y for x, y in zip(a, b))
