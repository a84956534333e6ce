"""Probe every (site, layer) of a store for every target of a hypothesis.

Conditions, each probed the same way (nested, sample-grouped CV ridge):

* ``model``: the cached model's activations against the hypothesis' targets;
* ``shuffled``: the same activations against targets permuted across samples
  (position kept), the floor any real signal must clear;
* ``random_init``: a random-initialised model of the same architecture, when the
  store holds one (``probekit cache --random-init``).

Targets that share a mask share one Gram accumulation. Activations are read one
(sample block, layer) chunk at a time, so memory stays bounded by one chunk plus
the per-fold statistics.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

import probekit
from probekit import schema
from probekit.errors import StoreError, UnknownNameError, UsageError
from probekit.hypotheses import MASK_SUFFIX, target_names
from probekit.registry import construct
from probekit.probes import DEFAULT_REL_ALPHAS, FoldStats, cross_validate, grouped_folds
from probekit.store import Store

CONDITIONS = ("model", "shuffled", "random_init")
METRICS = ("r2", "mse", "alpha", "n_rows")


@dataclass
class ProbeSettings:
    n_folds: int = 5
    seed: int = 0
    rel_alphas: tuple[float, ...] = tuple(float(a) for a in DEFAULT_REL_ALPHAS)
    sites: tuple[str, ...] | None = None  # default: every cached site
    targets: tuple[str, ...] | None = None  # default: every target of the hypothesis
    baselines: bool = True
    device: str = "cpu"
    options: dict = field(default_factory=dict)  # hypothesis options


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
              on_progress: Callable[[str, int, int], None] | None = None):
    """Probe a store for ``hypothesis``; write and return ``(results Dataset, group key)``."""
    import xarray as xr

    settings = settings or ProbeSettings()
    store = Store.open(store_path)
    if not store.is_complete():
        attrs = store.attrs()
        raise StoreError(
            f"{store.path} is incomplete ({len(attrs.get(schema.MANIFEST_ATTR, []))} blocks cached); "
            "rerun the same probekit cache command to resume it"
        )
    ds = store.dataset()
    schema.assert_valid_store(ds, str(store.path))
    hyp = construct("hypothesis", hypothesis, host.hypotheses.get(hypothesis), settings.options)
    tds = hyp.targets(ds)
    names = target_names(tds)
    if settings.targets:
        for t in settings.targets:
            if t not in names:
                raise UnknownNameError("target", t, names)
        names = [n for n in names if n in settings.targets]
    sites = list(settings.sites or ds.attrs["sites"])
    for s in sites:
        if s not in ds.attrs["sites"]:
            raise UnknownNameError("site", s, ds.attrs["sites"])

    n = ds.sizes[schema.SAMPLE]
    folds = grouped_folds(n, settings.n_folds, settings.seed)
    perm = np.random.default_rng([settings.seed, 1]).permutation(n)
    conditions = ["model"]
    if settings.baselines:
        conditions.append("shuffled")
        if store.has_group(schema.RANDOM_INIT_GROUP) and store.is_complete(schema.RANDOM_INIT_GROUP):
            conditions.append("random_init")

    n_layers = max(store.array(s).shape[1] for s in sites)
    shape = (len(conditions), len(sites), n_layers, len(names))
    out = {m: np.full(shape, np.nan) for m in METRICS}
    groups = _mask_groups(tds, names)
    values = {name: np.asarray(tds[name].values) for name in names}
    total = len(conditions) * sum(store.array(s).shape[1] for s in sites)
    done = 0
    for ci, cond in enumerate(conditions):
        group = schema.RANDOM_INIT_GROUP if cond == "random_init" else None
        order = perm if cond == "shuffled" else np.arange(n)
        for si, site in enumerate(sites):
            arr = store.array(site, group)
            block = arr.chunks[0]
            for layer in range(arr.shape[1]):
                for mask, members in groups:
                    res = _probe_layer(arr, layer, block, mask, members, values, order, folds, settings)
                    col_offset = 0
                    for name in members:
                        k = values[name].shape[-1]
                        cols = slice(col_offset, col_offset + k)
                        col_offset += k
                        ti = names.index(name)
                        out["r2"][ci, si, layer, ti] = res.r2(cols)
                        out["mse"][ci, si, layer, ti] = res.mse(cols)
                        out["alpha"][ci, si, layer, ti] = float(np.median(res.alpha[cols]))
                        out["n_rows"][ci, si, layer, ti] = res.n
                done += 1
                if on_progress:
                    on_progress(f"{cond} {site}", done, total)

    expected = [tds[nm].attrs.get("expected_layer", -1) for nm in names]
    dims = ("condition", "site", schema.LAYER, "target")
    results = xr.Dataset(
        {m: (dims, out[m]) for m in METRICS},
        coords={
            "condition": conditions,
            "site": sites,
            schema.LAYER: np.arange(n_layers),
            "target": names,
            "expected_layer": ("target", np.asarray(expected, dtype=np.int64)),
            "description": ("target", [tds[nm].attrs["description"] for nm in names]),
            "target_dims": ("target", [int(values[nm].shape[-1]) for nm in names]),
        },
        attrs={
            "hypothesis": hypothesis,
            "hypothesis_options": json.dumps(hyp.options),
            "store": str(store.path),
            "probe": "ridge, nested sample-grouped CV (alpha chosen inside each training set), R² pooled "
                     "over held-out folds and variance-weighted over target dims",
            "settings": json.dumps({k: v for k, v in asdict(settings).items() if k != "options"}),
            "probekit_version": probekit.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    key = store.write_results(results, hypothesis, _run_id(hypothesis, settings))
    results.attrs["key"] = key
    return results, key


def _run_id(hypothesis: str, settings: ProbeSettings) -> str:
    blob = json.dumps([hypothesis, asdict(settings)], sort_keys=True, default=str).encode()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{hashlib.sha1(blob).hexdigest()[:8]}"


def _probe_layer(arr, layer, block, mask, members, values, order, folds, settings):
    """Accumulate fold statistics for one (site, layer, mask group) and cross-validate."""
    n = arr.shape[0]
    ks = [values[m].shape[-1] for m in members]
    stats = FoldStats(settings.n_folds, arr.shape[-1], sum(ks), device=settings.device)
    for s0 in range(0, n, block):
        s1 = min(n, s0 + block)
        acts = np.asarray(arr[s0:s1, layer], dtype=np.float32)  # [b, T, F]: one chunk
        src = order[s0:s1]  # targets come from these samples (a permutation for the baseline)
        m = mask[s0:s1] & mask[src]
        if not m.any():
            continue
        y = np.concatenate([values[name][src][m] for name in members], axis=-1)
        fold = np.broadcast_to(folds[s0:s1, None], m.shape)[m]
        stats.add(acts[m], y, fold)
    col_groups = np.repeat(np.arange(len(members)), ks)
    if float(stats.n.sum()) == 0:
        raise UsageError(f"targets {members} have no defined positions to probe")
    return cross_validate(stats, col_groups=col_groups, rel_alphas=settings.rel_alphas)
