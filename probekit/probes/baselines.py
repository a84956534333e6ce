"""The shuffled-targets baseline: targets permuted across samples (position kept, the probed
rows unchanged), each permutation fitted and cross-validated like the real targets, so the
reported band is a null distribution that includes the fit's own variability."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from probekit.probes.passes import column_slices, probe_layer


def stratified_permutations(mask: np.ndarray, n_perm: int, seed) -> list[np.ndarray]:
    """``n_perm`` permutations of samples that only swap samples with identical mask rows,
    so ``mask[perm] == mask`` and every permutation probes the same rows."""
    rng = np.random.default_rng(seed)
    _, stratum = np.unique(mask.reshape(len(mask), -1), axis=0, return_inverse=True)
    perms = []
    for _ in range(n_perm):
        perm = np.arange(len(mask))
        for s in np.unique(stratum):
            idx = np.flatnonzero(stratum == s)
            perm[idx] = rng.permutation(idx)
        perms.append(perm)
    return perms


def permuted_targets(values: np.ndarray, mask: np.ndarray, n_perm: int, seed) -> list[np.ndarray]:
    """``n_perm`` copies of ``values[sample, pos, ...]`` permuted across samples, position kept and
    the rows probed unchanged (defined rows receive defined values).

    Usually whole samples are swapped among those with identical masks
    (:func:`stratified_permutations`), which keeps each target's trajectory intact. When masks
    are mostly unique (e.g. a target defined only where a token repeats), that would leave most
    samples in place and the "baseline" would equal the model; then values are permuted
    separately at each position among the samples defined there.
    """
    n = len(mask)
    _, stratum, counts = np.unique(mask.reshape(n, -1), axis=0, return_inverse=True, return_counts=True)
    if (counts[np.ravel(stratum)] == 1).mean() <= 0.1:
        return [values[p] for p in stratified_permutations(mask, n_perm, seed)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_perm):
        v = values.copy()
        for t in range(mask.shape[1]):
            idx = np.flatnonzero(mask[:, t])
            v[idx, t] = values[rng.permutation(idx), t]
        out.append(v)
    return out


def shuffled_layer(out, at, executor, src, layer, blocks, mask, members, values, names, folds, settings, seed,
                   cache=None):
    """The permutation baseline for one mask group: every permutation's targets are extra
    columns of one accumulation; R² is reported as the mean and quantile band over permutations.
    The permuted targets depend on the seed only, so ``cache`` (a dict) keeps them across layers."""
    perms = range(settings.n_perm)
    ks = [values[name].shape[-1] for name in members]
    key = (tuple(np.ravel(seed)), tuple(members))
    y = None if cache is None else cache.get(key)
    if y is None:
        shuffled = {name: permuted_targets(values[name], mask, settings.n_perm, seed) for name in members}
        y = np.concatenate([shuffled[name][p] for p in perms for name in members], axis=-1)
        if cache is not None:
            cache[key] = y
    res = probe_layer(executor, src, layer, blocks, mask, y, folds, ks * len(perms),
                      column_slices(ks * len(perms)), replace(settings, per_pos=False), score=False)[0]
    cols = column_slices(ks * len(perms))
    q = ((1 - settings.ci_level) / 2, (1 + settings.ci_level) / 2)
    for j, name in enumerate(members):
        per = [cols[p * len(members) + j] for p in range(len(perms))]
        r2 = np.array([res.r2(c) for c in per])
        idx = at + (names.index(name),)
        out["r2"][idx] = r2.mean()
        out["r2_lo"][idx], out["r2_hi"][idx] = np.quantile(r2, q)
        out["mse"][idx] = np.mean([res.mse(c) for c in per])
        out["alpha"][idx] = float(np.median(np.concatenate([res.alpha[c] for c in per])))
        out["n_rows"][idx] = res.n
