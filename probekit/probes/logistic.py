"""Categorical targets: sample-grouped CV of logistic probes, control tasks and selectivity.

For a categorical target (integer class per position) each (site, layer) gets a
:class:`probekit.probes.estimators.LogisticProbe` per outer fold (folds grouped by sample, as for
ridge) and reports pooled held-out accuracy. When the hypothesis gives each position a
*type* (e.g. the input token there), a **control task** (Hewitt & Liang 2019) assigns each
type a fixed random label drawn from the target's own label distribution; the same probe on
the same activations is scored on it, and **selectivity** = accuracy - control accuracy
says how much of the accuracy needs more than memorising types.

Logistic probes hold the masked rows of one layer in memory (rows x features, float32);
the ridge path streams instead.
"""

from __future__ import annotations

import numpy as np


def gather_rows(arr, layer: int, mask: np.ndarray) -> np.ndarray:
    """Activations ``[rows, F]`` of one layer at the positions where ``mask`` holds, read chunk by chunk."""
    block = arr.chunks[0]
    parts = []
    for s0 in range(0, arr.shape[0], block):
        m = mask[s0 : s0 + block]
        if m.any():
            try:
                parts.append(np.asarray(arr[s0 : s0 + block, layer], dtype=np.float32)[m])
            except (ValueError, RuntimeError, OSError, TypeError) as exc:  # crc32c mismatch, truncated chunk
                from probekit.store.integrity import read_error

                raise read_error(arr, layer, s0, min(arr.shape[0], s0 + block), exc) from exc
    return np.concatenate(parts) if parts else np.zeros((0, arr.shape[-1]), np.float32)


def cv_accuracy(X: np.ndarray, y: np.ndarray, row_fold: np.ndarray, n_folds: int, *, C: float = 1.0,
                max_iter: int = 100, device: str = "cpu") -> float:
    """Pooled held-out accuracy of logistic probes fitted with each fold held out in turn
    (features standardised on each training set)."""
    from probekit.probes.estimators import LogisticProbe

    correct = 0
    for j in range(n_folds):
        train, test = row_fold != j, row_fold == j
        if not test.any():
            continue
        if len(np.unique(y[train])) < 2:  # one class: predict it
            correct += int((y[test] == y[train][0]).sum())
            continue
        # standardise on the training rows, so C means the same whatever the activations' scale
        mu, sd = X[train].mean(0), X[train].std(0) + 1e-8
        probe = LogisticProbe(C=C, max_iter=max_iter, device=device).fit((X[train] - mu) / sd, y[train])
        correct += int((probe.predict((X[test] - mu) / sd) == y[test]).sum())
    return correct / len(y)


def control_labels(types: np.ndarray, labels: np.ndarray, mask: np.ndarray, seed) -> np.ndarray:
    """Hewitt-Liang control task: every type gets one random label, drawn from the empirical
    distribution of ``labels`` at masked positions. Returns labels shaped like ``types``."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels[mask], return_counts=True)
    kinds = np.unique(types[mask])
    assignment = dict(zip(kinds.tolist(), rng.choice(classes, size=len(kinds), p=counts / counts.sum()).tolist()))
    out = np.zeros_like(labels)
    out[mask] = [assignment[t] for t in types[mask].tolist()]
    return out


def categorical_layer(out, idx, cond, arr, layer, tds, name, folds, settings, seed):
    """Logistic probes for one categorical target: held-out accuracy (a band over permutations
    for the shuffled condition) and, where types are given, control accuracy and selectivity."""
    from probekit.probes.baselines import permuted_targets
    from probekit.targets.hypothesis import MASK_SUFFIX, TYPES_SUFFIX

    mask = np.asarray(tds[name + MASK_SUFFIX].values)
    labels = np.asarray(tds[name].values)[..., 0]
    X = gather_rows(arr, layer, mask)
    row_fold = folds[np.nonzero(mask)[0]]
    acc = lambda y: cv_accuracy(X, y, row_fold, settings.n_folds, C=settings.logistic_C,  # noqa: E731
                                device=settings.device)
    out["n_rows"][idx] = len(X)
    if cond == "shuffled":
        draws = [acc(v[mask]) for v in permuted_targets(labels, mask, settings.n_perm_categorical, seed)]
        out["accuracy"][idx] = np.mean(draws)
        out["acc_lo"][idx], out["acc_hi"][idx] = min(draws), max(draws)
        return
    out["accuracy"][idx] = acc(labels[mask])
    if name + TYPES_SUFFIX in tds:
        control = control_labels(np.asarray(tds[name + TYPES_SUFFIX].values), labels, mask, seed)
        out["control_accuracy"][idx] = acc(control[mask])
        out["selectivity"][idx] = out["accuracy"][idx] - out["control_accuracy"][idx]
