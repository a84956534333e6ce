"""``probekit patch`` end to end: patch (and ablate) a model on prompt pairs, then save, tabulate, plot.

:func:`run_patch` loads the model, encodes the pairs (:mod:`probekit.lenses.interventions.pairs`) and runs
:func:`probekit.lenses.interventions.patching.patch_residual` once without ablation and, when an ablation is
asked for, once more with it; the results are stacked along a ``condition`` dim (``"none"``, then
the ablation's label). :func:`save_patch` writes them as a zarr group: under ``patching/<id>`` of
an existing zarr store, else as a new standalone zarr store.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probekit.errors import StoreError, UsageError

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
        "pairs_source": settings.source, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return ds


def _token_strings(adapter, ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, "", dtype=object)
    decode = getattr(adapter, "decode_tokens", None)
    for i, row in enumerate(ids):
        have = row >= 0
        if have.any():
            out[i, have] = decode(row[have])[0] if decode else [str(int(t)) for t in row[have]]
    return out


def run_id(ds) -> str:
    """``<utc stamp>-<hash of model, pairs and settings>``."""
    blob = json.dumps([ds.attrs.get("model_spec"), ds.attrs.get("settings"), ds.token_b.values.tolist(),
                       ds.logp_a_clean.values.round(6).tolist()], default=str).encode()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{hashlib.sha1(blob).hexdigest()[:8]}"


def save_patch(ds, out: str | Path, rid: str | None = None) -> tuple[Path, str]:
    """Write the results: ``<out>/patching/<id>`` of an existing zarr store, or a new standalone zarr
    store at ``out`` (a directory not ending in ``.zarr``: ``<out>/patch.zarr``). Returns
    ``(store path, group path inside it)`` (group ``""`` for a standalone store)."""
    import zarr

    from probekit import outputs
    from probekit.store.zarr_store import _quiet, _vlen_strings

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


# --------------------------------------------------------------------------- reports

def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _best(ds, cond) -> list[dict]:
    """Per layer: the position with the largest mean recovered fraction."""
    rows = []
    ref = _reference_pair(ds)
    for layer in ds.layer.values:
        rec = ds.recovered.sel(condition=cond, layer=layer).values
        pooled = ds.recovered_pooled.sel(condition=cond, layer=layer).values
        if np.isfinite(rec).any():
            j = int(np.nanargmax(rec))
            pos = int(ds.pos.values[j])
            rows.append({"layer": int(layer), "best_pos": pos, "token": str(ds.token_b_str.values[ref, j]),
                         "recovered": _f(rec[j]), "recovered_pooled": _f(pooled[j]), "recovered_last": _f(rec[-1])})
        else:
            rows.append({"layer": int(layer), "best_pos": None, "token": "", "recovered": None,
                         "recovered_pooled": None, "recovered_last": None})
    return rows


def _reference_pair(ds) -> int:
    """The pair whose B tokens label the positions: the first with the longest B prompt."""
    return int(np.argmax(ds.len_b.values))


def _logp_summary(ds, cond) -> dict:
    r = ds.sel(condition=cond)
    delta = r.logp_a.values - ds.logp_a_clean.values
    return {"logp_a": _f(r.logp_a.mean()), "logp_a_clean": _f(ds.logp_a_clean.mean()), "logp_b": _f(ds.logp_b.mean()),
            "delta_logp_a": _f(delta.mean()),
            "delta_logp_a_se": _f(delta.std(ddof=1) / np.sqrt(delta.size)) if delta.size > 1 else None}


def patch_json(ds) -> dict:
    """A JSON-able summary: per condition the answer log-probs, per-layer best positions and the grid."""
    ref = _reference_pair(ds)
    out = {"model": ds.attrs["model_spec"], "n_pairs": int(ds.sizes["pair"]), "metric": ds.attrs["metric"],
           "alignment": ds.attrs["alignment"], "layers": [int(x) for x in ds.layer.values],
           "pos": [int(p) for p in ds.pos.values], "tokens_b": [str(t) for t in ds.token_b_str.values[ref]],
           "conditions": []}
    for cond, spec in zip(ds.condition.values, ds.ablation_spec.values):
        rec = ds.recovered.sel(condition=cond).values
        out["conditions"].append({"condition": str(cond), "ablation": json.loads(str(spec)), **_logp_summary(ds, cond),
                                  "per_layer": _best(ds, cond),
                                  "recovered": [[_f(v) for v in row] for row in rec]})
    return out


def patch_table(ds):
    """A rich Table: per resid layer and condition, the best position and its recovered fraction."""
    from rich import box
    from rich.table import Table

    conds = [str(c) for c in ds.condition.values]
    notes = []
    for c in conds:
        s = _logp_summary(ds, c)
        if c == "none":
            notes.append(f"log p(answer): A {s['logp_a']:.3f}, B {s['logp_b']:.3f}")
        else:
            se = f" ± {s['delta_logp_a_se']:.3f}" if s["delta_logp_a_se"] is not None else ""
            notes.append(f"ablated ({c}): A {s['logp_a']:.3f} (Δ {s['delta_logp_a']:+.3f}{se})")
    table = Table(title=f"{ds.attrs['model_spec']} · resid patching A → B · {ds.sizes['pair']} pairs",
                  caption=" · ".join(notes) + " · recovered = (logp_patched − logp_B) / (logp_A − logp_B), "
                  "mean over pairs; pos from the end of B", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("layer", justify="right")
    for c in conds:
        tag = "" if len(conds) == 1 else ("\n[dim]clean[/dim]" if c == "none" else "\n[dim]ablated[/dim]")
        table.add_column("best pos" + tag, justify="left", no_wrap=True)
        table.add_column("recovered" + tag, justify="right")
        table.add_column("pos −1" + tag, justify="right")
    best = {c: _best(ds, c) for c in conds}
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    for i, layer in enumerate(ds.layer.values):
        cells = [str(int(layer))]
        for c in conds:
            b = best[c][i]
            cells += ["—" if b["best_pos"] is None else f"{b['best_pos']} {b['token']!r}", fmt(b["recovered"]),
                      fmt(b["recovered_last"])]
        table.add_row(*cells)
    return table


def plot_patch(ds, path) -> Path:
    """PNG: one heatmap per condition of the mean recovered fraction, resid layer × B position
    (labelled with the B tokens of the pair with the longest B prompt)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    conds = list(ds.condition.values)
    L, P = ds.sizes["layer"], ds.sizes["pos"]
    fig, axes = plt.subplots(1, len(conds), figsize=(min(3 + 0.55 * P, 14) * len(conds), 1.6 + 0.35 * L),
                             squeeze=False)
    ref = _reference_pair(ds)
    labels = [f"{f'{t!r}'[1:-1] or '·'}\n{int(p)}" for t, p in zip(ds.token_b_str.values[ref], ds.pos.values)]
    for ax, cond in zip(axes[0], conds):
        grid = ds.recovered.sel(condition=cond).values
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        if grid.size <= 600:
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(v) > 0.6 else "black")
        ax.set_xticks(range(P), labels, rotation=90 if P > 8 else 0, fontsize=7)
        ax.set_yticks(range(L), [str(int(x)) for x in ds.layer.values], fontsize=7)
        ax.set_xlabel("token of B · position from the end")
        ax.set_ylabel("resid layer (0 = embeddings)")
        s = _logp_summary(ds, cond)
        ax.set_title(f"ablation: {cond}\nlog p(ans): A {s['logp_a']:.2f} · B {s['logp_b']:.2f}", fontsize=8)
        fig.colorbar(im, ax=ax, label="recovered fraction", shrink=0.8)
    fig.suptitle(f"{ds.attrs['model_spec']} · patching resid A → B · {ds.sizes['pair']} pairs", fontsize=9)
    fig.tight_layout()
    from probekit.report.probes import save_figure

    return save_figure(fig, path)
