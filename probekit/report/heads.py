"""Tables, JSON and figures of ``probekit heads``: one model's head scores, and their dynamics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from probekit.report.figures import pyplot, save_figure

ROLES = (("induction", "induction"), ("prev_token", "prev-token"), ("duplicate", "duplicate"))


def _f(v, digits: int = 3) -> str:
    return "–" if not np.isfinite(v) else f"{v:.{digits}f}"


def heads_table(ds, threshold: float = 0.5):
    """A rich Table: one row per head with its pattern and weight scores and the roles it passes."""
    from rich import box
    from rich.table import Table

    icl = json.loads(ds.attrs.get("icl", "{}"))
    caption = [f"pattern scores on [BOS] + R={ds.attrs['segment']} random tokens × {ds.attrs['repeats']}, "
               f"{ds.attrs['n_samples']} sequences; role: score ≥ {threshold}"]
    if ds.attrs.get("weights") in ("toy", "gpt2", "tlens"):
        prev = json.loads(ds.attrs["qk_prev_head"])
        via = ", ".join(f"{l}.x via {l - 1}.{p}" for l, p in enumerate(prev) if p is not None)
        caption.append(f"OV/QK: Σλ/Σ|λ| (LayerNorm folded){'; QK K-composes ' + via if via else ''}")
    else:
        caption.append(f"no weight scores: {ds.attrs.get('weights')}")
    if icl:
        caption.append(f"ICL score {icl['score']:+.3f} nats ({icl['label']}; {icl['data']})")
    ab = json.loads(ds.attrs.get("ablation", "{}"))
    if ab:
        caption.append(f"{ab['mode']}-ablating {', '.join(ab['heads'])}: ICL {ab['icl_clean']:+.3f} → "
                       f"{ab['icl_ablated']:+.3f} ({100 * ab['removed']:.0f}% removed)")
    if "induction_ablated" in ds:
        caption.append(_backup_caption(ds, ab["heads"]))
    table = Table(title=f"heads of {ds.attrs['model_spec']}", caption="\n".join(caption), box=box.SIMPLE_HEAD,
                  padding=(0, 1))
    for col in ("head", "prev-tok", "dup", "induct", "OV copy", "QK prefix", "role"):
        table.add_column(col, justify="left" if col in ("head", "role") else "right", no_wrap=True)
    for l in ds.layer.values:
        for h in ds["head"].values:
            r = ds.sel(layer=l, head=h)
            roles = [label for key, label in ROLES if float(r[key]) >= threshold]
            row = [_f(float(r[k])) for k in ("prev_token", "duplicate", "induction", "ov_copying", "qk_prefix")]
            style = "bold" if "induction" in roles else None
            table.add_row(f"{int(l)}.{int(h)}", *row, ", ".join(roles), style=style)
    return table


def _backup_caption(ds, ablated: list[str]) -> str:
    """The heads whose induction score rose most once ``ablated`` were zeroed (candidate backup heads)."""
    rise = (ds.induction_ablated - ds.induction).values
    order = [(l, h) for l, h in zip(*np.unravel_index(np.argsort(-rise, axis=None), rise.shape))
             if f"{l}.{h}" not in ablated][:3]
    shown = ", ".join(f"{l}.{h} {float(ds.induction[l, h]):.2f} → {float(ds.induction_ablated[l, h]):.2f}"
                      for l, h in order)
    return f"induction score with them ablated, largest rises: {shown}"


def heads_json(ds) -> dict:
    """One record per head, plus the ICL score and ablation (JSON-able)."""
    heads = []
    for l in ds.layer.values:
        for h in ds["head"].values:
            r = ds.sel(layer=l, head=h)
            rec = {"head": f"{int(l)}.{int(h)}", "layer": int(l), "index": int(h)}
            for k in ("prev_token", "duplicate", "induction", "ov_copying", "qk_prefix"):
                v = float(r[k])
                rec[k] = v if np.isfinite(v) else None
            for k in ("prev_token", "duplicate", "induction"):  # with the heads ablated (zero ablation)
                if f"{k}_ablated" in ds:
                    rec[f"{k}_ablated"] = float(r[f"{k}_ablated"])
            for k in ("ov", "qk"):
                re_, im = r[f"{k}_eig_real"].values, r[f"{k}_eig_imag"].values
                ok = np.isfinite(re_)
                rec[f"{k}_eigenvalues"] = [[float(a), float(b)] for a, b in zip(re_[ok], im[ok])]
            heads.append(rec)
    attrs = {k: (json.loads(v) if k in ("icl", "ablation", "settings", "qk_prev_head") else v)
             for k, v in ds.attrs.items()}
    return {"attrs": attrs, "heads": heads}


def plot_ov_qk(ds, path, threshold: float = 0.5) -> Path:
    """Scatter of each head's OV copying score (x) against its QK prefix-matching score (y),
    coloured by induction score; induction heads sit in the positive corner. Block-0 heads
    (no block before them to K-compose with) are drawn on y = 0 as open circles."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    ax.axhspan(0, 1.05, xmin=0.5, xmax=1, color="tab:green", alpha=0.07, lw=0)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ov, qk, ind = ds.ov_copying.values, ds.qk_prefix.values, ds.induction.values
    sc = None
    for l in range(ov.shape[0]):
        for h in range(ov.shape[1]):
            if not np.isfinite(ov[l, h]):
                continue
            y = qk[l, h] if np.isfinite(qk[l, h]) else 0.0
            kw = dict(c=[ind[l, h]], cmap="viridis", vmin=0, vmax=1, s=60, edgecolors="k")
            if not np.isfinite(qk[l, h]):
                kw.update(marker="o", linewidths=1.2, alpha=0.6)
            sc = ax.scatter([ov[l, h]], [y], **kw)
            weight = "bold" if ind[l, h] >= threshold else "normal"
            ax.annotate(f"{l}.{h}", (ov[l, h], y), xytext=(4, 4 - 9 * (h % 4)), textcoords="offset points", fontsize=7,
                        weight=weight)
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="induction score (attention)")
    else:
        ax.text(0, 0, f"no weight scores: {ds.attrs.get('weights')}", ha="center", fontsize=8, wrap=True)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("OV copying score  Σλ/Σ|λ|")
    ax.set_ylabel("QK prefix-matching score  Σλ/Σ|λ|  (block-0 heads at 0)")
    ax.set_title(f"{ds.attrs['model_spec']}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def log_radial(lam: np.ndarray, decades: float = 3.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigenvalues mapped to the plane with radius ``log10(|λ| / (max|λ| 10^-decades))`` (those
    smaller than that floor dropped), angle kept; returns x, y and ``max|λ|``."""
    lam = np.asarray(lam)
    lam = lam[np.isfinite(lam) & (np.abs(lam) > 0)]
    top = float(np.abs(lam).max()) if lam.size else 0.0
    if top == 0:
        return np.zeros(0), np.zeros(0), 0.0
    r = np.log10(np.abs(lam) / (top * 10.0 ** -decades))
    keep = r > 0
    theta = np.angle(lam[keep])
    return r[keep] * np.cos(theta), r[keep] * np.sin(theta), top


def plot_eigenvalues(ds, path, decades: float = 3.0) -> Path:
    """Each head's OV (blue) and QK prefix-matching (orange) eigenvalues in the complex plane on a
    log-radial scale: radius = decades above ``max|λ| · 10^-decades``; the positive real axis
    (right) is copying / prefix matching, the negative (left) anti-copying."""
    plt = pyplot()
    L, H = ds.sizes["layer"], ds.sizes["head"]
    fig, axes = plt.subplots(L, H, figsize=(2.1 * H, 2.2 * L), squeeze=False)
    circle = np.linspace(0, 2 * np.pi, 100)
    for l in range(L):
        for h in range(H):
            ax = axes[l, h]
            for d in range(1, int(decades) + 1):
                ax.plot(d * np.cos(circle), d * np.sin(circle), color="0.85", lw=0.6)
            ax.axhline(0, color="0.7", lw=0.6)
            ax.axvline(0, color="0.7", lw=0.6)
            r = ds.isel(layer=l, head=h)
            for k, color in (("ov", "tab:blue"), ("qk", "tab:orange")):
                lam = r[f"{k}_eig_real"].values + 1j * r[f"{k}_eig_imag"].values
                x, y, _ = log_radial(lam, decades)
                ax.scatter(x, y, s=9, color=color, alpha=0.8, label=k.upper())
            ov, qk = float(r.ov_copying), float(r.qk_prefix)
            ax.set_title(f"{l}.{h}  OV {_f(ov, 2)}  QK {_f(qk, 2)}", fontsize=7)
            ax.set_xlim(-decades - 0.2, decades + 0.2)
            ax.set_ylim(-decades - 0.2, decades + 0.2)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"eigenvalues (log-radial: rings = decades above max|λ|·1e-{decades:g}) · {ds.attrs['model_spec']}",
                 fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- dynamics
def dynamics_table(ds):
    """A rich Table: per checkpoint the ICL score, training loss, and the largest induction,
    previous-token score and OV copying score of the top induction head."""
    from rich import box
    from rich.table import Table

    icl, ind = json.loads(ds.attrs["phase_icl"] or "{}"), json.loads(ds.attrs["phase_induction"] or "{}")
    caption = [f"ICL: {ds.attrs['icl_label']} on {ds.attrs['icl_data']}; loss: training loss",
               f"induct: largest induction score over heads of blocks {ds.attrs['induction_blocks']}; "
               "prev-tok: largest previous-token score; OV ind.: OV copying of that induction head"]
    for name, p in (("ICL score", icl), ("induction score", ind)):
        if p:
            caption.append(f"{name}: knee (largest slope change) at step {p['knee']}; steepest "
                           f"{p['jump_from']}→{p['jump_to']} ({p['jump']:+.3f} of {p['total']:+.3f})")
    table = Table(title=f"through training · {ds.attrs['source']}", caption="\n".join(caption),
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("step", "loss", "ICL", "induct (head)", "prev-tok (head)", "OV ind."):
        table.add_column(col, justify="right", no_wrap=True)
    first = 1 if ds.sizes["layer"] > 1 else 0
    for i, step in enumerate(ds.checkpoint.values):
        r = ds.isel(checkpoint=i)
        sub = r.induction.isel(layer=slice(first, None)).values
        l, h = np.unravel_index(np.argmax(sub), sub.shape)
        l += first
        pt = r.prev_token.values
        pl, ph = np.unravel_index(np.argmax(pt), pt.shape)
        marks = []
        if icl and int(step) == icl["knee"]:
            marks.append("ICL knee")
        if ind and int(step) == ind["knee"]:
            marks.append("ind. knee")
        table.add_row(f"{int(step)}", _f(float(r.train_loss), 3), _f(float(r.icl_score), 3),
                      f"{float(r.induction.values[l, h]):.3f} ({l}.{h})", f"{float(pt[pl, ph]):.3f} ({pl}.{ph})",
                      _f(float(r.ov_copying.values[l, h]), 2), style="bold" if marks else None)
    return table


def dynamics_json(ds) -> dict:
    first = 1 if ds.sizes["layer"] > 1 else 0
    rows = []
    for i, step in enumerate(ds.checkpoint.values):
        r = ds.isel(checkpoint=i)
        rows.append({"step": int(step), "icl_score": float(r.icl_score), "train_loss": _none(float(r.train_loss)),
                     "induction_max": float(r.induction_max),
                     **{k: {f"{l}.{h}": _none(float(r[k].values[l, h])) for l in range(first if k == "qk_prefix" else 0,
                                                                                    ds.sizes["layer"])
                            for h in range(ds.sizes["head"])}
                        for k in ("induction", "prev_token", "duplicate", "ov_copying", "qk_prefix")}})
    attrs = {k: (json.loads(v) if k.startswith("phase_") or k == "settings" else v) for k, v in ds.attrs.items()}
    return {"attrs": attrs, "checkpoints": rows}


def _none(v: float):
    return v if np.isfinite(v) else None


def plot_dynamics(ds, path) -> Path:
    """One figure: the ICL score (left axis, black) and each block >= 1 head's induction score
    (right axis, colours) against the training step, with each curve's knee marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.3))
    steps = ds.checkpoint.values
    ax.plot(steps, ds.icl_score.values, "k-o", ms=3, lw=1.8, label="ICL score")
    ax.set_xlabel("training step")
    ax.set_ylabel("ICL score (nats; lower = more in-context learning)", fontsize=8)
    ax2 = ax.twinx()
    first = 1 if ds.sizes["layer"] > 1 else 0
    for l in range(first, ds.sizes["layer"]):
        for h in range(ds.sizes["head"]):
            ax2.plot(steps, ds.induction.values[:, l, h], "-", lw=1.0, alpha=0.8, label=f"induction {l}.{h}")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("induction score (attention to the token after the previous occurrence)", fontsize=7)
    ax2.set_xlim(ax.get_xlim())
    for key, color, name in (("phase_icl", "k", "ICL knee"), ("phase_induction", "tab:red", "induction knee")):
        p = json.loads(ds.attrs.get(key) or "{}")
        if p:
            ax.axvline(p["knee"], color=color, ls="--", lw=1, label=f"{name} @ {p['knee']}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=6, loc="center right")
    ax.set_title(f"{ds.attrs['source']}\nICL score: {ds.attrs['icl_label']}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loss_by_position(ds, path) -> Path:
    """Mean loss at each position, clean and (if ablated) with the ablated heads."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run in ds.run.values:
        ax.plot(ds.pos.values if "pos" in ds.coords else np.arange(ds.sizes["pos"]),
                ds.loss_by_pos.sel(run=run).values, label=str(run))
    icl = json.loads(ds.attrs.get("icl", "{}"))
    for key in ("late", "early"):
        if key in icl:
            ax.axvline(icl[key], color="0.6", ls=":", lw=1)
    ax.set_xlabel("position")
    ax.set_ylabel("loss (nats)")
    ax.legend(fontsize=7)
    ax.set_title(f"{ds.attrs['model_spec']} · {icl.get('data', '')}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def render_heads(ds, png: Path, threshold: float = 0.5) -> tuple[list[Path], dict, object]:
    """Everything ``probekit heads --model`` shows: the OV/QK scatter at ``png``, the eigenvalues
    beside it (``.eig.png``) and, when the ICL score ran, the loss by position (``.loss.png``);
    returns ``(plots, JSON payload, rich Table)``."""
    pngs = [plot_ov_qk(ds, png, threshold), plot_eigenvalues(ds, png.with_name(f"{png.stem}.eig{png.suffix}"))]
    if "loss_by_pos" in ds:
        pngs.append(plot_loss_by_position(ds, png.with_name(f"{png.stem}.loss{png.suffix}")))
    return pngs, heads_json(ds), heads_table(ds, threshold)


def render_dynamics(ds, png: Path) -> tuple[list[Path], dict, object]:
    """Everything ``probekit heads --checkpoints`` shows: the dynamics figure at ``png``;
    returns ``(plots, JSON payload, rich Table)``."""
    return [plot_dynamics(ds, png)], dynamics_json(ds), dynamics_table(ds)
