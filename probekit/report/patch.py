"""Tables, JSON and figures of ``probekit patch`` (:func:`probekit.lenses.interventions.run.run_patch`'s Dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probekit.report.figures import pyplot, save_figure


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
    path = Path(path)
    conds = list(ds.condition.values)
    L, P = ds.sizes["layer"], ds.sizes["pos"]
    fig, axes = pyplot().subplots(1, len(conds), figsize=(min(3 + 0.55 * P, 14) * len(conds), 1.6 + 0.35 * L),
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
    return save_figure(fig, path)
