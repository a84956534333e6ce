"""Held-out scores beyond the pooled R²: per sample (for bootstrap CIs), per position, cosine.

After cross-validation, a second pass over the activations predicts every row with the
model of its outer fold (fitted without that fold, alpha chosen inside), and keeps
small per-sample and per-position sums. From them:

* the pooled held-out R² (equal to the CV result; a test checks it): out-of-sample,
  ``1 - SSE / SSE_0`` with ``SSE_0`` the error of predicting each row by its outer fold's
  training mean, the best guess that ignores the activations,
* a percentile bootstrap CI of R² over *samples* (whole sequences are resampled, so
  positions of one sequence move together). The fits are held fixed, so the CI covers
  the evaluation set's sampling variability, not the fit's (the shuffled baseline's band
  over refitted permutations covers that). Where the nested CV chose the intercept-only
  model (alpha = inf) the prediction *is* the training mean, so R² and its CI are exactly
  0; a fitted probe on noise scores slightly below 0 and its CI can sit just below 0.
  Whether a result beats its baselines is therefore judged conservatively, by CI overlap,
* R² per context position (SST about each position's own mean),
* mean cosine between predicted and true target vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class HeldOut:
    """Per-sample and per-position held-out sums for the columns of one target."""

    sse: np.ndarray  # [n_samples]   sum over rows and dims of squared error
    sse0: np.ndarray  # [n_samples]  the same for the training-mean prediction (R²'s reference)
    sy: np.ndarray  # [n_samples, k] sum of y
    syy: np.ndarray  # [n_samples, k] sum of y^2
    rows: np.ndarray  # [n_samples]  rows (positions) probed
    cos: np.ndarray  # [n_samples]   sum over rows of cos(pred, y)
    pos_sse: np.ndarray  # [T]
    pos_sy: np.ndarray  # [T, k]
    pos_syy: np.ndarray  # [T, k]
    pos_rows: np.ndarray  # [T]


def predict_rows(acts: np.ndarray, fold: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                 x_shift: np.ndarray) -> np.ndarray:
    """Held-out predictions ``[rows, k]`` for rows ``acts[rows, F]`` of outer folds ``fold[rows]``."""
    x = acts.astype(np.float64) - x_shift
    out = np.empty((x.shape[0], coef.shape[-1]))
    for j in np.unique(fold):
        sel = fold == j
        out[sel] = x[sel] @ coef[j] + intercept[j]
    return out


def block_held_out(acts, mask, y, fold, coef, intercept, x_shift, cols, fold_mean) -> list[HeldOut]:
    """Sums for one block of samples: ``acts[b, T, F]``, ``mask[b, T]``, ``y[b, T, k_all]``,
    ``fold[b]``; ``cols`` lists the column slice of each target; ``fold_mean[K, k_all]`` is
    each outer fold's training mean (the reference prediction)."""
    b, T = mask.shape
    sample_idx, pos_idx = np.nonzero(mask)
    pred = predict_rows(acts[mask], fold[sample_idx], coef, intercept, x_shift)
    true = y[mask].astype(np.float64)
    err_all = (pred - true) ** 2
    err0 = (fold_mean[fold[sample_idx]] - true) ** 2
    norms = lambda a: np.sqrt(np.add.reduceat(a * a, starts, axis=1))  # noqa: E731
    starts = [c.start for c in cols]
    dot = np.add.reduceat(pred * true, starts, axis=1)  # [rows, n_targets]
    nrm = norms(pred) * norms(true)
    cos = np.divide(dot, nrm, out=np.zeros_like(dot), where=nrm > 0)
    sse = np.add.reduceat(err_all, starts, axis=1)
    sse0 = np.add.reduceat(err0, starts, axis=1)
    ones = np.ones(len(sample_idx))
    S = _segment_sum(sample_idx, b, np.concatenate([sse, cos, true, true**2, ones[:, None], sse0], axis=1))
    P = _segment_sum(pos_idx, T, np.concatenate([sse, true, true**2, ones[:, None]], axis=1))
    n_t, k_all = len(cols), true.shape[1]
    out = []
    for i, c in enumerate(cols):
        sy, syy = (slice(2 * n_t + c.start, 2 * n_t + c.stop), slice(2 * n_t + k_all + c.start, 2 * n_t + k_all + c.stop))
        psy, psyy = (slice(n_t + c.start, n_t + c.stop), slice(n_t + k_all + c.start, n_t + k_all + c.stop))
        out.append(HeldOut(sse=S[:, i], sse0=S[:, -n_t + i], sy=S[:, sy], syy=S[:, syy], rows=S[:, -n_t - 1],
                           cos=S[:, n_t + i],
                           pos_sse=P[:, i], pos_sy=P[:, psy], pos_syy=P[:, psyy], pos_rows=P[:, -1]))
    return out


def _segment_sum(index: np.ndarray, size: int, values: np.ndarray) -> np.ndarray:
    """``out[i] = values[index == i].sum(0)`` for i < size: one sparse indicator product."""
    from scipy.sparse import csr_matrix

    indicator = csr_matrix((np.ones(len(index)), (index, np.arange(len(index)))), shape=(size, len(index)))
    return np.asarray(indicator @ values)


def concat(parts: list[HeldOut]) -> HeldOut:
    """Join blocks: per-sample arrays concatenate (blocks in sample order), per-position ones add."""
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    add = lambda name: np.sum([getattr(p, name) for p in parts], axis=0)  # noqa: E731
    return HeldOut(cat("sse"), cat("sse0"), cat("sy"), cat("syy"), cat("rows"), cat("cos"),
                   add("pos_sse"), add("pos_sy"), add("pos_syy"), add("pos_rows"))


def _r2(sse, sy, syy, rows):
    """R² from sums (last axis of sy/syy = target dims), about the mean of those rows."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sst = (syy - sy**2 / rows[..., None]).sum(-1)
        return np.where(sst > 0, 1.0 - sse / sst, np.nan)


def _oos_r2(sse, sse0):
    """Out-of-sample R², ``1 - SSE / SSE_0`` (NaN where the reference error is 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sse0 > 0, 1.0 - sse / sse0, np.nan)


def pooled_r2(h: HeldOut) -> float:
    return float(_oos_r2(h.sse.sum(), h.sse0.sum()))


def mean_cosine(h: HeldOut) -> float:
    return float(h.cos.sum() / h.rows.sum())


def r2_by_position(h: HeldOut) -> np.ndarray:
    """R² at each position ``[T]`` (NaN where the target is undefined or constant)."""
    return _r2(h.pos_sse, h.pos_sy, h.pos_syy, h.pos_rows)


def bootstrap_weights(n_samples: int, n_boot: int, seed: int) -> np.ndarray:
    """Multinomial resampling counts ``[n_boot, n_samples]`` (shared by every layer and target,
    so comparisons between them are paired)."""
    rng = np.random.default_rng([seed, 2])
    return rng.multinomial(n_samples, np.full(n_samples, 1.0 / n_samples), size=n_boot).astype(np.float64)


def bootstrap_r2_ci(h: HeldOut, weights: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the pooled R² over bootstrap resamples of samples."""
    used = h.rows > 0
    w = weights[:, used]
    r2 = _oos_r2(w @ h.sse[used], w @ h.sse0[used])
    r2 = r2[np.isfinite(r2)]
    if r2.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(r2, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
