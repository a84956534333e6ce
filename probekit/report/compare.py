"""Tables, JSON and figures of ``probekit compare`` (:func:`probekit.lenses.compare.run_compare`'s Dataset)."""

from __future__ import annotations

import json
from pathlib import Path

from probekit.lenses.compare import METRICS
from probekit.report.figures import pyplot, save_figure


def compare_json(results) -> str:
    """The results as JSON: one record per hypothesis (and the OOD curve)."""
    out = {"attrs": {k: (json.loads(v) if k in ("fitted", "settings", "task_params") else v)
                     for k, v in results.attrs.items()}, "hypotheses": []}
    for h in results.hypothesis.values:
        r = results.sel(hypothesis=h)
        rec = {"hypothesis": str(h)}
        for metric in (*METRICS, "logit_r2"):
            if metric in results:
                rec[metric] = [float(r[metric]), float(r[metric + "_lo"]), float(r[metric + "_hi"])]
        if "loss_gap" in results:
            rec["loss_gap"] = [float(r["loss_gap"]), float(r["loss_gap_lo"]), float(r["loss_gap_hi"])]
            rec["closest"] = str(r["closest"].values)
            rec["rivals"] = _rivals_json(results, str(h))
        if "scale" in results.coords:
            rec["ood"] = {metric: {f"{float(s):g}": float(r["ood_" + metric].sel(scale=s)) for s in results.scale.values}
                          for metric in ("loss_model", "loss_alg", "model_cos")}
        out["hypotheses"].append(rec)
    return json.dumps(out, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _triple(r, var: str) -> list[float]:
    return [float(r[var]), float(r[var + "_lo"]), float(r[var + "_hi"])]


def _rivals_json(results, h: str) -> list[dict]:
    """One record per rival of hypothesis ``h``: loss, distance, paired gap, excluded, cos / log-odds R²."""
    if "rival" not in results.dims:
        return []
    agree = "rival_logit_r2" if "rival_logit_r2" in results else "rival_cos"
    out = []
    for rv in results.rival.values[results.rival_of.values == h]:
        r = results.sel(rival=rv)
        out.append({"rival": str(r.rival_name.values), "loss": _triple(r, "rival_loss"),
                    "distance": _triple(r, "rival_dist"), "gap": _triple(r, "rival_gap"),
                    "excluded": bool(r.rival_excluded), agree.removeprefix("rival_"): _triple(r, agree)})
    return out


def compare_table(results):
    """The comparison table and, when a hypothesis names rivals, the rivals table (a rich Group)."""
    from rich.console import Group

    tables = [_main_table(results)]
    if "rival" in results.dims and results.sizes["rival"]:
        tables.append(rivals_table(results))
    return Group(*tables)


def rivals_table(results):
    """Per hypothesis, itself and each rival: its loss, the model's distance to it, the paired gap
    distance(rival) − distance(hypothesis) with its 95 % bootstrap CI, and whether the CI excludes the rival."""
    from rich import box
    from rich.table import Table

    tokens = results.attrs.get("output_kind") == "tokens"
    dist, agree = ("TV distance", "log-odds R²") if tokens else ("|ŷ model − ŷ alg|", "model cos")
    table = Table(title="the hypothesis against its rivals · the same held-out tasks",
                  caption="gap: distance(model, rival) − distance(model, hypothesis), mean [95% paired bootstrap CI] "
                          "over held-out tasks; excluded: the CI lies above 0 (the model is closer to the hypothesis)",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("hypothesis", "algorithm", "fitted", "loss", dist, "gap (paired)", "excluded", agree, "closest"):
        table.add_column(col, justify="left" if col in ("hypothesis", "algorithm", "fitted", "excluded") else "right",
                         no_wrap=True)
    own_agree = "logit_r2" if tokens else "model_cos"
    fitted = json.loads(results.attrs.get("fitted", "{}"))
    for h in results.hypothesis.values:
        r = results.sel(hypothesis=h)
        closest = str(r.closest.values)
        table.add_row(str(h), f"[bold]{h}[/bold] (hypothesis)", _fitted_words(fitted.get(str(h))),
                      f"{float(r.loss_alg):.4f}", f"{float(r.pred_diff):.4f}", "", "", f"{float(r[own_agree]):.4f}",
                      "◀" if closest == str(h) else "")
        for rv in results.rival.values[results.rival_of.values == h]:
            q = results.sel(rival=rv)
            m, lo, hi = _triple(q, "rival_gap")
            verdict = ("yes" if lo > 0 else "no: closer to the rival" if hi < 0
                       else "no: same predictions" if max(abs(lo), abs(hi)) < 1e-12 else "no: CI spans 0")
            name = str(q.rival_name.values)
            table.add_row("", name, _fitted_words(fitted.get(f"{h}: {name}")), f"{float(q.rival_loss):.4f}",
                          f"{float(q.rival_dist):.4f}",
                          f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]", verdict,
                          f"{float(q['rival_' + ('logit_r2' if tokens else 'cos')]):.4f}",
                          "◀" if closest == name else "")
    return table


def _fitted_words(fitted) -> str:
    """A short view of fitted step sizes (η, and γ for GD++) or a prior's concentration; '' otherwise."""
    fitted = fitted or {}
    words = []
    for key, sym in (("etas", "η"), ("gammas", "γ"), ("concentration", "c")):
        v = fitted.get(key)
        if isinstance(v, (int, float)):
            v = [v]
        if isinstance(v, list) and v and all(isinstance(e, (int, float)) for e in v):
            words.append(f"{sym} " + "/".join(f"{e:.3g}" for e in v))
    return " ".join(words)


def _main_table(results):
    """A rich Table: one row per hypothesis with each metric's mean and 95 % CI."""
    from rich import box
    from rich.table import Table

    n = json.loads(results.attrs["settings"])["n_samples"]
    if results.attrs.get("output_kind") == "tokens":
        return _token_table(results, n)
    table = Table(title=f"{results.attrs['model_spec']} vs algorithm · {n:,} held-out {results.attrs['task']} tasks",
                  caption=f"mean ± half its 95% CI over tasks · loss: ½ squared error (predicting 0: "
                          f"{float(results.loss_zero.values[0]):.4f}) · cos, L2: sensitivities ∂ŷ/∂x",
                  box=box.SIMPLE_HEAD, padding=(0, 1), show_lines=True)
    for col in ("algorithm", "loss model", "loss alg", "model − alg (paired)", "|ŷ model − ŷ alg|", "model cos",
                "sens. L2"):
        table.add_column(col, justify="left" if col == "algorithm" else "right", no_wrap=True)
    for h in results.hypothesis.values:
        r = results.sel(hypothesis=h)

        def cell(metric: str, digits: int = 4) -> str:
            m, lo, hi = (float(r[metric + s]) for s in ("", "_lo", "_hi"))
            return f"{m:.{digits}f}\n[dim]±{(hi - lo) / 2:.{digits}f}[/dim]"

        table.add_row(str(h), cell("loss_model"), cell("loss_alg"), _gap_cell(r), cell("pred_diff"),
                      cell("model_cos"), cell("model_l2"))
    return table


def _token_table(results, n: int):
    from rich import box
    from rich.table import Table

    table = Table(title=f"{results.attrs['model_spec']} vs algorithm · {n:,} held-out {results.attrs['task']} sequences",
                  caption=f"mean ± half its 95% CI · loss: next-token cross-entropy in nats (uniform: "
                          f"{float(results.loss_zero.values[0]):.4f}) · TV: total-variation distance of the "
                          f"predictive distributions · log-odds R²: model vs algorithm, bootstrap CI over sequences",
                  box=box.SIMPLE_HEAD, padding=(0, 1), show_lines=True)
    for col in ("algorithm", "loss model", "loss alg", "model − alg (paired)", "TV distance", "log-odds R²"):
        table.add_column(col, justify="left" if col == "algorithm" else "right", no_wrap=True)
    for h in results.hypothesis.values:
        r = results.sel(hypothesis=h)
        cell = lambda m: f"{float(r[m]):.4f}\n[dim]±{(float(r[m + '_hi']) - float(r[m + '_lo'])) / 2:.4f}[/dim]"  # noqa: E731
        table.add_row(str(h), cell("loss_model"), cell("loss_alg"), _gap_cell(r), cell("pred_diff"), cell("logit_r2"))
    return table


def _gap_cell(r) -> str:
    """loss_model − loss_alg with its paired 95 % bootstrap interval."""
    if "loss_gap" not in r:
        return ""
    m, lo, hi = _triple(r, "loss_gap")
    return f"{m:+.4f}\n[dim][{lo:+.4f}, {hi:+.4f}][/dim]"


def plot_compare(results, path):
    """PNG: loss of model and algorithms against the out-of-distribution scale (left) and the
    sensitivity cosine (right), with 95 % bands; the training distribution is at scale 1."""
    fig, (ax_l, ax_c) = pyplot().subplots(1, 2, figsize=(10, 4))
    if "scale" not in results.coords:
        ax_l.bar(["model", *map(str, results.hypothesis.values)],
                 [float(results.loss_model.values[0]), *results.loss_alg.values])
        right = "logit_r2" if "logit_r2" in results else "model_cos"
        ax_c.bar(list(map(str, results.hypothesis.values)), results[right].values)
    else:
        s = results.scale.values
        first = results.isel(hypothesis=0)
        ax_l.plot(s, first.ood_loss_model, "k-o", label="model")
        for h in results.hypothesis.values:
            r = results.sel(hypothesis=h)
            line, = ax_l.plot(s, r.ood_loss_alg, "--s", label=str(h))
            ax_c.plot(s, r.ood_model_cos, "-o", color=line.get_color(), label=str(h))
            ax_c.fill_between(s, r.ood_model_cos_lo, r.ood_model_cos_hi, color=line.get_color(), alpha=0.2)
        ax_l.set_yscale("log")
        ax_l.legend()
        ax_c.legend()
        for ax in (ax_l, ax_c):
            ax.set_xlabel(f"{results.attrs['ood_param']} × scale")
            ax.axvline(1.0, color="0.7", lw=0.8)
    tokens = results.attrs.get("output_kind") == "tokens"
    ax_l.set_ylabel("cross-entropy (nats)" if tokens else "½ squared error")
    ax_c.set_ylabel("log-odds R² (model vs algorithm)" if tokens else "model cos (sensitivities)")
    fig.suptitle(f"{results.attrs['model_spec']} · {results.attrs['task']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(path))
