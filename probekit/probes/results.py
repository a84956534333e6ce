"""The results Dataset of a probe run: metrics over ``(condition, site, layer, target)``, R² by
position, whether the model's interval reaches a baseline's, and the settings in attrs; per
checkpoint results stacked along ``checkpoint``."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict

import numpy as np

import probekit
from probekit.store import schema
from probekit.store.ids import utc_stamp

METRICS = ("r2", "r2_lo", "r2_hi", "mse", "cosine", "alpha", "n_rows",
           "accuracy", "acc_lo", "acc_hi", "control_accuracy", "selectivity")  # the last five: categorical
PROBE_DESCRIPTION = (
    "ridge, nested sample-grouped CV (alpha chosen inside each training set, inf = intercept "
    "only); out-of-sample R² (reference: each outer fold's training mean) pooled over held-out "
    "folds, variance-weighted over target dims; model CI: percentile bootstrap over "
    "samples (fits held fixed); shuffled: mean and quantile band over n_perm refitted permutations")


def empty_metrics(shape: tuple, T: int, per_pos: bool) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """NaN-filled ``(metrics, r2_pos, r2_per_pos)`` for one checkpoint's results."""
    out = {m: np.full(shape, np.nan) for m in METRICS}
    return out, np.full(shape + (T,), np.nan), np.full(shape + (T,), np.nan) if per_pos else None


def results_dataset(out, r2_pos, r2_per_pos, conditions, sites, n_layers, names, tds, T,
                    hypothesis, hyp, store, settings):
    """One checkpoint's (or a plain store's) results as an ``xr.Dataset``."""
    import xarray as xr

    dims = ("condition", "site", schema.LAYER, "target")
    data = {m: (dims, out[m]) for m in METRICS}
    data["r2_pos"] = (dims + (schema.POS,), r2_pos, {"description": "held-out R² of the pooled probe at each position"})
    if r2_per_pos is not None:
        data["r2_per_pos"] = (dims + (schema.POS,), r2_per_pos, {"description": "R² of a probe fit per position"})
    data["overlaps_baseline"] = (dims[1:], _overlaps_baseline(out, len(conditions)),
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
            "probe": PROBE_DESCRIPTION,
            "settings": json.dumps({k: v for k, v in asdict(settings).items() if k != "options"}),
            "probekit_version": probekit.__version__,
            "created": utc_stamp(),
        },
    )


def _overlaps_baseline(out: dict, n_conditions: int) -> np.ndarray:
    """Per (site, layer, target): the model's R² CI reaches a baseline's band, or its accuracy a
    baseline's accuracy."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: continuous vs categorical
        lo = out["r2_lo"][0]
        hi_base = np.nanmax(out["r2_hi"][1:], axis=0) if n_conditions > 1 else np.full_like(lo, -np.inf)
        acc_base = (np.nanmax(np.stack([out["acc_hi"][1:], out["accuracy"][1:]]), axis=(0, 1))
                    if n_conditions > 1 else np.full_like(lo, -np.inf))
    return np.asarray((lo <= hi_base) | (out["accuracy"][0] <= acc_base))


def stack_checkpoints(parts: list, ds):
    """Per-checkpoint results along a new leading ``checkpoint`` dim (training steps, with paths)."""
    import xarray as xr

    steps = np.asarray(ds[schema.CHECKPOINT].values, dtype=np.int64)
    paths = [str(p) for p in ds[schema.CHECKPOINT_PATH].values]
    stacked = xr.concat(parts, dim=schema.CHECKPOINT, data_vars="all", coords="minimal", compat="override",
                        combine_attrs="override", join="exact")
    return stacked.assign_coords({schema.CHECKPOINT: steps, schema.CHECKPOINT_PATH: (schema.CHECKPOINT, paths)})
