"""In-context learning curves: P(correct answer) against the number of examples in the prompt.

For a *prompt task* — a task with ``prompts(n_examples, count, seed) -> [{"text", "answer",
...}]`` (e.g. ``affine-prompts``) — and any model with a tokenizer (``hf:``), score the
log-probability of the answer's tokens after each prompt (teacher forcing), for
n = 0..N examples. The curve of mean logit P(correct) against n is fitted by a line
(slope, intercept, R²): a Bayesian observer whose evidence adds a constant per example
predicts a straight line. If the task has ``ideal_log_odds(prompt, epsilon)`` (the exact
Bayesian observer's log-odds of the answer), the ideal curve and its asymptotic slope are
reported beside the model's.

This module computes (:func:`icl_curve` returns an xarray Dataset); its table and figure are in
:mod:`probekit.report.icl`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from probekit.errors import UsageError


@dataclass(frozen=True)
class ICLSettings:
    count: int = 50  # prompts per n
    max_examples: int | None = None  # default: the task's own
    seed: int = 0
    epsilon: float = 0.05  # noise level of the ideal Bayesian observer
    batch_size: int = 16

    def __post_init__(self):
        if self.count < 1 or self.batch_size < 1 or not 0 < self.epsilon < 1:
            raise UsageError("icl needs count >= 1, batch_size >= 1 and 0 < epsilon < 1")


def answer_log_probs(adapter, texts: list[str], answers: list[str], batch_size: int = 16) -> np.ndarray:
    """log P(answer tokens | prompt) for each pair, by teacher forcing: the answer's tokens are
    found by :func:`probekit.lenses.interventions.pairs.encode_prompt` and scored by
    :func:`probekit.lenses.interventions.patching.answer_logprobs` (the same path ``probekit patch`` uses)."""
    from probekit.lenses.interventions.patching import answer_logprobs
    from probekit.lenses.interventions.pairs import encode_prompt

    from probekit.models.capabilities import has

    if not has(adapter, "tokenizer"):
        raise UsageError(f"in-context curves need a model with a tokenizer (hf:); {adapter.spec} has none")
    encoded = [encode_prompt(adapter.tokenizer, t, a) for t, a in zip(texts, answers)]
    return answer_logprobs(adapter, [p for p, _ in encoded], [a for _, a in encoded], batch_size=batch_size)


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R² of y against x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss = ((y - y.mean()) ** 2).sum()
    return float(slope), float(intercept), float(1 - (resid**2).sum() / ss) if ss > 0 else float("nan")


def icl_curve(adapter, task, settings: ICLSettings, *,
              on_progress: Callable[[str, int, int], None] | None = None):
    """The curve as an xarray Dataset over ``n_examples`` (per-prompt values kept on ``prompt``)."""
    import xarray as xr

    if not hasattr(task, "prompts"):
        raise UsageError(f"task {task.name!r} is not a prompt task (it has no prompts(n, count, seed))")
    n_max = settings.max_examples if settings.max_examples is not None else task.params.max_examples
    ns = np.arange(n_max + 1)
    logp = np.empty((len(ns), settings.count))
    ideal = np.full((len(ns), settings.count), np.nan)
    has_ideal = hasattr(task, "ideal_log_odds")
    for k, n in enumerate(ns):
        prompts = task.prompts(int(n), settings.count, settings.seed)
        logp[k] = answer_log_probs(adapter, [p["text"] for p in prompts], [p["answer"] for p in prompts],
                                   settings.batch_size)
        if has_ideal:
            ideal[k] = [task.ideal_log_odds(p, settings.epsilon) for p in prompts]
        if on_progress:
            on_progress(f"n = {n}", k + 1, len(ns))
    # log-odds of the correct answer; log1p(-p) stays finite for p -> 1 within float64
    logit = logp - np.log(-np.expm1(np.minimum(logp, -1e-12)))
    mean_logit = logit.mean(1)
    slope, intercept, r2 = line_fit(ns, mean_logit)
    data = {
        "log_prob": (("n_examples", "prompt"), logp, {"description": "log P(correct answer tokens)"}),
        "logit": (("n_examples", "prompt"), logit, {"description": "log-odds of the correct answer"}),
        "p_correct": (("n_examples",), np.exp(logp).mean(1)),
        "mean_logit": (("n_examples",), mean_logit),
    }
    attrs = {"model_spec": adapter.spec, "task": task.name, "task_params": json.dumps(asdict(task.params)),
             "settings": json.dumps(asdict(settings)), "slope": slope, "intercept": intercept, "r2": r2}
    if has_ideal:
        data["ideal_logit"] = (("n_examples", "prompt"), ideal, {"description": "ideal Bayesian log-odds"})
        data["ideal_mean_logit"] = (("n_examples",), ideal.mean(1))
        attrs["ideal_slope"], _, attrs["ideal_r2"] = line_fit(ns, ideal.mean(1))
        if hasattr(task, "asymptotic_slope"):
            attrs["ideal_asymptotic_slope"] = task.asymptotic_slope(settings.epsilon)
    return xr.Dataset(data, coords={"n_examples": ns, "prompt": np.arange(settings.count)}, attrs=attrs)


def save_curve(res, path) -> None:
    """Write the curve as a zarr store at ``path``, marked as an icl curve. ``path`` must be
    absent, an empty folder or an earlier icl curve (replaced, once the new one is complete)."""
    from probekit import outputs

    path = outputs.check_output(path, outputs.CURVE)
    res = res.assign_attrs({outputs.CURVE_KIND_ATTR: outputs.CURVE_KIND})
    path.parent.mkdir(parents=True, exist_ok=True)
    with outputs.replacing(path) as stage:
        res.to_zarr(stage, mode="w-", zarr_format=3, consolidated=False)
