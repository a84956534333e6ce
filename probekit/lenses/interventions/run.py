"""``probekit patch``'s computation: patch (and ablate) a model on prompt pairs, then save the results.

:func:`run_patch` loads the model, encodes the pairs (:mod:`probekit.lenses.interventions.pairs`) and runs
:func:`probekit.lenses.interventions.patching.patch_residual` once without ablation and, when an ablation is
asked for, once more with it; the results are stacked along a ``condition`` dim (``"none"``, then
the ablation's label). :func:`save_patch` writes them as a zarr group: under ``patching/<id>`` of
an existing zarr store, else as a new standalone zarr store. Tables, JSON and the figure:
:mod:`probekit.report.patch`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probekit.errors import StoreError, UsageError
from probekit.store.ids import utc_stamp

PER_CONDITION = ("logp_patched", "recovered_pair", "recovered", "recovered_pooled", "logp_a")
GROUP = "patching"


@dataclass(frozen=True)
class PatchSettings:
    """What ``probekit patch`` runs: heads ``"L.H,L.*"`` and blocks ``"L,..."`` to ablate (from 0)."""

    heads: str = ""
    blocks: str = ""
    ablation: str = "zero"
    layers: tuple[int, ...] | None = None  # resid layers to patch (default all)
    batch_size: int = 32
    min_gap: float = 1e-6
    device: str = "cpu"
    model_dtype: str | None = None
    source: str = ""  # where the pairs came from (recorded)

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")


def run_patch(host, model: str, records: list[dict], settings: PatchSettings, *,
              on_progress: Callable[[str, int, int], None] | None = None):
    """Load ``model``, patch every pair (without, then with the ablation); a Dataset with ``condition``."""
    import xarray as xr

    from probekit import __version__
    from probekit.lenses.interventions.patching import Ablation, hooked_model, parse_blocks, parse_heads, patch_residual
    from probekit.models.adapters import load_adapter
    from probekit.lenses.interventions.pairs import encode_pairs

    adapter = load_adapter(host, model, device=settings.device, dtype=settings.model_dtype)
    hooked = hooked_model(adapter)
    hooked.supports(heads=bool(settings.heads.strip()), blocks=bool(settings.blocks.strip()))
    ablation = Ablation(parse_heads(settings.heads, hooked.n_blocks, max(hooked.n_heads, 1)),
                        parse_blocks(settings.blocks, hooked.n_blocks), settings.ablation)
    hooked.check(ablation)
    pairs = encode_pairs(adapter, records)
    kw = {"layers": settings.layers, "batch_size": settings.batch_size, "min_gap": settings.min_gap,
          "on_progress": on_progress}
    parts = [patch_residual(hooked, pairs, **kw)]
    if ablation:
        parts.append(patch_residual(hooked, pairs, ablation=ablation, **kw))
    base = parts[0]
    stacked = xr.concat([p[list(PER_CONDITION)] for p in parts], dim="condition")
    ds = base.drop_vars(PER_CONDITION).merge(stacked)
    ds = ds.assign_coords(condition=[p.attrs["ablation"] for p in parts])
    ds["ablation_spec"] = ("condition", np.array([p.attrs["ablation_spec"] for p in parts], dtype=object))
    ds["token_b_str"] = (("pair", "pos"), _token_strings(adapter, ds.token_b.values))
    for key in ("text_a", "text_b", "answer", "answer_tokenization"):
        if any(key in p.meta for p in pairs):
            ds[key] = ("pair", np.array([str(p.meta.get(key, "")) for p in pairs], dtype=object))
    prov = adapter.provenance()
    ds.attrs = {k: v for k, v in base.attrs.items() if not k.startswith("ablation")}
    ds.attrs.update({
        "kind": "probekit-patching", "probekit_version": __version__, "model_spec": adapter.spec,
        "model_hash": prov.get("model_hash", ""), "device": str(prov.get("device", settings.device)),
        "provenance": json.dumps(prov, default=str), "settings": json.dumps(dataclasses.asdict(settings), default=list),
        "pairs_source": settings.source, "created": utc_stamp(),
    })
    return ds


def _token_strings(adapter, ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, "", dtype=object)
    from probekit.models.capabilities import has

    decode = adapter.decode_tokens if has(adapter, "tokenizer") else None  # tokenizer adapters decode
    for i, row in enumerate(ids):
        have = row >= 0
        if have.any():
            out[i, have] = decode(row[have])[0] if decode else [str(int(t)) for t in row[have]]
    return out


def run_id(ds) -> str:
    """``<utc stamp>-<hash of model, pairs and settings>``."""
    from probekit.store.ids import run_id as stamped_id

    return stamped_id([ds.attrs.get("model_spec"), ds.attrs.get("settings"), ds.token_b.values.tolist(),
                       ds.logp_a_clean.values.round(6).tolist()])


def save_patch(ds, out: str | Path, rid: str | None = None) -> tuple[Path, str]:
    """Write the results: ``<out>/patching/<id>`` of an existing zarr store, or a new standalone zarr
    store at ``out`` (a directory not ending in ``.zarr``: ``<out>/patch.zarr``). Returns
    ``(store path, group path inside it)`` (group ``""`` for a standalone store)."""
    import zarr

    from probekit import outputs
    from probekit.store.zarr_store import quiet_zarr as _quiet, vlen_strings as _vlen_strings

    out = Path(out)
    if out.suffix == ".zarr" and outputs.describe(out) in (outputs.STORE, outputs.PATCH):  # a new group in it
        group = f"{GROUP}/{rid or run_id(ds)}"
        if (out / group).exists():
            raise StoreError(f"{out} already holds {group}")
        with _quiet():
            _vlen_strings(ds).to_zarr(out, group=group, mode="w-", zarr_format=3, consolidated=False)
            zarr.consolidate_metadata(out)
        return out, group
    if out.suffix != ".zarr":  # a folder's patch.zarr is replaced by the next run's
        outputs.check_output(out, outputs.FOLDER)
        out = out / "patch.zarr"
    outputs.check_output(out, outputs.PATCH)
    out.parent.mkdir(parents=True, exist_ok=True)
    with outputs.replacing(out) as stage, _quiet():
        _vlen_strings(ds.assign_attrs({outputs.KIND_ATTR: outputs.PATCH_KIND})).to_zarr(
            stage, mode="w-", zarr_format=3, consolidated=False)
        zarr.consolidate_metadata(stage)
    return out, ""
