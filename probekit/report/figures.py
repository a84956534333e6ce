"""Figures: the one matplotlib set-up (the non-interactive Agg backend), a panel grid, and
:func:`save_figure`, which every PNG probekit writes goes through."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, never a window); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_grid(n: int, max_cols: int, panel: tuple[float, float], **kw):
    """A figure of ``n`` panels in rows of at most ``max_cols``, each ``panel`` = (width, height)
    inches; returns ``(fig, axes)`` with ``axes`` 2-D (``squeeze=False``). Panels past ``n`` are
    left for the caller to switch off (:func:`hide_unused`)."""
    ncol = min(max_cols, n)
    nrow = -(-n // ncol)
    return pyplot().subplots(nrow, ncol, figsize=(panel[0] * ncol, panel[1] * nrow), squeeze=False, **kw)


def hide_unused(axes, n: int) -> None:
    """Switch off the panels after the first ``n``."""
    for ax in axes.flat[n:]:
        ax.axis("off")


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Write ``fig`` at ``path`` (PNG, or PDF/SVG by its suffix; making its folder) and close it;
    returns the path. ``path`` must be absent or a figure file (:func:`probekit.outputs.check_output`);
    the file is written beside it and renamed into place, so it is never half-written."""
    from probekit import outputs

    plt = pyplot()
    path = outputs.check_output(path, outputs.FIGURE, option="--plot")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with outputs.replacing(path) as stage:
            fig.savefig(stage, dpi=dpi, format=path.suffix.lstrip(".").lower())
    finally:
        plt.close(fig)
    return path
