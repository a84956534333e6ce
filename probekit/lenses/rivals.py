"""Rivals in the behavioural comparison: is the model closer to the hypothesis than to each rival?

A match only means something if the alternatives fail it. A hypothesis names rival algorithms
(:meth:`probekit.Hypothesis.rivals`: a wrong prior, GD at another step size, a converged solver);
``compare`` fits each on the same tasks as the hypothesis and runs it on the same held-out tasks.
Here, per algorithm, the model's **distance** to it is ``pred_diff`` (|ŷ_model − ŷ_alg| for
continuous outputs, the total-variation distance of the predictive distributions for tokens),
and the evidence is the **paired** difference over the same held-out tasks,

    gap(rival) = distance(model, rival) − distance(model, hypothesis),

with a 95 % bootstrap interval whose resamples (of held-out tasks, all the positions of a task
together) are the same for every algorithm. A lower bound above 0 says the data exclude the
rival: the model is closer to the hypothesis. The model-vs-algorithm loss difference gets the
same paired interval (``loss_gap``). This module computes; :mod:`probekit.report.compare` renders.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 1000


class PairedBootstrap:
    """One set of bootstrap resamples of held-out tasks, shared by every quantity: paired CIs.

    ``sample`` gives the held-out task of every compared row; a resample draws tasks with
    replacement (all of a task's rows together), and a quantity's estimate is its mean over the
    drawn rows.
    """

    def __init__(self, sample: np.ndarray, n_boot: int = N_BOOT, seed: int = 0):
        ids, self.inverse = np.unique(np.asarray(sample), return_inverse=True)
        self.n_tasks = len(ids)
        rng = np.random.default_rng(seed)
        self.weights = rng.multinomial(self.n_tasks, np.full(self.n_tasks, 1 / self.n_tasks),
                                       size=n_boot).astype(np.float64)  # [n_boot, tasks]

    def mean_ci(self, values: np.ndarray) -> tuple[float, float, float]:
        """Mean of per-row ``values`` and its 95 % percentile interval over the resamples (rows that are
        not finite, e.g. the cosine of a zero sensitivity, are left out)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.inverse.shape:
            raise ValueError(f"{values.shape[0]} values for {self.inverse.shape[0]} rows")
        finite = np.isfinite(values)
        if not finite.any():
            return float("nan"), float("nan"), float("nan")
        per_task = np.bincount(self.inverse, weights=np.where(finite, values, 0.0), minlength=self.n_tasks)
        rows = np.bincount(self.inverse, weights=finite.astype(np.float64), minlength=self.n_tasks)
        with np.errstate(invalid="ignore", divide="ignore"):
            boots = (self.weights @ per_task) / (self.weights @ rows)
        return (float(per_task.sum() / rows.sum()), float(np.nanpercentile(boots, 2.5)),
                float(np.nanpercentile(boots, 97.5)))


def rival_table(records: dict, hypotheses: list[str], boot: PairedBootstrap, tokens: bool, logit_r2) -> dict:
    """Per hypothesis: the paired loss gap and the closest algorithm; per rival: its loss, the model's
    distance to it, the paired gap to the hypothesis, whether the interval excludes it and (tokens)
    its log-odds R² against the model. Returns the columns as lists for :func:`rivals_dataset`."""
    out: dict[str, list] = {k: [] for k in ("loss_gap", "closest", "rival", "rival_of", "rival_name",
                                             "rival_loss", "rival_dist", "rival_gap", "rival_agree")}
    for h in hypotheses:
        own = records[h]["id"]
        out["loss_gap"].append(boot.mean_ci(own["loss_model"] - own["loss_alg"]))
        rivals = records[h].get("rivals", {})
        dist = {h: float(np.mean(own["pred_diff"]))}
        for name, rows in rivals.items():
            dist[name] = float(np.mean(rows["pred_diff"]))
            out["rival"].append(f"{h}: {name}")
            out["rival_of"].append(h)
            out["rival_name"].append(name)
            out["rival_loss"].append(boot.mean_ci(rows["loss_alg"]))
            out["rival_dist"].append(boot.mean_ci(rows["pred_diff"]))
            out["rival_gap"].append(boot.mean_ci(rows["pred_diff"] - own["pred_diff"]))
            out["rival_agree"].append(logit_r2(rows) if tokens else boot.mean_ci(rows["model_cos"]))
        out["closest"].append(min(dist, key=dist.get))
    return out


def rivals_dataset(cols: dict, tokens: bool) -> tuple[dict, dict]:
    """xarray ``(data_vars, coords)`` of :func:`rival_table`'s columns: ``loss_gap`` and ``closest`` on
    the hypothesis dimension; ``rival_*`` on a ``rival`` dimension (``"<hypothesis>: <rival>"``, with
    coordinates ``rival_of`` and ``rival_name``)."""
    data: dict = {}
    gap = np.array(cols["loss_gap"], dtype=np.float64).reshape(-1, 3)
    data["loss_gap"] = (("hypothesis",), gap[:, 0], {"description": "paired mean of loss_model - loss_alg"})
    data["loss_gap_lo"], data["loss_gap_hi"] = (("hypothesis",), gap[:, 1]), (("hypothesis",), gap[:, 2])
    data["closest"] = (("hypothesis",), np.array(cols["closest"], dtype=str),
                       {"description": "the algorithm (the hypothesis or a rival) the model's predictions are closest to"})
    agree = "rival_logit_r2" if tokens else "rival_cos"
    described = {
        "rival_loss": "loss of the rival algorithm",
        "rival_dist": "the model's distance to the rival (pred_diff)",
        "rival_gap": "paired mean of distance(model, rival) - distance(model, hypothesis); > 0: closer to the hypothesis",
        agree: ("R² of the model's centred log-probabilities against the rival's" if tokens
                else "cosine of the sensitivities of model and rival"),
    }
    for var, key in (("rival_loss", "rival_loss"), ("rival_dist", "rival_dist"), ("rival_gap", "rival_gap"),
                     (agree, "rival_agree")):
        stats = np.array(cols[key], dtype=np.float64).reshape(-1, 3)
        data[var] = (("rival",), stats[:, 0], {"description": described[var]})
        data[var + "_lo"], data[var + "_hi"] = (("rival",), stats[:, 1]), (("rival",), stats[:, 2])
    data["rival_excluded"] = (("rival",), np.array([s[1] > 0 for s in cols["rival_gap"]], dtype=bool),
                              {"description": "the gap's 95 % interval lies above 0: the model is closer to the hypothesis"})
    coords = {"rival": list(cols["rival"]), "rival_of": ("rival", list(cols["rival_of"])),
              "rival_name": ("rival", list(cols["rival_name"]))}
    return data, coords
