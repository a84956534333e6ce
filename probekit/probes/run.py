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

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from probekit.errors import StoreError, UnknownNameError, UsageError
from probekit.plugin.registry import construct
from probekit.probes import scoring
from probekit.probes.baselines import shuffled_layer
from probekit.probes.blocks import READ_CACHE, source, view
from probekit.executors import SerialExecutor
from probekit.probes.logistic import categorical_layer
from probekit.probes.passes import column_slices, probe_layer
from probekit.probes.results import METRICS, empty_metrics, results_dataset, stack_checkpoints
from probekit.probes.ridge import DEFAULT_REL_ALPHAS, grouped_folds
from probekit.store import schema
from probekit.store.ids import run_id
from probekit.store.zarr_store import Store
from probekit.targets.hypothesis import MASK_SUFFIX, target_names

__all__ = ["CONDITIONS", "METRICS", "ProbeSettings", "run_probe", "save_results"]

CONDITIONS = ("model", "shuffled", "random_init")  # in this order, those the store supports


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
    read_cache_mb: int = 256  # decoded chunks kept per process: a layer that fits is read once (0: stream)

    def __post_init__(self):
        checks = [(self.n_folds >= 3, f"folds must be >= 3, got {self.n_folds} (nested CV: alpha is chosen by an "
                                      "inner CV over the other folds)"),
                  (self.n_boot >= 0, f"n_boot must be >= 0, got {self.n_boot}"),
                  (self.read_cache_mb >= 0, f"read_cache_mb must be >= 0, got {self.read_cache_mb}"),
                  (self.n_perm >= 1, f"n_perm must be >= 1, got {self.n_perm}"),
                  (self.n_perm_categorical >= 1, f"n_perm_categorical must be >= 1, got {self.n_perm_categorical}"),
                  (0 < self.ci_level < 1, f"ci_level must be in (0, 1), got {self.ci_level}"),
                  (self.logistic_C > 0, f"logistic_C must be > 0, got {self.logistic_C}"),
                  (len(self.rel_alphas) > 0 and min(self.rel_alphas) > 0, "rel_alphas must be positive")]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


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



@dataclass
class _Job:
    """What every (condition, site, layer) of one probe run shares."""

    store: Store
    ds: object
    tds: object
    names: list[str]
    sites: list[str]
    settings: ProbeSettings
    executor: object
    conditions: list[str]
    folds: np.ndarray
    weights: np.ndarray | None
    offset: dict
    ckpts: list
    n_stored: dict
    n_layers: int
    categorical: list[str]
    groups: list
    values: dict


def run_probe(host, store_path, hypothesis: str, settings: ProbeSettings | None = None, *,
              executor=None, on_progress: Callable[[str, int, int], None] | None = None, write: bool = True):
    """Probe a store for ``hypothesis``; write and return ``(results Dataset, group key)``.
    With ``write=False`` nothing is written (the key is None): the caller writes the results
    with :func:`save_results` once everything else it does has succeeded."""
    settings = settings or ProbeSettings()
    executor = executor or SerialExecutor()
    store = _open_complete(store_path)
    ds = store.dataset()
    schema.assert_valid_store(ds, str(store.path))
    hyp = construct("hypothesis", hypothesis, host.hypotheses.get(hypothesis), settings.options)
    tds = hyp.targets(ds)
    names = _select_targets(tds, ds, settings)
    sites = _select_sites(ds, settings)
    job = _plan(store, ds, tds, names, sites, settings, executor)
    tick = _ticker(on_progress, len(job.ckpts) * len(job.conditions) * sum(job.n_stored.values()))
    parts = []
    READ_CACHE.resize(settings.read_cache_mb * 2**20)
    try:
        for kc in job.ckpts:  # a checkpoint store: the same engine on each checkpoint's activations in turn
            out, r2_pos, r2_per_pos = _probe_checkpoint(job, kc, tick)
            parts.append(results_dataset(out, r2_pos, r2_per_pos, job.conditions, sites, job.n_layers, names, tds,
                                         ds.sizes[schema.POS], hypothesis, hyp, store, settings))
    finally:
        READ_CACHE.clear()  # the decoded chunks go with the run
    results = parts[0] if job.ckpts[0] is None else stack_checkpoints(parts, ds)
    if not write:
        return results, None
    return results, save_results(store, results, hypothesis, settings)


def save_results(store: Store, results, hypothesis: str, settings: ProbeSettings) -> str:
    """Write ``results`` into ``store`` under a new ``probes/<hypothesis>/<id>``; returns the key."""
    key = store.write_results(results, hypothesis, run_id([hypothesis, asdict(settings)]))
    results.attrs["key"] = key
    return key


def _open_complete(store_path) -> Store:
    """The store, refused unless every block is cached and every chunk is there."""
    store = Store.open(store_path)
    if not store.is_complete():
        raise StoreError(
            f"{store.path} is incomplete ({len(store.blocks_done())} blocks cached); "
            "rerun the same probekit cache command to resume it"
        )
    store.check_chunks()  # a missing chunk would read as zeros
    return store


def _select_targets(tds, ds, settings: ProbeSettings) -> list[str]:
    """The target names to probe; padded positions of text stores leave every target's mask."""
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
    return names


def _select_sites(ds, settings: ProbeSettings) -> list[str]:
    """The sites to probe: those asked for (TransformerLens hook names accepted), else every one."""
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
    return sites


def _plan(store: Store, ds, tds, names, sites, settings: ProbeSettings, executor) -> _Job:
    """Folds, conditions, bootstrap weights, layer counts and target groups of one run."""
    n = ds.sizes[schema.SAMPLE]
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
    n_stored = {s: view(store.array(s), ckpts[0]).shape[1] for s in sites}  # layers (or blocks) in the array
    categorical = [nm for nm in names if tds[nm].attrs.get("kind") == "categorical"]
    return _Job(store, ds, tds, names, sites, settings, executor, conditions, folds, weights, offset, ckpts,
                n_stored, max(n_stored[s] + offset[s] for s in sites), categorical,
                _mask_groups(tds, [nm for nm in names if nm not in categorical]),
                {name: np.asarray(tds[name].values) for name in names if name not in categorical})


def _ticker(on_progress, total: int) -> Callable[[str], None]:
    """Counts finished (condition, site, layer) units and reports each to ``on_progress``."""
    import threading

    done, lock = [0], threading.Lock()

    def tick(what: str) -> None:  # layers may finish in client threads (see _each_layer)
        with lock:
            done[0] += 1
            if on_progress:
                on_progress(what, done[0], total)

    return tick


def _probe_checkpoint(job: _Job, kc: int | None, tick):
    """Every condition, site and layer of one checkpoint (or of a plain store): the metrics,
    ``r2_pos`` and ``r2_per_pos`` arrays of its results."""
    settings, ds, n = job.settings, job.ds, job.ds.sizes[schema.SAMPLE]
    shape = (len(job.conditions), len(job.sites), job.n_layers, len(job.names))
    arrays = empty_metrics(shape, ds.sizes[schema.POS], settings.per_pos)
    where = "" if kc is None else f"step {int(ds[schema.CHECKPOINT].values[kc])} · "
    for ci, cond in enumerate(job.conditions):
        shuffled_cache: dict = {}  # targets (permuted too), shared by every site and layer of this condition
        group = schema.RANDOM_INIT_GROUP if cond == "random_init" else None
        for si, site in enumerate(job.sites):
            arr = view(job.store.array(site, group), None if group else kc)
            src = source(job.store, group, site, None if group else kc)
            blocks = job.executor.job_blocks(n, arr.chunks[0])
            def one_layer(stored: int, ci=ci, si=si, site=site, arr=arr, src=src, blocks=blocks,
                          cond=cond, shuffled_cache=shuffled_cache) -> None:
                at = (ci, si, stored + job.offset[site])  # `stored` indexes the array, the layer the results
                _probe_continuous(job, arrays, at, cond, src, stored, blocks, shuffled_cache)
                for name in job.categorical:
                    k = job.names.index(name)
                    categorical_layer(arrays[0], at + (k,), cond, arr, stored, job.tds, name, job.folds, settings,
                                      seed=[settings.seed, 3, k])
                tick(f"{where}{cond} {site}")

            _each_layer(job.executor, one_layer, range(arr.shape[1]))
    return arrays


def _each_layer(executor, fn, layers) -> None:
    """``fn(layer)`` for every layer; on a cluster (``executor.layers_in_flight`` > 1) several
    layers at once from client threads, so the workers compute one layer's blocks while the
    client cross-validates another's statistics. Each layer writes only its own results."""
    in_flight = getattr(executor, "layers_in_flight", 1)
    if in_flight <= 1:
        for layer in layers:
            fn(layer)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        for future in [pool.submit(fn, layer) for layer in layers]:
            future.result()


def _probe_continuous(job: _Job, arrays, at: tuple, cond: str, src, stored: int, blocks, shuffled_cache) -> None:
    """Ridge probes of every mask group of continuous targets at one (condition, site, layer)."""
    out, r2_pos, r2_per_pos = arrays
    settings = job.settings
    for gi, (mask, members) in enumerate(job.groups):
        if cond == "shuffled":
            shuffled_layer(out, at, job.executor, src, stored, blocks, mask, members, job.values, job.names,
                           job.folds, settings, seed=[settings.seed, 1, gi], cache=shuffled_cache)
            continue
        ks = [job.values[name].shape[-1] for name in members]
        y = shuffled_cache.get(("targets", gi))  # one array per group: a cluster receives it once
        if y is None:
            y = shuffled_cache.setdefault(("targets", gi), np.concatenate([job.values[name] for name in members],
                                                                          axis=-1))
        cols = column_slices(ks)
        res, held, per_pos = probe_layer(job.executor, src, stored, blocks, mask, y, job.folds, ks, cols, settings)
        for name, c, h in zip(members, cols, held):
            idx = at + (job.names.index(name),)
            out["r2"][idx] = res.r2(c)
            out["mse"][idx] = res.mse(c)
            out["alpha"][idx] = float(np.median(res.alpha[c]))
            out["n_rows"][idx] = h.rows.sum()
            out["cosine"][idx] = scoring.mean_cosine(h)
            if job.weights is not None:
                out["r2_lo"][idx], out["r2_hi"][idx] = scoring.bootstrap_r2_ci(h, job.weights, settings.ci_level)
            r2_pos[idx] = scoring.r2_by_position(h)
            if per_pos is not None:
                r2_per_pos[idx] = [r.r2(c) if r is not None else np.nan for r in per_pos]
