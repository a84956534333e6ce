"""Probe every (site, layer) of a store for every target of a hypothesis.

Conditions, each probed the same way (nested, sample-grouped CV ridge):

* ``model``: the cached model's activations against the hypothesis' targets;
* ``shuffled``: the same activations against targets permuted across samples
  (position kept), ``n_perm`` permutations at once. Each is fitted and cross-validated
  like the real targets, so the reported band (quantiles over permutations) is a null
  distribution that includes the fit's own variability -- the floor any real signal
  must clear. Permutations keep every probed row defined (see ``permuted_targets``), so all of them share
  the real targets' rows and Gram matrix and cost only extra target columns;
* ``random_init``: a random-initialised model of the same architecture, when the
  store holds one (``probekit cache --random-init``).

Per (condition, site, layer), pass 1 accumulates per-fold sufficient statistics one
(sample block, layer) chunk at a time; targets that share a mask share them. Pass 2
predicts every row with its outer fold's model and keeps per-sample and per-position
sums (``probekit.probes.scoring``): bootstrap CIs over samples, R² by position, cosine. Both
passes are maps over blocks followed by a sum, so they run serially or on a dask
cluster (``executor``) with the same result. Memory: one chunk plus O(folds·d²).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Callable

import numpy as np

import probekit
from probekit.store import schema
from probekit.probes import scoring
from probekit.errors import StoreError, UnknownNameError, UsageError
from probekit.targets.hypothesis import MASK_SUFFIX, TYPES_SUFFIX, target_names
from probekit.probes.ridge import DEFAULT_REL_ALPHAS, FoldStats, cross_validate, grouped_folds, sum_stats
from probekit.plugin.registry import construct
from probekit.store.zarr_store import Store

CONDITIONS = ("model", "shuffled", "random_init")  # in this order, those the store supports
METRICS = ("r2", "r2_lo", "r2_hi", "mse", "cosine", "alpha", "n_rows",
           "accuracy", "acc_lo", "acc_hi", "control_accuracy", "selectivity")  # the last five: categorical


@dataclass
class ProbeSettings:
    n_folds: int = 5
    seed: int = 0
    rel_alphas: tuple[float, ...] = tuple(float(a) for a in DEFAULT_REL_ALPHAS)
    null_model: bool = True  # alpha = inf (predict the training mean) is a candidate too: noise scores R² = 0
    sites: tuple[str, ...] | None = None  # default: every cached site
    targets: tuple[str, ...] | None = None  # default: every target of the hypothesis
    baselines: bool = True
    n_boot: int = 1000  # bootstrap resamples of samples for the R² CI (0: no CI)
    n_perm: int = 20  # target permutations forming the shuffled baseline's null band
    n_perm_categorical: int = 5  # permutations for categorical targets (each costs K logistic fits)
    logistic_C: float = 1.0  # inverse L2 strength of logistic probes (scikit-learn's C)
    ci_level: float = 0.95
    per_pos: bool = False  # also fit a separate probe at every position
    device: str = "cpu"
    options: dict = field(default_factory=dict)  # hypothesis options

    def __post_init__(self):
        checks = [(self.n_folds >= 3, f"folds must be >= 3, got {self.n_folds} (nested CV: alpha is chosen by an "
                                      "inner CV over the other folds)"),
                  (self.n_boot >= 0, f"n_boot must be >= 0, got {self.n_boot}"),
                  (self.n_perm >= 1, f"n_perm must be >= 1, got {self.n_perm}"),
                  (self.n_perm_categorical >= 1, f"n_perm_categorical must be >= 1, got {self.n_perm_categorical}"),
                  (0 < self.ci_level < 1, f"ci_level must be in (0, 1), got {self.ci_level}"),
                  (self.logistic_C > 0, f"logistic_C must be > 0, got {self.logistic_C}"),
                  (len(self.rel_alphas) > 0 and min(self.rel_alphas) > 0, "rel_alphas must be positive")]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


class SerialExecutor:
    """Runs block jobs in this process."""

    def map(self, fn: Callable, jobs: list[tuple]) -> list:
        return [fn(*job) for job in jobs]

    def map_reduce(self, fn: Callable, jobs: list[tuple], reduce: Callable):
        """``reduce`` the results as they come: one block's result is held at a time."""
        total = None
        for job in jobs:
            part = fn(*job)
            total = part if total is None else reduce(total, part)
        return total


class DaskExecutor:
    """Runs block jobs on a dask.distributed cluster; each worker reads its own chunks."""

    def __init__(self, client):
        self.client = client

    def map(self, fn: Callable, jobs: list[tuple]) -> list:
        futures = [self.client.submit(fn, *job, pure=False) for job in jobs]
        return self.client.gather(futures)

    def map_reduce(self, fn: Callable, jobs: list[tuple], reduce: Callable):
        """Results are fetched and reduced as they complete (any order: the reduction is a sum)."""
        from dask.distributed import as_completed

        total = None
        for future in as_completed([self.client.submit(fn, *job, pure=False) for job in jobs]):
            part = future.result()
            future.release()
            total = part if total is None else reduce(total, part)
        return total


class CheckpointView:
    """One checkpoint of a ``(checkpoint, sample, layer, ...)`` array, indexed like a plain
    ``(sample, layer, ...)`` one: the probing engine runs on it unchanged."""

    def __init__(self, arr, checkpoint: int):
        self.arr, self.checkpoint = arr, checkpoint
        self.shape, self.chunks, self.dtype = arr.shape[1:], arr.chunks[1:], arr.dtype

    def __getitem__(self, key):
        return self.arr[(self.checkpoint, *(key if isinstance(key, tuple) else (key,)))]


def _view(arr, checkpoint: int | None):
    return arr if checkpoint is None else CheckpointView(arr, checkpoint)


@lru_cache(maxsize=64)
def _array(path: str, group: str | None, site: str, version: int, checkpoint: int | None = None):
    """Open one activation array (cached per process; ``version`` is its metadata's mtime,
    so a rewritten store is never read through a stale handle), or one checkpoint of it."""
    return _view(Store(path).array(site, group), checkpoint)


def _source(store: Store, group: str | None, site: str, checkpoint: int | None = None) -> tuple:
    meta = store.path / (group or "") / site / "zarr.json"
    return (str(store.path), group, site, meta.stat().st_mtime_ns, checkpoint)


def _read(src: tuple, layer: int, s0: int, s1: int) -> np.ndarray:
    """One chunk: activations ``[s1 - s0, pos, feature]`` of one layer, as float32. A chunk zarr
    cannot decode (crc32c mismatch, truncated) is a :class:`StoreError` naming it."""
    arr = _array(*src)
    try:
        return np.asarray(arr[s0:s1, layer], dtype=np.float32)
    except (ValueError, RuntimeError, OSError, TypeError) as exc:
        from probekit.store.integrity import read_error

        raise read_error(arr, layer, s0, s1, exc) from exc


def accumulate_block(src, layer, s0, s1, mask, y, fold, n_folds, shift, per_pos, device="cpu") -> dict:
    """Pass 1 on one block: fold statistics (pooled, and per position if asked) as numpy."""
    acts = _read(src, layer, s0, s1)
    F, k = acts.shape[-1], y.shape[-1]
    pooled = FoldStats(n_folds, F, k, device=device).set_shift(*shift)
    order = np.argsort(fold, kind="stable")  # samples by fold: the probed rows arrive sorted, one copy
    i, pos = np.nonzero(mask[order])
    rows = order[i]
    pooled.add(acts[rows, pos], y[rows, pos], fold[rows])
    out = {"pooled": pooled.to_numpy()}
    if per_pos:
        out["per_pos"] = []
        for t in range(mask.shape[1]):
            st = FoldStats(n_folds, F, k, device=device).set_shift(*shift)
            m = mask[:, t]
            st.add(acts[m, t], y[m, t], fold[m])
            out["per_pos"].append(st.to_numpy())
    return out


def score_block(src, layer, s0, s1, mask, y, fold, coef, intercept, x_shift, cols, fold_mean) -> list:
    """Pass 2 on one block: held-out sums per target (``probekit.probes.scoring.HeldOut``)."""
    return scoring.block_held_out(_read(src, layer, s0, s1), mask, y, fold, coef, intercept, x_shift, cols,
                                  fold_mean)


def _mask_groups(tds, names):
    """Group target names by identical masks: [(mask, [names])]."""
    groups: list[tuple[np.ndarray, list[str]]] = []
    for name in names:
        mask = np.asarray(tds[name + MASK_SUFFIX].values)
        for m, members in groups:
            if np.array_equal(m, mask):
                members.append(name)
                break
        else:
            groups.append((mask, [name]))
    return groups


def run_probe(host, store_path, hypothesis: str, settings: ProbeSettings | None = None, *,
              executor=None, on_progress: Callable[[str, int, int], None] | None = None, write: bool = True):
    """Probe a store for ``hypothesis``; write and return ``(results Dataset, group key)``.
    With ``write=False`` nothing is written (the key is None): the caller writes the results
    with :func:`save_results` once everything else it does has succeeded."""
    settings = settings or ProbeSettings()
    executor = executor or SerialExecutor()
    store = Store.open(store_path)
    if not store.is_complete():
        raise StoreError(
            f"{store.path} is incomplete ({len(store.blocks_done())} blocks cached); "
            "rerun the same probekit cache command to resume it"
        )
    store.check_chunks()  # a missing chunk would read as zeros
    ds = store.dataset()
    schema.assert_valid_store(ds, str(store.path))
    hyp = construct("hypothesis", hypothesis, host.hypotheses.get(hypothesis), settings.options)
    tds = hyp.targets(ds)
    names = target_names(tds)
    if "valid" in ds:  # padded positions of text stores are never probed
        valid = np.asarray(ds["valid"].values, dtype=bool)
        for name in names:
            tds[name + MASK_SUFFIX] = tds[name + MASK_SUFFIX] & valid
    if settings.targets:
        for t in settings.targets:
            if t not in names:
                raise UnknownNameError("target", t, names)
        names = [n for n in names if n in settings.targets]
    probeable = [s for s in ds.attrs["sites"] if s in schema.activation_sites(ds)]  # one vector per position
    if settings.sites:  # TransformerLens hook names name their whole site
        from probekit.models.sites import canonical_sites

        sizes = {s: ds[s].sizes.get(schema.LAYER, ds[s].sizes.get(schema.BLOCK)) for s in probeable}
        sites = list(canonical_sites(settings.sites, sizes)[0])
    else:
        sites = probeable
    for s in sites:
        if s not in probeable:
            raise UnknownNameError("site", s, probeable)

    n, T = ds.sizes[schema.SAMPLE], ds.sizes[schema.POS]
    folds = grouped_folds(n, settings.n_folds, settings.seed)
    conditions = ["model"]
    if settings.baselines:
        conditions.append("shuffled")
        if store.is_complete(schema.RANDOM_INIT_GROUP):
            store.check_chunks(schema.RANDOM_INIT_GROUP)
            conditions.append("random_init")
    weights = scoring.bootstrap_weights(n, settings.n_boot, settings.seed) if settings.n_boot else None

    offset = {s: schema.layer_offset(ds[s].dims) for s in sites}  # block l of attn_out sits at layer l
    ckpts = list(range(ds.sizes[schema.CHECKPOINT])) if schema.CHECKPOINT in ds.dims else [None]
    n_stored = {s: _view(store.array(s), ckpts[0]).shape[1] for s in sites}  # layers (or blocks) in the array
    n_layers = max(n_stored[s] + offset[s] for s in sites)
    categorical = [nm for nm in names if tds[nm].attrs.get("kind") == "categorical"]
    groups = _mask_groups(tds, [nm for nm in names if nm not in categorical])
    values = {name: np.asarray(tds[name].values) for name in names if name not in categorical}
    total = len(ckpts) * len(conditions) * sum(n_stored.values())
    done = 0
    parts = []
    for kc in ckpts:  # a checkpoint store: the same engine on each checkpoint's activations in turn
        shape = (len(conditions), len(sites), n_layers, len(names))
        out = {m: np.full(shape, np.nan) for m in METRICS}
        r2_pos = np.full(shape + (T,), np.nan)
        r2_per_pos = np.full(shape + (T,), np.nan) if settings.per_pos else None
        where = "" if kc is None else f"step {int(ds[schema.CHECKPOINT].values[kc])} · "
        for ci, cond in enumerate(conditions):
            shuffled_cache: dict = {}  # permuted targets, shared by every site and layer of this condition
            group = schema.RANDOM_INIT_GROUP if cond == "random_init" else None
            for si, site in enumerate(sites):
                arr = _view(store.array(site, group), None if group else kc)
                src = _source(store, group, site, None if group else kc)
                blocks = [(s0, min(n, s0 + arr.chunks[0])) for s0 in range(0, n, arr.chunks[0])]
                for stored in range(arr.shape[1]):
                    layer = stored + offset[site]  # index in the results; `stored` indexes the array
                    for gi, (mask, members) in enumerate(groups):
                        ks = [values[name].shape[-1] for name in members]
                        if cond == "shuffled":
                            _shuffled_layer(out, (ci, si, layer), executor, src, stored, blocks, mask, members,
                                            values, names, folds, settings, seed=[settings.seed, 1, gi],
                                            cache=shuffled_cache)
                            continue
                        y = np.concatenate([values[name] for name in members], axis=-1)
                        cols = _slices(ks)
                        res, held, per_pos = _probe_layer(executor, src, stored, blocks, mask, y, folds, ks, cols,
                                                          settings)
                        for name, c, h in zip(members, cols, held):
                            idx = (ci, si, layer, names.index(name))
                            out["r2"][idx] = res.r2(c)
                            out["mse"][idx] = res.mse(c)
                            out["alpha"][idx] = float(np.median(res.alpha[c]))
                            out["n_rows"][idx] = h.rows.sum()
                            out["cosine"][idx] = scoring.mean_cosine(h)
                            if weights is not None:
                                out["r2_lo"][idx], out["r2_hi"][idx] = scoring.bootstrap_r2_ci(h, weights,
                                                                                                settings.ci_level)
                            r2_pos[idx] = scoring.r2_by_position(h)
                            if per_pos is not None:
                                r2_per_pos[idx] = [r.r2(c) if r is not None else np.nan for r in per_pos]
                    for name in categorical:
                        _categorical_layer(out, (ci, si, layer, names.index(name)), cond, arr, stored, tds, name,
                                           folds, settings, seed=[settings.seed, 3, names.index(name)])
                    done += 1
                    if on_progress:
                        on_progress(f"{where}{cond} {site}", done, total)
        parts.append(_results_dataset(out, r2_pos, r2_per_pos, conditions, sites, n_layers, names, tds, values, T,
                                      hypothesis, hyp, store, settings))
    results = parts[0] if ckpts[0] is None else _stack_checkpoints(parts, ds)
    if not write:
        return results, None
    return results, save_results(store, results, hypothesis, settings)


def save_results(store: Store, results, hypothesis: str, settings: ProbeSettings) -> str:
    """Write ``results`` into ``store`` under a new ``probes/<hypothesis>/<id>``; returns the key."""
    key = store.write_results(results, hypothesis, _run_id(hypothesis, settings))
    results.attrs["key"] = key
    return key


def _slices(ks: list[int]) -> list[slice]:
    starts = np.cumsum([0] + list(ks[:-1]))
    return [slice(int(a), int(a + k)) for a, k in zip(starts, ks)]


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


def _categorical_layer(out, idx, cond, arr, layer, tds, name, folds, settings, seed):
    """Logistic probes for one categorical target: held-out accuracy (a band over permutations
    for the shuffled condition) and, where types are given, control accuracy and selectivity."""
    from probekit.probes import logistic as categorical
    mask = np.asarray(tds[name + MASK_SUFFIX].values)
    labels = np.asarray(tds[name].values)[..., 0]
    X = categorical.gather_rows(arr, layer, mask)
    row_fold = folds[np.nonzero(mask)[0]]
    acc = lambda y: categorical.cv_accuracy(X, y, row_fold, settings.n_folds, C=settings.logistic_C,  # noqa: E731
                                            device=settings.device)
    out["n_rows"][idx] = len(X)
    if cond == "shuffled":
        draws = [acc(v[mask]) for v in permuted_targets(labels, mask, settings.n_perm_categorical, seed)]
        out["accuracy"][idx] = np.mean(draws)
        out["acc_lo"][idx], out["acc_hi"][idx] = min(draws), max(draws)
        return
    out["accuracy"][idx] = acc(labels[mask])
    if name + TYPES_SUFFIX in tds:
        control = categorical.control_labels(np.asarray(tds[name + TYPES_SUFFIX].values), labels, mask, seed)
        out["control_accuracy"][idx] = acc(control[mask])
        out["selectivity"][idx] = out["accuracy"][idx] - out["control_accuracy"][idx]


def _shuffled_layer(out, at, executor, src, layer, blocks, mask, members, values, names, folds, settings, seed,
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
    res = _probe_layer(executor, src, layer, blocks, mask, y, folds, ks * len(perms), _slices(ks * len(perms)),
                       replace(settings, per_pos=False), score=False)[0]
    cols = _slices(ks * len(perms))
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


def _probe_layer(executor, src, layer, blocks, mask, y, folds, ks, cols, settings, score=True):
    """Both passes for one (condition, site, layer, mask group); ``score=False`` skips pass 2."""
    first = next((b for b in blocks if mask[b[0]:b[1]].any()), None)
    if first is None:
        raise UsageError("targets have no defined positions to probe")
    s0, s1 = first  # the shift only needs to be common to all blocks, not exact
    shift = (_read(src, layer, s0, s1)[mask[s0:s1]].astype(np.float64).mean(0),
             y[s0:s1][mask[s0:s1]].astype(np.float64).mean(0))
    total = executor.map_reduce(accumulate_block, [
        (src, layer, a, b, mask[a:b], y[a:b], folds[a:b], settings.n_folds, shift, settings.per_pos, settings.device)
        for a, b in blocks], _add_block_stats)
    col_groups = np.repeat(np.arange(len(ks)), ks)
    stats = FoldStats.from_numpy(total["pooled"], settings.device)
    res = cross_validate(stats, col_groups=col_groups, rel_alphas=settings.rel_alphas,
                         null_model=settings.null_model)
    per_pos = None
    if settings.per_pos:
        per_pos = []
        for t in range(mask.shape[1]):
            st = FoldStats.from_numpy(total["per_pos"][t], settings.device)
            ok = float(st.n.min()) > 0 and int(st.n.sum()) > settings.n_folds
            per_pos.append(cross_validate(st, col_groups=col_groups, rel_alphas=settings.rel_alphas,
                                          null_model=settings.null_model) if ok else None)
    if not score:
        return res, None, per_pos
    held = executor.map(score_block, [
        (src, layer, a, b, mask[a:b], y[a:b], folds[a:b], res.fold_coef, res.fold_intercept, res.x_shift, cols,
         res.fold_mean) for a, b in blocks])
    return res, [scoring.concat([h[i] for h in held]) for i in range(len(cols))], per_pos


def _add_block_stats(a: dict, b: dict) -> dict:
    a["pooled"] = sum_stats(a["pooled"], b["pooled"])
    if "per_pos" in a:
        a["per_pos"] = [sum_stats(x, y) for x, y in zip(a["per_pos"], b["per_pos"])]
    return a


def _results_dataset(out, r2_pos, r2_per_pos, conditions, sites, n_layers, names, tds, values, T,
                     hypothesis, hyp, store, settings):
    import xarray as xr

    dims = ("condition", "site", schema.LAYER, "target")
    data = {m: (dims, out[m]) for m in METRICS}
    data["r2_pos"] = (dims + (schema.POS,), r2_pos, {"description": "held-out R² of the pooled probe at each position"})
    if r2_per_pos is not None:
        data["r2_per_pos"] = (dims + (schema.POS,), r2_per_pos, {"description": "R² of a probe fit per position"})
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: continuous vs categorical
        lo = out["r2_lo"][0]
        hi_base = np.nanmax(out["r2_hi"][1:], axis=0) if len(conditions) > 1 else np.full_like(lo, -np.inf)
        acc_base = (np.nanmax(np.stack([out["acc_hi"][1:], out["accuracy"][1:]]), axis=(0, 1))
                    if len(conditions) > 1 else np.full_like(lo, -np.inf))
    data["overlaps_baseline"] = (dims[1:], np.asarray((lo <= hi_base) | (out["accuracy"][0] <= acc_base)),
                                 {"description": "the model's R² CI (or accuracy) reaches a baseline's interval"})
    expected = [tds[nm].attrs.get("expected_layer", -1) for nm in names]
    return xr.Dataset(
        data,
        coords={
            "condition": conditions,
            "site": sites,
            schema.LAYER: np.arange(n_layers),
            schema.POS: np.arange(T),
            "target": names,
            "expected_layer": ("target", np.asarray(expected, dtype=np.int64)),
            "description": ("target", [tds[nm].attrs["description"] for nm in names]),
            "target_dims": ("target", [int(tds[nm].shape[-1]) for nm in names]),
            "kind": ("target", [tds[nm].attrs.get("kind", "continuous") for nm in names]),
        },
        attrs={
            "hypothesis": hypothesis,
            "hypothesis_options": json.dumps(hyp.options),
            "store": str(store.path),
            "probe": "ridge, nested sample-grouped CV (alpha chosen inside each training set, inf = intercept "
                     "only); out-of-sample R² (reference: each outer fold's training mean) pooled over held-out "
                     "folds, variance-weighted over target dims; model CI: percentile bootstrap over "
                     "samples (fits held fixed); shuffled: mean and quantile band over n_perm refitted permutations",
            "settings": json.dumps({k: v for k, v in asdict(settings).items() if k != "options"}),
            "probekit_version": probekit.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )


def _stack_checkpoints(parts: list, ds):
    """Per-checkpoint results along a new leading ``checkpoint`` dim (training steps, with paths)."""
    import xarray as xr

    steps = np.asarray(ds[schema.CHECKPOINT].values, dtype=np.int64)
    paths = [str(p) for p in ds[schema.CHECKPOINT_PATH].values]
    stacked = xr.concat(parts, dim=schema.CHECKPOINT, data_vars="all", coords="minimal", compat="override",
                        combine_attrs="override", join="exact")
    return stacked.assign_coords({schema.CHECKPOINT: steps, schema.CHECKPOINT_PATH: (schema.CHECKPOINT, paths)})


def _run_id(hypothesis: str, settings: ProbeSettings) -> str:
    blob = json.dumps([hypothesis, asdict(settings)], sort_keys=True, default=str).encode()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{hashlib.sha1(blob).hexdigest()[:8]}"


def dask_executor(scheduler: str | None = None, workers: int = 2):
    """A context manager yielding a :class:`DaskExecutor` on ``scheduler`` (an address), or on a
    new local cluster of ``workers`` single-threaded processes."""
    import contextlib

    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("the dask path needs dask.distributed: pip install 'probekit-lab[dask]'") from None

    @contextlib.contextmanager
    def _ctx():
        if scheduler:
            with Client(scheduler) as client:
                yield DaskExecutor(client)
        else:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                yield DaskExecutor(client)

    return _ctx()
