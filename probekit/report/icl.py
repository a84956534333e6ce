"""Tables and figures of ``probekit icl`` (:func:`probekit.lenses.icl.icl_curve`'s Dataset)."""

from __future__ import annotations

import numpy as np

from probekit.report.figures import pyplot, save_figure


def icl_table(res):
    """A rich Table: n, P(correct), mean logit (and the ideal observer's), with the fits below."""
    from rich import box
    from rich.table import Table

    ideal = "ideal_mean_logit" in res
    caption = f"model: logit = {res.attrs['slope']:.3f}·n {res.attrs['intercept']:+.3f} (R² {res.attrs['r2']:.3f})"
    if ideal:
        caption += f" · ideal Bayesian: slope {res.attrs['ideal_slope']:.3f} (R² {res.attrs['ideal_r2']:.3f})"
        if "ideal_asymptotic_slope" in res.attrs:
            caption += f", asymptotically {res.attrs['ideal_asymptotic_slope']:.3f} per example"
    table = Table(title=f"{res.attrs['model_spec']} · {res.attrs['task']} · P(correct) vs examples",
                  caption=caption, box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("n", "P(correct)", "mean logit", *(["ideal logit"] if ideal else [])):
        table.add_column(col, justify="right")
    for k, n in enumerate(res.n_examples.values):
        row = [str(int(n)), f"{float(res.p_correct[k]):.4f}", f"{float(res.mean_logit[k]):+.3f}"]
        if ideal:
            row.append(f"{float(res.ideal_mean_logit[k]):+.3f}")
        table.add_row(*row)
    return table


def plot_icl(res, path):
    """PNG: mean logit P(correct) against n with its line fit, and the ideal observer's curve."""
    n = res.n_examples.values
    fig, ax = pyplot().subplots(figsize=(6, 4))
    sem = res.logit.std("prompt") / np.sqrt(res.sizes["prompt"])
    ax.errorbar(n, res.mean_logit, yerr=1.96 * sem, fmt="o", label="model (95% CI)")
    ax.plot(n, res.attrs["slope"] * n + res.attrs["intercept"], "-",
            label=f"line fit: slope {res.attrs['slope']:.3f}, R² {res.attrs['r2']:.3f}")
    if "ideal_mean_logit" in res:
        ax.plot(n, res.ideal_mean_logit, "k--", label="ideal Bayesian observer")
    ax.set_xlabel("examples in the prompt (n)")
    ax.set_ylabel("logit P(correct answer)")
    ax.set_title(f"{res.attrs['model_spec']} · {res.attrs['task']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
