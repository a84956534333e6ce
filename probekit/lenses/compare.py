"""Behavioural comparison of a model with a hypothesis' algorithm on held-out tasks.

For every held-out task the model and the algorithm (a hypothesis with ``fit`` and
``predict``; its hyperparameters fitted to *separate* task samples, never to the
model) are run on the same inputs. At the positions the task trains (its loss mask)
we report, each as a mean over tasks with a 95 % confidence interval:

* ``loss_model``, ``loss_alg`` and ``loss_zero`` (predicting 0): 1/2 squared error;
* ``pred_diff``: |y_model - y_alg|;
* ``model_cos``: cos(s_model, s_alg) with s = d output / d input (autograd), over the
  input features the task names (e.g. x_q) at the compared position — the
  "sensitivity cosine" of von Oswald et al., which must reach 1 for "the model
  implements the algorithm", not just matching losses;
* ``model_l2``: |s_model - s_alg|;
* ``loss_gap``: loss_model - loss_alg, its interval *paired* over the same tasks (bootstrap).

Each hypothesis' rivals (:meth:`probekit.Hypothesis.rivals`) are fitted and run on the same
tasks, and the model's distance to each is set against its distance to the hypothesis with
paired bootstrap intervals (:mod:`probekit.lenses.rivals`); ``closest`` names the nearest.

An out-of-distribution sweep scales the task parameter its ``ood_param`` names (for
``linreg``: the input range) by each factor and repeats the losses and the cosine.

This module computes (:func:`run_compare` returns an xarray Dataset); its table, JSON and
figure are in :mod:`probekit.report.compare`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from probekit.errors import DataError, UsageError
from probekit.lenses.rivals import PairedBootstrap, rival_table, rivals_dataset

DEFAULT_OOD = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
#: per-task metrics: name -> description
METRICS = {
    "loss_model": "1/2 squared error of the model",
    "loss_alg": "1/2 squared error of the algorithm",
    "loss_zero": "1/2 squared error of predicting 0",
    "pred_diff": "|prediction of the model - prediction of the algorithm|",
    "model_cos": "cosine of the sensitivities d output / d input of model and algorithm",
    "model_l2": "L2 distance of the sensitivities",
}


@dataclass(frozen=True)
class CompareSettings:
    n_samples: int = 10_000  # held-out tasks
    seed: int = 5  # seed of the held-out tasks (von Oswald evaluate with PRNGKey(5))
    fit_samples: int = 10_000  # tasks the algorithm's hyperparameters are fitted on
    fit_seed: int = 6
    batch_size: int = 2048
    ood_scales: tuple[float, ...] = DEFAULT_OOD  # () for none
    ood_samples: int = 2000
    task: str | None = None  # default: the task the toy model was trained on
    task_params: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # hypothesis options
    device: str = "cpu"

    def __post_init__(self):
        if self.n_samples < 2 or self.fit_samples < 1 or self.batch_size < 1 or self.ood_samples < 2:
            raise UsageError("compare needs n_samples >= 2, fit_samples >= 1, batch_size >= 1, ood_samples >= 2")
        if any(s <= 0 for s in self.ood_scales):
            raise UsageError(f"out-of-distribution scales must be > 0, got {list(self.ood_scales)}")


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and normal-approximation 95 % interval over tasks (NaNs, e.g. zero sensitivities, dropped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    half = 1.959964 * float(v.std(ddof=1)) / np.sqrt(v.size) if v.size > 1 else float("nan")
    return m, m - half, m + half


def _task_for(host, adapter, settings: CompareSettings):
    """The task to compare on: ``settings.task`` or the one the toy model was trained on."""
    from probekit.tasks.resolve import resolve_task

    resolved = resolve_task(host, adapter, settings.task, settings.task_params)
    return resolved.cls, resolved.params


def _model_fn(adapter) -> Callable:
    """The model as a torch function: continuous inputs -> outputs (differentiable), or token ids ->
    log-probabilities (float64 on the CPU)."""
    import torch

    from probekit.models.capabilities import has, require

    require(adapter, "differentiable", "compare")
    model, device = adapter.forward, adapter.device
    if has(adapter, "tokens"):
        def forward_tokens(x: "torch.Tensor") -> "torch.Tensor":
            with torch.no_grad():
                return model(x.to(device)).double().log_softmax(-1).cpu()

        return forward_tokens

    def forward(x: "torch.Tensor") -> "torch.Tensor":
        return model(x.to(device=device, dtype=torch.float32)).to("cpu", torch.float64)

    return forward


def per_task_tokens(model_fn, hyp, task, ds, batch_size: int) -> dict[str, np.ndarray]:
    """Token tasks: per (sample, position) in the loss mask, the cross-entropy of the next token under
    model and algorithm (``loss_zero``: the uniform predictor), the total-variation distance of
    their predictive distributions (``pred_diff``), and their centred log-probabilities for
    :func:`logit_r2` (sensitivities are not defined for discrete inputs: NaN)."""
    import torch

    io = task.io
    tokens = np.asarray(ds[io.input_var].values)
    target = np.asarray(ds[io.target_var].values)
    mask = (np.asarray(ds[io.loss_mask_var].values, dtype=bool) if io.loss_mask_var
            else np.ones(tokens.shape[:2], dtype=bool))
    rows: dict[str, list] = {k: [] for k in (*METRICS, "centred_model", "centred_alg", "sample")}
    for start in range(0, len(tokens), batch_size):
        sl = slice(start, start + batch_size)
        x = torch.as_tensor(tokens[sl])
        lp_m, lp_a = model_fn(x), hyp.predict(x).double()
        if lp_m.shape != lp_a.shape:
            raise DataError(f"hypothesis {hyp.name!r} predicts shape {tuple(lp_a.shape)}, the model {tuple(lp_m.shape)}")
        keep = torch.as_tensor(mask[sl])
        y = torch.as_tensor(target[sl])[keep]
        lp_m, lp_a = lp_m[keep], lp_a[keep]  # [rows, vocab]
        rows["loss_model"].append(-lp_m.gather(-1, y[:, None])[:, 0])
        rows["loss_alg"].append(-lp_a.gather(-1, y[:, None])[:, 0])
        rows["loss_zero"].append(torch.full((len(y),), float(np.log(lp_m.shape[-1])), dtype=torch.float64))
        rows["pred_diff"].append(0.5 * (lp_m.exp() - lp_a.exp()).abs().sum(-1))
        rows["model_cos"].append(torch.full((len(y),), torch.nan, dtype=torch.float64))
        rows["model_l2"].append(torch.full((len(y),), torch.nan, dtype=torch.float64))
        rows["centred_model"].append(lp_m - lp_m.mean(-1, keepdim=True))
        rows["centred_alg"].append(lp_a - lp_a.mean(-1, keepdim=True))
        rows["sample"].append(torch.as_tensor(np.nonzero(mask[sl])[0] + start))
    return {k: torch.cat(v).numpy() for k, v in rows.items()}


def logit_r2(rows: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """R² of the model's centred log-probabilities against the algorithm's, pooled over rows and
    classes (for two classes: exactly the R² of the log-odds), with a 95 % bootstrap CI over samples."""
    sse = ((rows["centred_model"] - rows["centred_alg"]) ** 2).sum(-1)
    a = rows["centred_alg"]
    ids, sample = np.unique(rows["sample"], return_inverse=True)
    per = lambda v: np.bincount(sample, weights=v, minlength=len(ids))  # noqa: E731
    s_sse, s_sq, s_n = per(sse), per((a**2).sum(-1)), per(np.ones(len(a)))
    s_sum = np.stack([per(a[:, j]) for j in range(a.shape[1])], -1)

    def r2(w: np.ndarray) -> np.ndarray:  # w: [boots, samples] weights
        n = w @ s_n
        sst = w @ s_sq - ((w @ s_sum) ** 2).sum(-1) / n
        return 1 - (w @ s_sse) / sst

    point = float(r2(np.ones((1, len(ids))))[0])
    rng = np.random.default_rng(seed)
    boots = r2(rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot).astype(np.float64))
    return point, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def per_task(model_fn, hyp, task, ds, batch_size: int, model_dtype=None) -> dict[str, np.ndarray]:
    """Per compared position (task x masked position): every metric in :data:`METRICS`.

    ``model_fn`` maps an input tensor of ``model_dtype`` (default float32) to outputs; the
    hypothesis runs in float64. Each position is differentiated in its own backward pass, so
    a sensitivity is exactly d output_t / d input_t even when later positions read input_t.
    """
    import torch

    model_dtype = model_dtype or torch.float32
    io = task.io
    inputs = np.asarray(ds[io.input_var].values)
    target = np.asarray(ds[io.target_var].values, dtype=np.float64)
    if target.ndim == 2:
        target = target[..., None]
    mask = (np.asarray(ds[io.loss_mask_var].values, dtype=bool) if io.loss_mask_var
            else np.ones(inputs.shape[:2], dtype=bool))
    lo, hi = io.sensitivity_features or (0, inputs.shape[-1])
    rows: dict[str, list] = {k: [] for k in (*METRICS, "sample")}
    for start in range(0, len(inputs), batch_size):
        sl = slice(start, start + batch_size)
        m = torch.as_tensor(mask[sl])
        y = torch.as_tensor(target[sl])
        for pos in np.flatnonzero(mask[sl].any(0)):
            x_m = torch.tensor(inputs[sl], dtype=model_dtype, requires_grad=True)
            x_a = torch.tensor(inputs[sl], dtype=torch.float64, requires_grad=True)
            out_m, out_a = model_fn(x_m)[:, pos], hyp.predict(x_a)[:, pos]
            if out_m.shape != out_a.shape:
                raise DataError(f"hypothesis {hyp.name!r} predicts shape {tuple(out_a.shape)} per position, "
                                f"the model {tuple(out_m.shape)}")
            keep = m[:, pos]
            yp = y[:, pos]
            sens_m, sens_a = [], []
            for j in range(out_m.shape[-1]):  # one backward per output feature: the Jacobian's rows
                sens_m.append(torch.autograd.grad(out_m[:, j].sum(), x_m, retain_graph=True)[0][:, pos, lo:hi])
                sens_a.append(torch.autograd.grad(out_a[:, j].sum(), x_a, retain_graph=True)[0][:, pos, lo:hi])
            s_m = torch.cat(sens_m, -1).double()[keep]
            s_a = torch.cat(sens_a, -1)[keep]
            om, oa, yk = out_m.detach()[keep], out_a.detach()[keep], yp[keep]
            norms = s_m.norm(dim=-1) * s_a.norm(dim=-1)
            rows["loss_model"].append(0.5 * ((om - yk) ** 2).mean(-1))
            rows["loss_alg"].append(0.5 * ((oa - yk) ** 2).mean(-1))
            rows["loss_zero"].append(0.5 * (yk**2).mean(-1))
            rows["pred_diff"].append((om - oa).abs().mean(-1))
            rows["model_cos"].append(torch.where(norms > 0, (s_m * s_a).sum(-1) / norms, torch.nan))
            rows["model_l2"].append((s_m - s_a).norm(dim=-1))
            rows["sample"].append(torch.as_tensor(np.flatnonzero(mask[sl][:, pos]) + start))
    return {k: torch.cat(v).numpy() for k, v in rows.items()}


def measure(model_fn, hyp, task, held_out, fit_ds, batch_size: int, *,
            on_step: Callable[..., None] | None = None) -> dict:
    """Fit ``hyp`` and then each of its rivals on ``fit_ds``; run them and ``model_fn`` on the held-out
    tasks. Returns ``{"id": rows, "rivals": {name: rows}, "fitted": hyp.fitted(), "rivals_fitted":
    {name: fitted}}``, rows as :func:`per_task` (or :func:`per_task_tokens`) gives them."""
    from probekit.errors import PluginError

    step = on_step or (lambda what, more=0: None)
    run = per_task_tokens if task.io.kind == "tokens" else per_task
    hyp.fit(fit_ds)
    rivals = hyp.rivals()
    step("fitted", len(rivals))
    record = {"id": run(model_fn, hyp, task, held_out, batch_size), "rivals": {}, "fitted": hyp.fitted(),
              "rivals_fitted": {}}
    step("held-out tasks")
    for name, rival in rivals.items():
        if not rival.can_predict:
            raise PluginError(f"hypothesis {hyp.name!r} names the rival {name!r}, which has no predict()")
        record["rivals_fitted"][name] = rival.fit(fit_ds).fitted()
        record["rivals"][name] = run(model_fn, rival, task, held_out, batch_size)
        step(f"rival {name}")
    return record


def run_compare(host, model: str, hypotheses: list[str], settings: CompareSettings, *,
                on_progress: Callable[[str, int, int], None] | None = None):
    """Compare ``model`` with each hypothesis; returns an xarray Dataset (see the module docstring)."""
    import torch
    import xarray as xr

    from probekit.models.adapters import load_adapter

    if not hypotheses:
        raise UsageError("name at least one hypothesis to compare with (--hypothesis)")
    adapter = load_adapter(host, model, device=settings.device)
    model_fn = _model_fn(adapter)
    task_cls, params = _task_for(host, adapter, settings)
    task = task_cls(**params)
    cfg = adapter.ckpt.config
    if (task.io.d_in, task.io.d_out) != (cfg.d_in, cfg.d_out) or task.io.seq_len > cfg.max_len:
        raise UsageError(f"task {task.name!r} ({task.io.d_in} input features, {task.io.d_out} outputs, "
                         f"{task.io.seq_len} positions) does not fit {model} ({cfg.d_in} inputs, {cfg.d_out} "
                         f"outputs, at most {cfg.max_len} positions); check --task and --param")
    ood_param = getattr(task_cls, "ood_param", None)
    scales = tuple(settings.ood_scales) if ood_param else ()
    provenance = adapter.provenance()

    def generate(n: int, seed: int, scale: float = 1.0):
        t = task if scale == 1.0 else task_cls(**{**dataclasses.asdict(task.params),
                                                   ood_param: getattr(task.params, ood_param) * scale})
        ds = t.generate(n, seed)
        ds.attrs.update(provenance)  # what a hypothesis reading a store would see (e.g. model_config)
        return ds

    total = len(hypotheses) * (2 + len(scales))
    done = 0
    run = per_task_tokens if task.io.kind == "tokens" else per_task

    def tick(what: str, more: int = 0) -> None:
        nonlocal done, total
        done, total = done + 1, total + more
        if on_progress:
            on_progress(what, done, total)

    held_out = generate(settings.n_samples, settings.seed)
    fit_ds = generate(settings.fit_samples, settings.fit_seed)
    ood = {s: generate(settings.ood_samples, settings.seed + 1000, s) for s in scales}
    records, fitted = {}, {}
    with torch.enable_grad():
        for name in hypotheses:
            hyp = host.hypotheses.get(name)(**settings.options)
            if not hyp.can_predict:
                raise UsageError(f"hypothesis {name!r} has no predict(): it cannot be compared behaviourally")
            records[name] = measure(model_fn, hyp, task, held_out, fit_ds, settings.batch_size,
                                    on_step=lambda what, more=0: tick(f"{name}: {what}", more))  # noqa: B023
            fitted[name] = records[name].pop("fitted")
            fitted.update({f"{name}: {r}": f for r, f in records[name].pop("rivals_fitted").items()})
            for s in scales:
                records[name][s] = run(model_fn, hyp, task, ood[s], settings.batch_size)
                tick(f"{name}: x{s:g}")
    return _to_dataset(records, fitted, hypotheses, scales, ood_param, settings, model, task, xr)


def _to_dataset(records, fitted, hypotheses, scales, ood_param, settings, model, task, xr):
    data = {}
    for metric in METRICS:
        stats = np.array([mean_ci(records[h]["id"][metric]) for h in hypotheses])  # [hyp, 3]
        data[metric] = (("hypothesis",), stats[:, 0], {"description": METRICS[metric]})
        data[metric + "_lo"] = (("hypothesis",), stats[:, 1])
        data[metric + "_hi"] = (("hypothesis",), stats[:, 2])
        if scales:
            curve = np.array([[mean_ci(records[h][s][metric]) for s in scales] for h in hypotheses])
            data["ood_" + metric] = (("hypothesis", "scale"), curve[..., 0])
            data["ood_" + metric + "_lo"] = (("hypothesis", "scale"), curve[..., 1])
            data["ood_" + metric + "_hi"] = (("hypothesis", "scale"), curve[..., 2])
    boot = PairedBootstrap(records[hypotheses[0]]["id"]["sample"])
    rival_vars, rival_coords = rivals_dataset(
        rival_table(records, hypotheses, boot, task.io.kind == "tokens", logit_r2), task.io.kind == "tokens")
    data.update(rival_vars)
    if task.io.kind == "tokens":
        stats = np.array([logit_r2(records[h]["id"]) for h in hypotheses])
        data["logit_r2"] = (("hypothesis",), stats[:, 0],
                            {"description": "R² of the model's centred log-probabilities against the algorithm's"})
        data["logit_r2_lo"] = (("hypothesis",), stats[:, 1])
        data["logit_r2_hi"] = (("hypothesis",), stats[:, 2])
    coords = {"hypothesis": list(hypotheses), **rival_coords}
    if scales:
        coords["scale"] = list(scales)
    settings_dict = dataclasses.asdict(settings)
    return xr.Dataset(data, coords=coords, attrs={
        "model_spec": model,
        "task": task.name,
        "task_params": json.dumps(dataclasses.asdict(task.params)),
        "ood_param": ood_param or "",
        "output_kind": task.io.kind,
        "sensitivity_features": list(task.io.sensitivity_features or ()),
        "fitted": json.dumps(fitted),
        "settings": json.dumps(settings_dict, default=list),
    })
