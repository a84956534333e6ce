"""Both passes of the ridge probe over one (condition, site, layer, mask group): pass 1 sums
per-fold statistics over the layer's blocks and cross-validates; pass 2 scores every row with
its outer fold's model. Each pass is a map over blocks run by an executor."""

from __future__ import annotations

import numpy as np

from probekit.errors import UsageError
from probekit.probes import scoring
from probekit.probes.blocks import accumulate_block, add_block_stats, read, score_block
from probekit.probes.ridge import FoldStats, cross_validate


def column_slices(ks: list[int]) -> list[slice]:
    """The columns of each target when targets of ``ks`` dims are concatenated."""
    starts = np.cumsum([0] + list(ks[:-1]))
    return [slice(int(a), int(a + k)) for a, k in zip(starts, ks)]


def _sample_block(job: tuple) -> int:
    """Where a block job runs on a cluster: by its first sample, so both passes (and every
    shuffled baseline) of a block run where its chunk was read and its targets were sent."""
    return job[2]


def _first_sample(block: tuple[int, int]) -> int:
    return block[0]


def probe_layer(executor, src, layer, blocks, mask, y, folds, ks, cols, settings, score=True):
    """Both passes for one (condition, site, layer, mask group); ``score=False`` skips pass 2.
    Returns ``(cross-validation result, held-out sums per target or None, per-position results)``."""
    first = next((b for b in blocks if mask[b[0]:b[1]].any()), None)
    if first is None:
        raise UsageError("targets have no defined positions to probe")
    s0, s1 = first  # the shift only needs to be common to all blocks, not exact
    shift = (read(src, layer, s0, s1)[mask[s0:s1]].astype(np.float64).mean(0),
             y[s0:s1][mask[s0:s1]].astype(np.float64).mean(0))
    ys = executor.pieces(y, blocks, place=_first_sample)  # on a cluster: sent once, for every layer and pass
    total = executor.map_reduce(accumulate_block, [
        (src, layer, a, b, mask[a:b], yb, folds[a:b], settings.n_folds, shift, settings.per_pos, settings.device)
        for (a, b), yb in zip(blocks, ys)], add_block_stats, place=_sample_block)
    col_groups = np.repeat(np.arange(len(ks)), ks)
    stats = FoldStats.from_numpy(total["pooled"], settings.device)
    res = cross_validate(stats, col_groups=col_groups, rel_alphas=settings.rel_alphas,
                         null_model=settings.null_model)
    per_pos = _per_position(total, mask, col_groups, settings) if settings.per_pos else None
    if not score:
        return res, None, per_pos
    held = executor.map(score_block, [
        (src, layer, a, b, mask[a:b], yb, folds[a:b], res.fold_coef, res.fold_intercept, res.x_shift, cols,
         res.fold_mean) for (a, b), yb in zip(blocks, ys)], place=_sample_block)
    return res, [scoring.concat([h[i] for h in held]) for i in range(len(cols))], per_pos


def _per_position(total: dict, mask, col_groups, settings) -> list:
    """A probe cross-validated at each position (None where a fold has no rows there)."""
    per_pos = []
    for t in range(mask.shape[1]):
        st = FoldStats.from_numpy(total["per_pos"][t], settings.device)
        ok = float(st.n.min()) > 0 and int(st.n.sum()) > settings.n_folds
        per_pos.append(cross_validate(st, col_groups=col_groups, rel_alphas=settings.rel_alphas,
                                      null_model=settings.null_model) if ok else None)
    return per_pos
