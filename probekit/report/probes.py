"""Terminal tables, JSON records and PNG figures of probe results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probekit.report.figures import hide_unused, panel_grid, pyplot, save_figure

# baseline conditions shown next to the model's R², with their short labels
BASELINE_LABELS = {"shuffled": "shuffled", "random_init": "random-init"}


def results_table(results, site: str | None = None, title: str | None = None):
    """A rich Table: one row per target, one column per layer. Each cell shows the model's
    held-out R² ± half its CI and, below, the baselines' R². The best layer is bold and its
    alpha is listed; a result whose CI reaches a baseline's CI is dimmed and marked ``~``."""
    from rich import box
    from rich.table import Table

    site = site or str(results.site.values[0])
    sel = results.sel(site=site)
    conds = [str(c) for c in results.condition.values]
    shown = [c for c in conds if c in BASELINE_LABELS]
    legend = f" (below: ±CI, {' / '.join(BASELINE_LABELS[c] for c in shown)})" if shown else ""
    has_ci = bool(np.isfinite(sel.r2_lo.values).any())
    caption = ["bold: best layer, with its ridge α"]
    if has_ci:
        caption.append(f"±: half the {_level(results)} bootstrap CI over samples")
    if shown and has_ci:
        caption.append("~ dim: CI reaches a baseline's CI")
    table = Table(title=title or f"{results.attrs.get('hypothesis')} · site {site} · held-out R²{legend}",
                  caption=" · ".join(caption), show_lines=bool(shown), box=box.SIMPLE_HEAD, padding=(0, 1),
                  collapse_padding=True)
    table.add_column("target", style="cyan", no_wrap=True, min_width=13)
    table.add_column("exp.", justify="right", no_wrap=True, min_width=4)
    for layer in results.layer.values:
        table.add_column(f"L{int(layer)}", justify="right", no_wrap=True, min_width=9)
    overlap = lambda t, li: bool(shown and sel.overlaps_baseline.sel(target=t).values[li])  # noqa: E731
    for t in results.target.values:
        if _is_categorical(results, t):
            def below(li, t=t):
                sel_value = float(sel.selectivity.sel(condition="model", target=t).values[li])
                lines = [f"[dim]sel {sel_value:+.2f}[/dim]"] if np.isfinite(sel_value) else []
                return lines + _baselines(sel, "accuracy", t, li, shown)

            cells = _cells(sel, t, "accuracy", lambda v: f"acc {v:.2f}", overlap, below)
        else:
            def below(li, best, t=t):
                lo, hi = (float(sel[v].sel(condition="model", target=t).values[li]) for v in ("r2_lo", "r2_hi"))
                lines = [f"[dim]±{(hi - lo) / 2:.3f}[/dim]"] if np.isfinite(lo) else []
                lines += _baselines(sel, "r2", t, li, shown)
                if li == best:
                    lines.append(f"[dim]α {float(sel.alpha.sel(condition='model', target=t).values[li]):.0e}[/dim]")
                return lines

            cells = _cells(sel, t, "r2", lambda v: f"{v:.3f}", lambda t_, li: has_ci and overlap(t_, li), below,
                           pass_best=True)
        table.add_row(str(t), _exp(results, t), *cells)
    return table


def _cells(sel, t, metric, fmt, flagged, below, pass_best=False) -> list[str]:
    """One cell per layer: the model's value (bold at the best layer, dimmed and marked ``~`` when
    flagged) over the dim lines ``below(layer)`` adds."""
    values = sel[metric].sel(condition="model", target=t).values
    best = int(np.nanargmax(values)) if np.isfinite(values).any() else -1
    cells = []
    for li, val in enumerate(values):
        if not np.isfinite(val):
            cells.append("—")
            continue
        text = f"[bold]{fmt(val)}[/bold]" if li == best else fmt(val)
        if flagged(t, li):
            text = f"[dim]~{text}[/dim]"
        cells.append("\n".join([text, *(below(li, best) if pass_best else below(li))]))
    return cells


def _baselines(sel, metric, t, li, shown) -> list[str]:
    if not shown:
        return []
    return ["[dim]" + "/".join(_short(sel[metric].sel(condition=c, target=t).values[li]) for c in shown) + "[/dim]"]


def _is_categorical(results, t) -> bool:
    return "kind" in results.coords and str(results.kind.sel(target=t).values) == "categorical"


def _exp(results, t) -> str:
    exp = int(results.expected_layer.sel(target=t))
    return str(exp) if exp >= 0 else ""


def _level(results) -> str:
    try:
        return f"{json.loads(results.attrs['settings'])['ci_level']:.0%}"
    except (KeyError, ValueError, TypeError):
        return "95%"


def _short(v: float) -> str:
    """Two decimals without a negative zero: baselines are read at a glance."""
    return "nan" if not np.isfinite(v) else f"{0.0 if abs(v) < 0.005 else v:.2f}"


def results_records(results) -> list[dict]:
    """Flat records (one per [checkpoint ×] condition × site × layer × target) for ``--json`` and CSV."""
    cols = [v for v in ("r2", "r2_lo", "r2_hi", "mse", "cosine", "alpha", "n_rows", "accuracy", "acc_lo", "acc_hi",
                        "control_accuracy", "selectivity") if v in results]
    df = results[cols].to_dataframe().reset_index()
    recs = df.to_dict(orient="records")
    for r in recs:
        for k, v in list(r.items()):
            if k == "alpha" and isinstance(v, (np.floating, float)) and np.isposinf(v):
                r[k] = "inf"  # the intercept-only model won the nested CV (JSON has no infinity)
            elif isinstance(v, (np.floating, float)):
                r[k] = None if not np.isfinite(v) else float(v)
            elif isinstance(v, np.integer):
                r[k] = int(v)
        if "overlaps_baseline" in results and r["condition"] == "model":
            at = {k: r[k] for k in ("checkpoint", "site", "layer", "target") if k in results.overlaps_baseline.dims}
            r["overlaps_baseline"] = bool(results.overlaps_baseline.sel(at))
    return recs


def results_json(results) -> str:
    meta = {k: v for k, v in results.attrs.items()}
    return json.dumps({"attrs": meta, "records": results_records(results)}, indent=2, default=str)


def plot_r2(results, path: str | Path, site: str | None = None) -> Path:
    """PNG: R² against layer, one panel per target; model solid, random-init dashed, shuffled grey."""
    site = site or str(results.site.values[0])
    targets = [str(t) for t in results.target.values]
    fig, axes = panel_grid(len(targets), 4, (3.2, 2.6), sharex=True)
    layers = results.layer.values
    conds = [str(c) for c in results.condition.values]
    style = {"model": dict(color="C0", lw=2, marker="o", label="trained model"),
             "random_init": dict(color="C1", lw=1.5, ls="--", marker="s", ms=3, label="random init"),
             "shuffled": dict(color="0.5", lw=1, ls=":", label="shuffled targets (mean, null band)")}
    for ax, t in zip(axes.flat, targets):
        cat = _is_categorical(results, t)
        metric, band = ("accuracy", ("acc_lo", "acc_hi")) if cat else ("r2", ("r2_lo", "r2_hi"))
        if cat:
            ax.set_ylabel("accuracy", fontsize=8)
        for c in conds:
            y = results[metric].sel(site=site, condition=c, target=t).values
            ax.plot(layers, y, **style[c])
            lo, hi = (results[v].sel(site=site, condition=c, target=t).values for v in band)
            if np.isfinite(lo).any():
                ax.fill_between(layers, lo, hi, color=style[c]["color"], alpha=0.2, lw=0)
        exp = int(results.expected_layer.sel(target=t))
        if exp >= 0:
            ax.axvline(exp, color="C2", lw=0.8, alpha=0.6)
        ax.set_title(t, fontsize=9)
        values = results[metric].sel(site=site, target=t).values
        low = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
        ax.set_ylim(min(-0.1, low - 0.05), 1.02)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
    hide_unused(axes, len(targets))
    for ax in axes[-1]:
        ax.set_xlabel("layer (0 = embeddings)")
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out R²")
    from matplotlib.lines import Line2D

    handles, labels = axes.flat[0].get_legend_handles_labels()
    if (results.expected_layer >= 0).any():
        handles.append(Line2D([], [], color="C2", lw=0.8, alpha=0.6))
        labels.append("expected layer")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{results.attrs.get('hypothesis')} probes · site {site}", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return save_figure(fig, path)


def plot_r2_by_position(results, path: str | Path, site: str | None = None, condition: str = "model",
                        variable: str = "r2_pos") -> Path:
    """PNG heatmaps (layer × position) of held-out R², one panel per target."""
    site = site or str(results.site.values[0])
    data = results[variable].sel(site=site, condition=condition)
    targets = [str(t) for t in results.target.values]
    fig, axes = panel_grid(len(targets), 3, (4.2, 2.7), layout="constrained")
    for ax, t in zip(axes.flat, targets):
        img = ax.imshow(data.sel(target=t).values, aspect="auto", origin="lower", vmin=0, vmax=1,
                        cmap="viridis", interpolation="nearest")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("position", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
    hide_unused(axes, len(targets))
    fig.colorbar(img, ax=axes, shrink=0.8, label="held-out R²")
    what = "per-position probes" if variable == "r2_per_pos" else "pooled probe scored per position"
    fig.suptitle(f"{results.attrs.get('hypothesis')} · {site} · {condition} · {what}", fontsize=10)
    return save_figure(fig, path, dpi=110)


# -- checkpoint stores: R² through training -------------------------------------------------

def _primary(results, t) -> str:
    return "accuracy" if _is_categorical(results, t) else "r2"


def best_target(results, site: str | None = None) -> str:
    """The target whose best-layer model R² gained most from the first checkpoint to the last
    (with one checkpoint: the highest); accuracy when every target is categorical. The one a
    compact checkpoint table shows by default: what training changed most."""
    site = site or str(results.site.values[0])
    model = results.sel(site=site, condition="model")
    targets = [str(t) for t in results.target.values]
    pool = [t for t in targets if not _is_categorical(results, t)] or targets

    def top(k, t):
        v = model[_primary(results, t)].isel(checkpoint=k).sel(target=t).values
        return float(np.nanmax(v)) if np.isfinite(v).any() else np.nan

    scores = [top(-1, t) - (top(0, t) if results.sizes["checkpoint"] > 1 else 0.0) for t in pool]
    scores = [s if np.isfinite(s) else -np.inf for s in scores]
    return pool[int(np.argmax(scores))]


def checkpoint_table(results, site: str | None = None, target: str | None = None):
    """A rich Table for results with a ``checkpoint`` dim: one row per checkpoint (training
    step), one column per layer, the model's held-out R² (accuracy for a categorical target) of
    one target; the best layer of each row is bold, a value whose CI reaches a baseline's is
    dimmed and marked ``~``; the last column is the shuffled baseline's top (over layers)."""
    from rich import box
    from rich.table import Table

    site = site or str(results.site.values[0])
    target = target or best_target(results, site)
    metric = _primary(results, target)
    sel = results.sel(site=site, target=target)
    label = "accuracy" if metric == "accuracy" else "held-out R²"
    exp = _exp(results, target)
    expected = f" (expected L{exp})" if exp else ""
    title = f"{results.attrs.get('hypothesis')} · site {site} · {target}{expected} · {label}"
    shuffled = "shuffled" in [str(c) for c in results.condition.values]
    caption = ["bold: best layer"]
    if shuffled:
        caption += ["~: CI reaches a baseline's", "shuffled: its band's top"]
    table = Table(title=title, caption=" · ".join(caption), box=box.SIMPLE_HEAD, padding=(0, 1),
                  collapse_padding=True)
    table.add_column("step", style="cyan", justify="right", no_wrap=True)
    for layer in results.layer.values:
        table.add_column(f"L{int(layer)}", justify="right", no_wrap=True, min_width=6)
    if shuffled:
        table.add_column("shuffled", justify="right", no_wrap=True, style="dim")
    band = "acc_hi" if metric == "accuracy" else "r2_hi"
    for k, step in enumerate(results.checkpoint.values):
        row = sel.isel(checkpoint=k)
        values = row[metric].sel(condition="model").values
        best = int(np.nanargmax(values)) if np.isfinite(values).any() else -1
        cells = []
        for li, v in enumerate(values):
            if not np.isfinite(v):
                cells.append("—")
                continue
            text = f"[bold]{v:.3f}[/bold]" if li == best else f"{v:.3f}"
            cells.append(f"[dim]~{text}[/dim]" if shuffled and bool(row.overlaps_baseline.values[li]) else text)
        if shuffled:
            top = row[band].sel(condition="shuffled").values
            cells.append(_short(np.nanmax(top)) if np.isfinite(top).any() else "—")
        table.add_row(str(int(step)), *cells)
    return table


def plot_r2_vs_checkpoint(results, path: str | Path, site: str | None = None) -> Path:
    """PNG: held-out R² (accuracy for categorical targets) against training step, one panel per
    target and one line per layer; grey dotted: the top of the shuffled baseline's band over layers."""
    site = site or str(results.site.values[0])
    targets = [str(t) for t in results.target.values]
    fig, axes = panel_grid(len(targets), 4, (3.4, 2.7), sharex=True)
    steps = results.checkpoint.values
    layers = results.layer.values
    colors = pyplot().get_cmap("viridis")(np.linspace(0, 0.9, len(layers)))
    conds = [str(c) for c in results.condition.values]
    for ax, t in zip(axes.flat, targets):
        metric = _primary(results, t)
        data = results[metric].sel(site=site, target=t)
        for li, layer in enumerate(layers):
            y = data.sel(condition="model", layer=layer).values
            if np.isfinite(y).any():
                ax.plot(steps, y, color=colors[li], lw=1.6, marker="o", ms=3, label=f"L{int(layer)}")
        if "shuffled" in conds:
            top = results["acc_hi" if metric == "accuracy" else "r2_hi"].sel(site=site, target=t,
                                                                            condition="shuffled").values
            if np.isfinite(top).any():
                with np.errstate(all="ignore"):
                    ax.plot(steps, np.nanmax(top, axis=-1), color="0.5", lw=1, ls=":", label="shuffled (top)")
        values = data.values
        low = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
        ax.set_ylim(min(-0.1, low - 0.05), 1.02)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
        ax.set_title(t, fontsize=9)
        if len(steps) > 2 and steps.min() >= 0 and steps.max() > 100 * max(1, np.sort(steps)[1]):
            ax.set_xscale("symlog", linthresh=max(1, int(np.sort(steps)[1])))  # early steps get room
    hide_unused(axes, len(targets))
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out R²")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8, frameon=False)
    fig.suptitle(f"{results.attrs.get('hypothesis')} probes through training · site {site}", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return save_figure(fig, path)
