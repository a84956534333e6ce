"""Behaviour and training dynamics of attention heads: ICL score, ablation, phase change.

* **ICL score** (Olsson et al. 2022): the mean loss at a late token minus the mean loss at an
  early token, over sequences: token 500 vs token 50 when sequences are longer than 500,
  else the scaled positions ``int(0.8 T)`` vs ``int(0.08 T)`` (labelled as such). More
  negative = more in-context learning. Cross-entropy for token tasks, squared error for
  continuous ones.
* **Ablation** of chosen heads: the head's output (its slice of the input of the block's
  output projection) set to zero, or to its mean over the evaluation sequences at each
  position; reported as the ICL score with and without, and the fraction removed.
* **Phase change** of a curve over checkpoints: the step where its slope changes most in
  the direction of the curve's overall change (the knee), and the steepest single interval.

:func:`run_heads` gathers one model's head table (pattern and weight scores from
:mod:`probekit.lenses.heads.circuits`), ICL score and ablation; :func:`run_dynamics` follows the ICL
score and the head scores through the checkpoints of a training run.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from probekit.errors import DataError, UnknownNameError, UsageError
from probekit.lenses.heads import circuits
from probekit.models.anatomy import anatomy_of
from probekit.models.capabilities import has, require
from probekit.models.hooks import Ablation, ComponentMeans, ablation_hooks, hooks_installed, parse_heads

ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class HeadsSettings:
    n_samples: int = 200  # repeated-token sequences for the pattern scores
    segment: int | None = None  # R; default min(50, (positions - BOS) // repeats)
    repeats: int = 2
    seed: int = 0
    icl_samples: int = 2000  # sequences for the ICL score
    icl_seed: int = 1
    task: str | None = None  # ICL data: this task (default: the toy model's own; else repeated tokens)
    task_params: dict = field(default_factory=dict)
    text: str | None = None  # ... or prompts from a .txt / .jsonl file (models with a tokenizer)
    max_len: int | None = None
    late: int | None = None  # ICL positions (default: 500 / 50, or 0.8 T / 0.08 T)
    early: int | None = None
    ablate: str | None = None  # "1.0,1.2" or "induction" (heads with induction score >= threshold)
    ablation: str = "zero"
    threshold: float = 0.5  # induction score that makes a head an induction head
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self):
        if self.n_samples < 1 or self.icl_samples < 1 or self.repeats < 2 or self.batch_size < 1:
            raise UsageError("heads needs n_samples, icl_samples, batch_size >= 1 and repeats >= 2")
        if self.segment is not None and self.segment < 2:
            raise UsageError(f"segment must be >= 2, got {self.segment}")
        if self.ablation not in ABLATIONS:
            raise UnknownNameError("ablation", self.ablation, ABLATIONS)


# ----------------------------------------------------------------------------- the model's tokens
@dataclass
class TokenLayout:
    vocab: int
    bos_id: int | None
    allowed: np.ndarray  # token ids repeated-token sequences draw from
    max_positions: int

    @property
    def prefix(self) -> int:
        return int(self.bos_id is not None)


def token_layout(adapter) -> TokenLayout:
    """Vocabulary, BOS and context length of a token model (from its anatomy)."""
    require(adapter, "tokens", "probekit heads")
    an = anatomy_of(adapter)
    allowed = np.array([i for i in range(an.n_tokens) if i not in an.special_ids], dtype=np.int64)
    return TokenLayout(an.vocab, an.bos_id, allowed, an.max_positions or 1024)


def default_segment(layout: TokenLayout, repeats: int, segment: int | None) -> int:
    room = (layout.max_positions - layout.prefix) // repeats
    R = segment or min(50, room)
    if R < 2 or R > room:
        raise UsageError(f"a segment of {R} tokens repeated {repeats} times does not fit the model's "
                         f"{layout.max_positions} positions (at most {room})")
    return R


def _run(adapter, inputs, sites, valid=None):
    if valid is not None and has(adapter, "padding"):
        return adapter.run(inputs, sites, valid=valid)
    return adapter.run(inputs, sites)


def head_pattern_scores(adapter, tokens: np.ndarray, segment: int, prefix: int, batch_size: int = 64):
    """:data:`~probekit.lenses.heads.circuits.PATTERN_SCORES` ``[layer, head]`` of ``adapter`` on repeated tokens."""
    if "attn_pattern" not in adapter.sites:
        raise UsageError(f"{adapter.spec} exposes no attention patterns (site attn_pattern)")
    totals, count = None, 0
    for s0 in range(0, len(tokens), batch_size):
        acts, _ = _run(adapter, tokens[s0: s0 + batch_size], ["attn_pattern"])
        sums, c = circuits.pattern_score_sums(acts["attn_pattern"], segment, prefix)
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
        count += c
    return {k: v / count for k, v in totals.items()}


# ----------------------------------------------------------------------------- ICL data and losses
@dataclass
class EvalData:
    """Inputs, per-position targets and where each position's loss counts."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray  # [n, T]: the loss at this position counts
    kind: str  # "tokens" (cross-entropy) or "continuous" (squared error)
    source: str
    valid: np.ndarray | None = None  # input padding mask for models that take one


def eval_data(host, adapter, settings: HeadsSettings, layout: TokenLayout | None, segment: int | None) -> EvalData:
    """The sequences the ICL score is measured on: ``--text`` prompts, a task's samples (default:
    the toy model's training task), or repeated random tokens."""
    n = settings.icl_samples
    if settings.text:
        from probekit.tasks.text import TextTask

        task = TextTask.from_file(settings.text, settings.max_len, adapter)
        ids, valid = task.ids[:n], task.valid[:n]
        targets = np.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        mask = valid.copy()
        mask[:, :-1] &= valid[:, 1:]
        mask[:, -1] = False
        return EvalData(ids, targets, mask, "tokens", f"text {settings.text} ({len(ids)} prompts)", valid)
    from probekit.tasks.resolve import resolve_task

    resolved = resolve_task(host, adapter, settings.task, settings.task_params, missing=None)
    if resolved is not None:
        name, task = resolved.name, resolved.build()
        ds = task.generate(n, settings.icl_seed)
        io = task.io
        x, y = np.asarray(ds[io.input_var].values), np.asarray(ds[io.target_var].values)
        mask = (np.asarray(ds[io.loss_mask_var].values, dtype=bool) if io.loss_mask_var
                else np.ones(x.shape[:2], bool))
        return EvalData(x, y, mask, io.kind, f"task {name} ({n} samples, seed {settings.icl_seed})")
    tokens = circuits.repeated_tokens(n, segment, layout.vocab, repeats=settings.repeats, bos_id=layout.bos_id,
                                      allowed=layout.allowed, seed=settings.icl_seed)
    targets = np.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    mask = np.ones(tokens.shape, bool)
    mask[:, -1] = False
    return EvalData(tokens, targets, mask, "tokens", f"repeated tokens (R={segment}, {n} sequences)")


def position_losses(adapter, data: EvalData, batch_size: int = 64) -> np.ndarray:
    """Loss of every ``(sequence, position)`` ``[n, T]`` (NaN where ``data.mask`` is False)."""
    import torch

    out = np.full(data.inputs.shape[:2], np.nan)
    for s0 in range(0, len(data.inputs), batch_size):
        sl = slice(s0, s0 + batch_size)
        _, logits = _run(adapter, data.inputs[sl], [], None if data.valid is None else data.valid[sl])
        logits = torch.as_tensor(logits, dtype=torch.float32)
        if data.kind == "tokens":
            y = torch.as_tensor(data.targets[sl], dtype=torch.long)
            loss = -torch.log_softmax(logits, -1).gather(-1, y[..., None])[..., 0]
        else:
            y = torch.as_tensor(np.asarray(data.targets[sl], dtype=np.float32))
            y = y[..., None] if y.ndim == 2 else y
            loss = ((logits - y) ** 2).mean(-1)
        out[sl] = np.where(data.mask[sl], loss.double().numpy(), np.nan)
    return out


def icl_positions(T: int, late: int | None = None, early: int | None = None) -> tuple[int, int, str]:
    """``(late, early, label)``: tokens 500 and 50 for long contexts, else 0.8 T and 0.08 T."""
    if late is None and early is None:
        if T > 500:
            return 500, 50, "loss at token 500 − loss at token 50"
        late, early = int(0.8 * T), int(0.08 * T)
        return late, early, f"loss at token {late} − loss at token {early} (scaled positions 0.8T, 0.08T; T={T})"
    late = int(0.8 * T) if late is None else late
    early = int(0.08 * T) if early is None else early
    if not 0 <= early < late < T:
        raise UsageError(f"ICL positions need 0 <= early < late < {T}, got early={early}, late={late}")
    return late, early, f"loss at token {late} − loss at token {early}"


def icl_score(losses: np.ndarray, late: int, early: int) -> float:
    """Mean loss at ``late`` minus mean loss at ``early``, over sequences defined at both."""
    both = np.isfinite(losses[:, late]) & np.isfinite(losses[:, early])
    if not both.any():
        raise DataError(f"no sequence has a loss at both positions {early} and {late}; choose --late/--early")
    return float(losses[both, late].mean() - losses[both, early].mean())


# ----------------------------------------------------------------------------- ablation
@contextlib.contextmanager
def ablated(adapter, heads, means: dict | None = None):
    """Within the block, ``heads`` ``(block, head)`` output zero (or their per-position mean,
    ``means`` from :func:`head_means`): :func:`probekit.models.hooks.ablation_hooks`."""
    require(adapter, "heads", "head ablation")
    ablation = Ablation(tuple(heads), mode="zero" if means is None else "mean")
    with hooks_installed(ablation_hooks(anatomy_of(adapter), ablation, means)):
        yield


def head_means(adapter, data: EvalData, heads, batch_size: int = 64) -> dict:
    """Each head's output averaged over sequences at each position (padding excluded):
    ``{("head", block): [T, head, d_head]}``, summed in float64."""
    import torch

    require(adapter, "heads", "head ablation")
    acc = ComponentMeans(anatomy_of(adapter), Ablation(tuple(heads), mode="mean"), data.inputs.shape[1],
                         dtype=torch.float64, device="cpu")
    for s0 in range(0, len(data.inputs), batch_size):
        sl = slice(s0, s0 + batch_size)
        valid = None if data.valid is None else data.valid[sl]
        with hooks_installed(acc.hooks()):
            _run(adapter, data.inputs[sl], [], valid)
        acc.add(np.ones(data.inputs[sl].shape[:2]) if valid is None else valid)
    return acc.result()


# ----------------------------------------------------------------------------- phase change
def phase_change(steps, values) -> dict:
    """Where a curve over training steps changes: ``knee`` (the step whose slope change is largest
    in the direction of the overall change), the steepest interval ``[jump_from, jump_to]`` and
    its change ``jump``, and ``total`` (last minus first)."""
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(steps) < 3:
        raise DataError(f"a phase change needs at least 3 checkpoints, got {len(steps)}")
    total = float(values[-1] - values[0])
    direction = 1.0 if total >= 0 else -1.0
    delta = np.diff(values)
    slope = delta / np.diff(steps)
    change = np.diff(np.concatenate([[0.0], slope])) * direction  # slope change entering each interval
    k = int(np.argmax(change))
    j = int(np.argmax(delta * direction))
    return {"knee": int(steps[k]), "slope_change": float(change[k] * direction),
            "jump_from": int(steps[j]), "jump_to": int(steps[j + 1]), "jump": float(delta[j]), "total": total}


# ----------------------------------------------------------------------------- one model
def run_heads(host, model: str, settings: HeadsSettings | None = None, *,
              on_progress: Callable[[str, int, int], None] | None = None):
    """Head scores, ICL score and (optionally) ablation of one model, as an xarray Dataset."""
    from probekit.models.adapters import load_adapter

    settings = settings or HeadsSettings()
    adapter = load_adapter(host, model, device=settings.device)
    return heads_for_adapter(host, adapter, settings, on_progress=on_progress)


def heads_for_adapter(host, adapter, settings: HeadsSettings, *, on_progress=None, icl: bool = True):
    """:func:`run_heads` on a loaded adapter; ``icl=False`` skips the ICL score and ablation.

    Returns a Dataset with ``(layer, head)`` scores (:data:`~probekit.lenses.heads.circuits.PATTERN_SCORES`,
    :data:`~probekit.lenses.heads.circuits.WEIGHT_SCORES`), the eigenvalues behind the weight scores
    (``ov_eig_real/imag``, ``qk_eig_real/imag`` along ``eig``), ``loss_by_pos`` (``run``: clean,
    ablated) and JSON attrs ``icl``, ``ablation`` and ``qk_prev_head``."""
    import xarray as xr

    tick = _ticker(on_progress, 3 + bool(settings.ablate))
    layout = token_layout(adapter)
    R = default_segment(layout, settings.repeats, settings.segment)
    tokens = circuits.repeated_tokens(settings.n_samples, R, layout.vocab, repeats=settings.repeats,
                                      bos_id=layout.bos_id, allowed=layout.allowed, seed=settings.seed)
    scores = head_pattern_scores(adapter, tokens, R, layout.prefix, settings.batch_size)
    heads = _ablation_heads(settings, scores["induction"]) if icl and settings.ablate else None  # fail early
    tick("pattern scores")
    L, H = scores["induction"].shape
    weights, source = circuits.head_weights(adapter)
    prev = [None] + [int(np.argmax(scores["prev_token"][l - 1])) for l in range(1, L)]
    if weights is not None:
        ws = circuits.weight_scores(weights, prev)
    else:  # no matrices: NaN scores, one NaN eigenvalue per head
        ws = {**{k: np.full((L, H), np.nan) for k in circuits.WEIGHT_SCORES},
              **{f"{k}_eigenvalues": np.full((L, H, 1), np.nan, complex) for k in ("ov", "qk")}}
    tick("weight scores")
    dims = ("layer", "head")
    data = {k: (dims, v) for k, v in scores.items()}
    data.update({k: (dims, ws[k]) for k in circuits.WEIGHT_SCORES})
    for k in ("ov", "qk"):
        lam = ws[f"{k}_eigenvalues"]
        data[f"{k}_eig_real"] = (dims + ("eig",), lam.real)
        data[f"{k}_eig_imag"] = (dims + ("eig",), lam.imag)
    attrs = {"model_spec": adapter.spec, "segment": R, "repeats": settings.repeats, "n_samples": settings.n_samples,
             "bos": layout.prefix, "weights": source, "qk_prev_head": json.dumps(prev),
             "settings": json.dumps(asdict(settings), default=str)}
    if icl:
        data_icl = eval_data(host, adapter, settings, layout, R)
        losses = position_losses(adapter, data_icl, settings.batch_size)
        late, early, label = icl_positions(losses.shape[1], settings.late, settings.early)
        attrs["icl"] = json.dumps({"score": icl_score(losses, late, early), "late": late, "early": early,
                                   "label": label, "data": data_icl.source, "n": int(len(losses))})
        curves = [_mean_by_position(losses)]
        tick("ICL score")
        if heads:
            means = head_means(adapter, data_icl, heads, settings.batch_size) if settings.ablation == "mean" else None
            with ablated(adapter, heads, means):
                ab_losses = position_losses(adapter, data_icl, settings.batch_size)
            clean, ablated_score = icl_score(losses, late, early), icl_score(ab_losses, late, early)
            attrs["ablation"] = json.dumps({
                "heads": [f"{l}.{h}" for l, h in heads], "mode": settings.ablation, "icl_clean": clean,
                "icl_ablated": ablated_score, "removed": 1 - ablated_score / clean if clean else float("nan")})
            curves.append(_mean_by_position(ab_losses))
            if settings.ablation == "zero":  # backup heads: the pattern scores again, with the heads gone
                with ablated(adapter, heads):
                    after = head_pattern_scores(adapter, tokens, R, layout.prefix, settings.batch_size)
                data.update({f"{k}_ablated": (dims, v) for k, v in after.items()})
            tick("ablation")
        data["loss_by_pos"] = (("run", "pos"), np.stack(curves))
    coords = {"layer": np.arange(L), "head": np.arange(H)}
    if "loss_by_pos" in data:
        coords["run"] = ["clean", "ablated"][: len(data["loss_by_pos"][1])]
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _mean_by_position(losses: np.ndarray) -> np.ndarray:
    """Mean loss at each position over the sequences defined there (NaN where none is)."""
    n = np.isfinite(losses).sum(0)
    return np.where(n > 0, np.nansum(losses, 0) / np.maximum(n, 1), np.nan)


def _ablation_heads(settings: HeadsSettings, induction: np.ndarray) -> list[tuple[int, int]]:
    L, H = induction.shape
    if settings.ablate != "induction":
        heads = list(parse_heads(settings.ablate, L, H))
        if not heads:
            raise UsageError(f"no heads in {settings.ablate!r}; name them like 1.0,1.2")
        return heads
    first = 1 if L > 1 else 0
    heads = [(l, h) for l in range(first, L) for h in range(H) if induction[l, h] >= settings.threshold]
    if not heads:
        l, h = np.unravel_index(np.argmax(induction), induction.shape)
        raise UsageError(f"no head has induction score >= {settings.threshold} (the largest is "
                         f"{induction[l, h]:.3f}, head {l}.{h}); name heads to ablate, e.g. --ablate {l}.{h}")
    return heads


def _ticker(on_progress, total: int):
    done = [0]

    def tick(what: str) -> None:
        done[0] += 1
        if on_progress:
            on_progress(what, done[0], total)

    return tick


# ----------------------------------------------------------------------------- through training
def run_dynamics(host, source: str, settings: HeadsSettings | None = None, *,
                 on_progress: Callable[[str, int, int], None] | None = None):
    """ICL score and head scores at every checkpoint of a training run (``source``: a directory
    of toy checkpoints or a glob, as ``probekit cache --checkpoints``), with the phase change of
    the ICL score and of the induction score (the largest over heads of blocks >= 1, or of
    block 0 in a one-block model) located."""
    import xarray as xr

    from probekit.cache import checkpoints
    from probekit.models.adapters import load_adapter

    settings = settings or HeadsSettings()
    refs = checkpoints.resolve(source)
    checkpoints.check_compatible([r.path for r in refs])
    per: dict[str, list] = {k: [] for k in (*circuits.PATTERN_SCORES, *circuits.WEIGHT_SCORES)}
    icl, train_loss, label = [], [], ""
    data = None
    for i, ref in enumerate(refs):
        adapter = load_adapter(host, ref.spec, device=settings.device)
        ds = heads_for_adapter(host, adapter, settings, icl=False)
        for k in per:
            per[k].append(ds[k].values)
        if data is None:
            layout = token_layout(adapter)
            data = eval_data(host, adapter, settings, layout, int(ds.attrs["segment"]))
        losses = position_losses(adapter, data, settings.batch_size)
        late, early, label = icl_positions(losses.shape[1], settings.late, settings.early)
        icl.append(icl_score(losses, late, early))
        hist = adapter.ckpt.training.get("history") or []
        train_loss.append(float(hist[-1][1]) if hist and ref.step else np.nan)
        if on_progress:
            on_progress(f"step {ref.step}", i + 1, len(refs))
    steps = np.asarray([r.step for r in refs], dtype=np.int64)
    dims = ("checkpoint", "layer", "head")
    out = xr.Dataset({k: (dims, np.stack(v)) for k, v in per.items()},
                     coords={"checkpoint": steps, "layer": np.arange(per["induction"][0].shape[0]),
                             "head": np.arange(per["induction"][0].shape[1]),
                             "checkpoint_path": ("checkpoint", [r.path for r in refs])})
    out["icl_score"] = ("checkpoint", np.asarray(icl))
    out["train_loss"] = ("checkpoint", np.asarray(train_loss))
    ind = out["induction"].isel(layer=slice(1 if out.sizes["layer"] > 1 else 0, None))
    out["induction_max"] = ind.max(("layer", "head"))
    out.attrs = {"source": source, "icl_label": label, "icl_data": data.source,
                 "induction_blocks": ">= 1" if out.sizes["layer"] > 1 else "0 (one-block model)",
                 "phase_icl": json.dumps(phase_change(steps, icl)) if len(steps) >= 3 else "{}",
                 "phase_induction": json.dumps(phase_change(steps, out["induction_max"].values))
                 if len(steps) >= 3 else "{}",
                 "settings": json.dumps(asdict(settings), default=str)}
    return out
