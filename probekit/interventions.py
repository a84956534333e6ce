"""Activation patching and ablation: where does the answer form, and what takes over when a part goes?

**Runs.** A *pair* is a prompt ``a`` (with context, e.g. n solved examples then a query), a prompt
``b`` (without: the query alone) and an ``answer``, all as token ids (:func:`probekit.prompt_pairs.
encode_pairs` tokenises text). A prompt is scored with the answer appended (teacher forcing):
``logp = log p(ans_1 | prompt) + log p(ans_2 | prompt, ans_1) + ...``, the log-probability of the
whole answer.

**Residual-stream patching** (:func:`patch_residual`). For each resid layer l (0 = embeddings,
l = after block l, i.e. TransformerLens' ``blocks.{l}.hook_resid_pre``) and each prompt position
of run B, run B with ``resid[l, p]`` replaced by run A's at the aligned position and score the
answer. Positions are aligned from the *end* of the prompts, since A is the longer one: B's last
prompt token <-> A's last prompt token (``pos = -1``), the one before <-> the one before
(``pos = -2``), ... except for a pair's ``prefix``: its first tokens (e.g. a BOS both prompts
start with), which are aligned with A's first tokens. A B position with no counterpart in A gives NaN. Only prompt positions are
patched (the answer tokens are the same in both runs). The metric is the recovered fraction::

    recovered = (logp_patched - logp_b) / (logp_a - logp_b)

1: this one vector carries everything run A has that run B lacks for the answer; 0: nothing.
Kept per pair (``recovered_pair``; NaN where ``|logp_a - logp_b| < min_gap``), averaged over pairs
(``recovered``), and pooled as a ratio of means over pairs (``recovered_pooled``), which small
gaps cannot blow up.

**Ablation** (:class:`Ablation`). Applied to run A, the source of the patches, so patching after
an ablation shows where backup components re-form the answer. A head's output is its slice of
the input of the attention output projection (before W_O); a block's output is the residual
stream it writes (ablated: block output := block input, so the block adds nothing). ``zero``
sets it to 0; ``mean`` to its mean *at that position* over the run's own prompts (every pair's
A prompt + answer, aligned at the start; each position averaged over the prompts that reach it),
computed from unablated runs. Blocks and heads are numbered from 0 as in TransformerLens and
``probekit heads``: ablating block L changes resid layers L + 1 and later.

Works on ``toy:`` (token inputs), ``hf:`` (causal LMs) and ``torch:`` (resid patching only)
adapters; everything runs batched on the adapter's device under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from probekit.errors import DataError, UsageError

MODES = ("zero", "mean")
Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- what to do

@dataclass(frozen=True)
class TokenPair:
    """Token ids of a prompt with context (``a``), one without (``b``) and the answer to both.

    ``prefix``: how many leading tokens of ``b`` are aligned with the same first tokens of ``a``
    (e.g. 1 for a BOS); the rest of ``b`` is aligned with the end of ``a``.
    """

    a: tuple[int, ...]
    b: tuple[int, ...]
    answer: tuple[int, ...]
    meta: dict = field(default_factory=dict, compare=False)  # e.g. the texts, recorded in the results
    prefix: int = 0

    def source(self, p: int) -> int | None:
        """The position of ``a`` aligned with position ``p`` of ``b`` (None: there is none)."""
        if p < self.prefix:
            return p
        q = len(self.a) - len(self.b) + p
        return q if q >= self.prefix else None


@dataclass(frozen=True)
class Ablation:
    """Heads ``(block, head)`` and whole blocks to remove from a run, by ``zero`` or ``mean``."""

    heads: tuple[tuple[int, int], ...] = ()
    blocks: tuple[int, ...] = ()
    mode: str = "zero"

    def __post_init__(self):
        if self.mode not in MODES:
            raise UsageError(f"unknown ablation {self.mode!r}; choose from: {', '.join(MODES)}")
        object.__setattr__(self, "heads", tuple(sorted({(int(b), int(h)) for b, h in self.heads})))
        object.__setattr__(self, "blocks", tuple(sorted({int(b) for b in self.blocks})))

    def __bool__(self) -> bool:
        return bool(self.heads or self.blocks)

    @property
    def label(self) -> str:
        """e.g. ``"zero: heads 1.0,1.3; blocks 0"`` (``"none"`` for an empty ablation)."""
        if not self:
            return "none"
        parts = []
        if self.heads:
            parts.append("heads " + ",".join(f"{b}.{h}" for b, h in self.heads))
        if self.blocks:
            parts.append("blocks " + ",".join(map(str, self.blocks)))
        return f"{self.mode}: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"heads": [list(h) for h in self.heads], "blocks": list(self.blocks), "mode": self.mode}


class Patch(NamedTuple):
    """Set ``resid[layer][rows[k], pos[k]] = values[k]`` (tensors on the model's device)."""

    layer: int
    rows: object
    pos: object
    values: object


def parse_heads(spec: str | None, n_blocks: int, n_heads: int) -> tuple[tuple[int, int], ...]:
    """``"10.3,11.*"`` -> ``((10, 3), (11, 0), (11, 1), ...)``; blocks and heads from 0."""
    out = []
    valid = f"blocks 0-{n_blocks - 1}, heads 0-{n_heads - 1}"
    for item in (s.strip() for s in (spec or "").split(",")):
        if not item:
            continue
        block, sep, head = item.partition(".")
        try:
            b = int(block)
            hs = range(n_heads) if head == "*" else [int(head)]
        except ValueError:
            raise UsageError(f"head {item!r} is not L.H or L.* ({valid})") from None
        if not sep or not 0 <= b < n_blocks or any(not 0 <= h < n_heads for h in hs):
            raise UsageError(f"head {item!r} is out of range: this model has {valid} (write L.H, or L.* for "
                             "every head of block L)")
        out += [(b, h) for h in hs]
    return tuple(out)


def parse_blocks(spec: str | None, n_blocks: int) -> tuple[int, ...]:
    """``"10,11"`` -> ``(10, 11)``; blocks from 0."""
    out = []
    for item in (s.strip() for s in (spec or "").split(",")):
        if not item:
            continue
        try:
            b = int(item)
        except ValueError:
            raise UsageError(f"block {item!r} is not an integer (blocks 0-{n_blocks - 1})") from None
        if not 0 <= b < n_blocks:
            raise UsageError(f"block {b} is out of range: this model has blocks 0-{n_blocks - 1}")
        out.append(b)
    return tuple(out)


# --------------------------------------------------------------------------- the model

def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


class Hooked:
    """Where a model's resid layers, heads and blocks live, and how to get its logits.

    ``resid_site(l)`` is ``(module, "pre" | "post")``: resid layer l is that module's first input
    or its output; ``head_proj(b)`` is the module whose input holds block b's heads side by side
    (``[batch, pos, head * d_head]``, head-major); ``block(b)`` is block b itself.
    """

    def __init__(self, adapter, *, resid, blocks=(), head_projs=(), n_heads=0, logits_fn, pad_id=0):
        self.adapter, self.device = adapter, getattr(adapter, "device", "cpu")
        self._resid, self.blocks, self.head_projs = resid, list(blocks), list(head_projs)
        self.n_heads, self._logits, self.pad_id = n_heads, logits_fn, pad_id

    @property
    def n_resid(self) -> int:
        return len(self._resid)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def resid_site(self, layer: int):
        return self._resid[layer]

    def logits(self, ids, valid, keep=None):
        """Logits ``[batch, pos, vocab]``, or only at the positions ``keep`` (a 1-D tensor)."""
        return self._logits(ids, valid, keep)

    def supports(self, *, heads: bool = False, blocks: bool = False) -> None:
        """Raise a :class:`UsageError` unless this model can ablate heads / blocks."""
        if heads and not self.head_projs:
            raise UsageError(f"{self.adapter.spec}: head ablation needs a toy transformer or an hf: model")
        if blocks and not self.blocks:
            raise UsageError(f"{self.adapter.spec}: block ablation needs a toy transformer or an hf: model")

    def check(self, ablation: Ablation | None) -> None:
        """Raise a :class:`UsageError` unless ``ablation`` fits this model."""
        if not ablation:
            return
        self.supports(heads=bool(ablation.heads), blocks=bool(ablation.blocks))
        parse_heads(",".join(f"{b}.{h}" for b, h in ablation.heads), self.n_blocks, max(self.n_heads, 1))
        parse_blocks(",".join(map(str, ablation.blocks)), self.n_blocks)


def hooked_model(adapter) -> Hooked:
    """The :class:`Hooked` view of a ``toy:``, ``hf:`` or ``torch:`` adapter."""
    scheme = getattr(adapter, "scheme", None)
    if scheme == "toy":
        return _hooked_toy(adapter)
    if scheme == "hf":
        return _hooked_hf(adapter)
    if scheme == "torch":
        return _hooked_torch(adapter)
    raise UsageError(f"patching supports toy:, hf: and torch: models, not {getattr(adapter, 'spec', adapter)!r}")


def _hooked_toy(adapter) -> Hooked:
    cfg, model = adapter.ckpt.config, adapter.model
    if cfg.input_kind != "tokens" or cfg.arch != "transformer":
        raise UsageError(f"{adapter.spec}: patching scores answer tokens, so it needs a toy transformer with token "
                         f"inputs (this one has {cfg.input_kind} inputs, arch {cfg.arch})")
    blocks = list(model.blocks)

    def logits(ids, valid, keep):
        out = model(ids)
        return out if keep is None else out[:, keep]

    return Hooked(adapter, resid=[(model.hook_embed, "post")] + [(b, "post") for b in blocks], blocks=blocks,
                  head_projs=[b.attn.W_o for b in blocks], n_heads=cfg.n_heads, logits_fn=logits)


def _hooked_hf(adapter) -> Hooked:
    import inspect

    if not adapter.is_causal_lm:
        raise UsageError(f"{adapter.spec} has no language-model head: patching scores answer tokens")
    model, blocks = adapter.model, list(adapter.blocks)
    head_projs = [_hf_out_proj(b) for b in blocks]
    params = inspect.signature(model.forward).parameters
    can_keep = "logits_to_keep" in params

    def logits(ids, valid, keep):
        kw = {"use_cache": False} if "use_cache" in params else {}
        if keep is not None and can_keep:
            kw["logits_to_keep"] = keep
        out = model(input_ids=ids, attention_mask=valid.long(), return_dict=True, **kw).logits
        return out if keep is None or can_keep else out[:, keep]

    return Hooked(adapter, resid=[(blocks[0], "pre")] + [(b, "post") for b in blocks], blocks=blocks,
                  head_projs=head_projs if all(p is not None for p in head_projs) else [],
                  n_heads=adapter.n_heads, logits_fn=logits, pad_id=adapter.tokenizer.pad_token_id or 0)


def _hf_out_proj(block):
    """The attention output projection of an HF decoder block (its input: the heads side by side)."""
    for attn_name in ("self_attn", "attn", "attention", "self_attention"):
        attn = getattr(block, attn_name, None)
        for proj in ("o_proj", "c_proj", "out_proj", "dense"):
            if attn is not None and getattr(attn, proj, None) is not None:
                return getattr(attn, proj)
    return None


def _hooked_torch(adapter) -> Hooked:
    if "resid" not in adapter.site_paths:
        raise UsageError(f"{adapter.spec}: name the residual-stream modules as the resid site, e.g. ?resid=blocks.*")
    import torch

    from probekit.models.torch_module import _first as first_output

    modules = dict(adapter.model.named_modules())

    def logits(ids, valid, keep):
        out = first_output(adapter.model(ids.to(torch.long)))
        return out if keep is None else out[:, keep]

    return Hooked(adapter, resid=[(modules[p], "post") for p in adapter.site_paths["resid"]], logits_fn=logits)


# --------------------------------------------------------------------------- one hooked forward pass

class Forward(NamedTuple):
    logits: object  # [batch, pos or len(keep), vocab]
    resid: list | None  # per resid layer [batch, pos, d_model], after every intervention


def _pre_hook(module, fn):
    """Forward pre-hook rewriting the module's first input (positional or ``hidden_states=``)."""
    def hook(_mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
    return module.register_forward_pre_hook(hook, with_kwargs=True)


def _post_hook(module, fn):
    return module.register_forward_hook(lambda _m, _a, out: _with_first(out, fn(_first(out))))


def _set_rows(rows, pos, values):
    def fn(h):
        h = h.clone()
        h[rows, pos] = values.to(h.dtype)
        return h
    return fn


def _ablation_hooks(hooked: Hooked, ablation: Ablation, means: dict | None) -> list:
    handles = []
    by_block: dict[int, list[int]] = {}
    for b, h in ablation.heads:
        by_block.setdefault(b, []).append(h)
    H = hooked.n_heads
    for b, heads in by_block.items():
        idx = list(heads)

        def head_fn(_mod, args, b=b, idx=idx):
            x = args[0]
            B, T, D = x.shape
            x = x.clone().view(B, T, H, D // H)
            x[:, :, idx] = 0 if ablation.mode == "zero" else means[("head", b)][:T, idx].to(x.dtype)
            return (x.view(B, T, D), *args[1:])
        handles.append(hooked.head_projs[b].register_forward_pre_hook(head_fn))
    for b in ablation.blocks:
        def block_fn(_mod, args, kwargs, out, b=b):
            x_in = args[0] if args else kwargs["hidden_states"]
            if ablation.mode == "mean":
                x_in = x_in + means[("block", b)][: x_in.shape[1]].to(x_in.dtype)
            return _with_first(out, x_in)
        handles.append(hooked.blocks[b].register_forward_hook(block_fn, with_kwargs=True))
    return handles


def run_hooked(hooked: Hooked, ids, valid=None, *, patches: Sequence[Patch] = (), ablation: Ablation | None = None,
               means: dict | None = None, capture: bool = False, keep=None) -> Forward:
    """One forward pass with ``ablation`` (its hooks first), then ``patches``, then (``capture``)
    reading every resid layer as the rest of the model sees it. ``ids``: ``[batch, pos]`` long
    tensor on the model's device; ``valid``: padding mask (default all True)."""
    import torch

    if not isinstance(hooked, Hooked):
        hooked = hooked_model(hooked)
    ids = torch.as_tensor(ids, device=hooked.device).long()
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else torch.as_tensor(valid, device=ids.device)
    if ablation and ablation.mode == "mean" and means is None:
        raise UsageError("mean ablation needs the components' means (see component_means)")
    handles = _ablation_hooks(hooked, ablation, means) if ablation else []
    resid: dict[int, object] = {}
    try:
        for p in patches:
            module, kind = hooked.resid_site(p.layer)
            fn = _set_rows(p.rows, p.pos, p.values)
            handles.append(_pre_hook(module, fn) if kind == "pre" else _post_hook(module, fn))
        if capture:
            for layer in range(hooked.n_resid):
                module, kind = hooked.resid_site(layer)

                def keep_it(h, layer=layer):
                    resid[layer] = h
                    return h
                handles.append(_pre_hook(module, keep_it) if kind == "pre" else _post_hook(module, keep_it))
        with torch.no_grad():
            logits = hooked.logits(ids, valid, keep)
    finally:
        for h in handles:
            h.remove()
    return Forward(logits, [resid[layer] for layer in range(hooked.n_resid)] if capture else None)


# --------------------------------------------------------------------------- batches and scores

def _pad(seqs: Sequence[Sequence[int]], pad_id: int, device):
    import torch

    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        valid[i, :len(s)] = True
    return ids.to(device), valid.to(device)


def _scored_inputs(prompts, answers):
    """Prompt + answer minus its last token (the positions whose next-token logits score the answer)."""
    return [tuple(p) + tuple(a[:-1]) for p, a in zip(prompts, answers)]


def _answer_positions(prompt_lens, answers, device):
    import torch

    rows, pos, tok = [], [], []
    for r, (n, a) in enumerate(zip(prompt_lens, answers)):
        rows += [r] * len(a)
        pos += range(n - 1, n - 1 + len(a))
        tok += list(a)
    t = lambda v: torch.as_tensor(v, dtype=torch.long, device=device)
    rows, pos, tok = t(rows), t(pos), t(tok)
    keep = torch.unique(pos)  # sorted
    return rows, torch.searchsorted(keep, pos), tok, keep


def _score(hooked, prompts, answers, **kw) -> np.ndarray:
    """log p(answer | prompt) of each row of one batch (float64 ``[batch]``) and the :class:`Forward`."""
    import torch

    rows, col, tok, keep = _answer_positions([len(p) for p in prompts], answers, hooked.device)
    ids, valid = _pad(_scored_inputs(prompts, answers), hooked.pad_id, hooked.device)
    fwd = run_hooked(hooked, ids, valid, keep=keep, **kw)
    lp = fwd.logits[rows, col].float().log_softmax(-1).gather(1, tok[:, None])[:, 0].double()
    out = torch.zeros(len(prompts), dtype=torch.float64, device=lp.device).index_add_(0, rows, lp)
    return out.cpu().numpy(), fwd


def component_means(hooked: Hooked, seqs: Sequence[Sequence[int]], ablation: Ablation, *, batch_size: int = 32,
                    on_progress: Progress | None = None) -> dict:
    """Per-position means of the ablated components over ``seqs`` (aligned at the start, padding
    excluded): ``{("head", b): [T, head, d_head], ("block", b): [T, d_model]}``."""
    import torch

    sums: dict = {}
    count = torch.zeros(max(len(s) for s in seqs), device=hooked.device)
    heads = sorted({b for b, _ in ablation.heads})
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        ids, valid = _pad(chunk, hooked.pad_id, hooked.device)
        got, handles = {}, []
        for b in heads:
            handles.append(hooked.head_projs[b].register_forward_pre_hook(
                lambda _m, args, b=b, got=got: got.__setitem__(("head", b), args[0])))
        for b in ablation.blocks:
            handles.append(hooked.blocks[b].register_forward_hook(
                lambda _m, args, kwargs, out, b=b, got=got: got.__setitem__(
                    ("block", b), _first(out) - (args[0] if args else kwargs["hidden_states"])), with_kwargs=True))
        try:
            with torch.no_grad():
                hooked.logits(ids, valid, torch.zeros(1, dtype=torch.long, device=ids.device))
        finally:
            for h in handles:
                h.remove()
        m = valid.float()
        T = ids.shape[1]
        count[:T] += m.sum(0)
        for key, x in got.items():
            s = (x.float() * m[..., None]).sum(0)
            if key not in sums:
                sums[key] = torch.zeros(len(count), s.shape[-1], device=hooked.device)
            sums[key][:T] += s
        if on_progress:
            on_progress("means", start + len(chunk), len(seqs))
    means = {k: v / count.clamp(min=1)[:, None] for k, v in sums.items()}
    return {k: (v.view(len(count), hooked.n_heads, -1) if k[0] == "head" else v) for k, v in means.items()}


def answer_logprobs(adapter, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                    ablation: Ablation | None = None, batch_size: int = 32,
                    on_progress: Progress | None = None) -> np.ndarray:
    """log p(answer_i | prompt_i) for each prompt (summed over the answer's tokens, teacher-forced),
    optionally with ``ablation`` (``mean``: over these prompts + answers). float64 ``[n]``."""
    hooked = adapter if isinstance(adapter, Hooked) else hooked_model(adapter)
    prompts, answers = [tuple(p) for p in prompts], [tuple(a) for a in answers]
    _check_rows(prompts, answers)
    hooked.check(ablation)
    means = (component_means(hooked, _scored_inputs(prompts, answers), ablation, batch_size=batch_size)
             if ablation and ablation.mode == "mean" else None)
    out = []
    for start in range(0, len(prompts), batch_size):
        sl = slice(start, start + batch_size)
        out.append(_score(hooked, prompts[sl], answers[sl], ablation=ablation, means=means)[0])
        if on_progress:
            on_progress("score", min(start + batch_size, len(prompts)), len(prompts))
    return np.concatenate(out) if out else np.zeros(0)


def _check_rows(prompts, answers):
    if len(prompts) != len(answers):
        raise DataError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        raise DataError("no prompts to score")
    for i, (p, a) in enumerate(zip(prompts, answers)):
        if not p:
            raise DataError(f"prompt {i} has no tokens (the answer's first token is predicted from the prompt)")
        if not a:
            raise DataError(f"the answer of prompt {i} has no tokens")


# --------------------------------------------------------------------------- patching

def patch_residual(adapter, pairs: Sequence[TokenPair], *, layers: Sequence[int] | None = None,
                   ablation: Ablation | None = None, batch_size: int = 32, min_gap: float = 1e-6,
                   on_progress: Progress | None = None):
    """Patch run A's residual stream into run B at every (layer, position); see the module docstring.

    Returns an xarray Dataset with dims ``pair``, ``layer`` (resid layers), ``pos`` (offset from
    the end of the B prompt: -1 is its last token): ``logp_patched``, ``recovered_pair``
    ``(pair, layer, pos)``; ``recovered``, ``recovered_pooled`` ``(layer, pos)``; ``logp_a``
    (with ``ablation``), ``logp_a_clean``, ``logp_b``, ``n_answer``, ``len_a``, ``len_b``
    ``(pair)``; ``token_b`` ``(pair, pos)`` (token ids, -1 where none).
    """
    import torch
    import xarray as xr

    hooked = adapter if isinstance(adapter, Hooked) else hooked_model(adapter)
    pairs = list(pairs)
    if not pairs:
        raise DataError("no prompt pairs to patch")
    _check_rows([p.a for p in pairs] + [p.b for p in pairs], [p.answer for p in pairs] * 2)
    layers = list(range(hooked.n_resid)) if layers is None else sorted({int(x) for x in layers})
    if not layers or any(not 0 <= x < hooked.n_resid for x in layers):
        raise UsageError(f"resid layers must be in 0-{hooked.n_resid - 1}, got {layers}")
    hooked.check(ablation)
    n, P = len(pairs), max(len(p.b) for p in pairs)
    answers = [p.answer for p in pairs]
    report = on_progress or (lambda *_: None)
    means = None
    if ablation and ablation.mode == "mean":
        means = component_means(hooked, _scored_inputs([p.a for p in pairs], answers), ablation,
                                batch_size=batch_size, on_progress=report)

    logp_b = np.concatenate([_score(hooked, [p.b for p in pairs[s:s + batch_size]], answers[s:s + batch_size])[0]
                             for s in range(0, n, batch_size)])
    report("run b", n, n)
    logp_a_clean, logp_a, resid_a = [], [], []  # resid_a[i]: [layer, len_b, d] aligned with B's prompt
    for s in range(0, n, batch_size):
        chunk = pairs[s:s + batch_size]
        if ablation:
            logp_a_clean.append(_score(hooked, [p.a for p in chunk], answers[s:s + batch_size])[0])
        lp, fwd = _score(hooked, [p.a for p in chunk], answers[s:s + batch_size], ablation=ablation, means=means,
                         capture=True)
        logp_a.append(lp)
        for r, p in enumerate(chunk):
            src = torch.as_tensor([max(p.source(q) or 0, 0) for q in range(len(p.b))], device=hooked.device)
            resid_a.append(torch.stack([fwd.resid[layer][r, src] for layer in layers]))
        report("run a", min(s + batch_size, n), n)
    logp_a = np.concatenate(logp_a)
    logp_a_clean = np.concatenate(logp_a_clean) if ablation else logp_a

    # every (pair, layer, B position) with a counterpart in A, patched one at a time
    jobs = [(i, li, p) for i, pair in enumerate(pairs) for li in range(len(layers))
            for p in range(len(pair.b)) if pair.source(p) is not None]
    patched = np.full((n, len(layers), P), np.nan)
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        patches = []
        for li in sorted({j[1] for j in chunk}):
            rows = [r for r, j in enumerate(chunk) if j[1] == li]
            pos = [chunk[r][2] for r in rows]
            vals = torch.stack([resid_a[chunk[r][0]][li, chunk[r][2]] for r in rows])
            t = lambda v: torch.as_tensor(v, dtype=torch.long, device=hooked.device)
            patches.append(Patch(layers[li], t(rows), t(pos), vals))
        lp, _ = _score(hooked, [pairs[i].b for i, _, _ in chunk], [answers[i] for i, _, _ in chunk],
                       patches=patches)
        for (i, li, p), v in zip(chunk, lp):
            patched[i, li, P - len(pairs[i].b) + p] = v
        report("patch", s + len(chunk), len(jobs))

    gap = logp_a - logp_b
    with np.errstate(invalid="ignore", divide="ignore"):
        rec_pair = (patched - logp_b[:, None, None]) / np.where(np.abs(gap) < min_gap, np.nan, gap)[:, None, None]
        have = ~np.isnan(patched)
        pooled = (_nanmean0(patched) - _masked_mean(logp_b, have)) / (_masked_mean(logp_a, have)
                                                                         - _masked_mean(logp_b, have))
    recovered = _nanmean0(rec_pair)
    tokens_b = np.full((n, P), -1, dtype=np.int64)
    for i, p in enumerate(pairs):
        tokens_b[i, P - len(p.b):] = p.b
    pair_dim, grid = ("pair",), ("pair", "layer", "pos")
    data = {
        "logp_patched": (grid, patched, {"description": "log p(answer) of run B with resid[layer, pos] from run A"}),
        "recovered_pair": (grid, rec_pair, {"description": "(logp_patched - logp_b) / (logp_a - logp_b) per pair"}),
        "recovered": (grid[1:], recovered, {"description": "recovered_pair averaged over pairs"}),
        "recovered_pooled": (grid[1:], pooled, {"description": "(mean logp_patched - mean logp_b) / "
                                                               "(mean logp_a - mean logp_b) over pairs"}),
        "logp_a": (pair_dim, logp_a, {"description": "log p(answer) of run A (with the ablation, if any)"}),
        "logp_a_clean": (pair_dim, logp_a_clean, {"description": "log p(answer) of run A without ablation"}),
        "logp_b": (pair_dim, logp_b, {"description": "log p(answer) of run B"}),
        "n_answer": (pair_dim, np.array([len(a) for a in answers]), {}),
        "len_a": (pair_dim, np.array([len(p.a) for p in pairs]), {}),
        "len_b": (pair_dim, np.array([len(p.b) for p in pairs]), {}),
        "prefix": (pair_dim, np.array([p.prefix for p in pairs]), {"description": "leading B tokens aligned with "
                                                                                 "A's first tokens (e.g. a BOS)"}),
        "token_b": (("pair", "pos"), tokens_b, {"description": "B prompt token ids, aligned from the end (-1: none)"}),
    }
    coords = {"pair": np.arange(n), "layer": np.array(layers), "pos": np.arange(-P, 0)}
    return xr.Dataset(data, coords=coords, attrs={
        "ablation": (ablation or Ablation()).label, "ablation_spec": _json((ablation or Ablation()).to_dict()),
        "alignment": "end: B's last prompt token <-> A's last prompt token (pos -1); a pair's prefix "
                     "(e.g. BOS) <-> A's first tokens",
        "metric": "recovered = (logp_patched - logp_b) / (logp_a - logp_b); logp = summed answer log-prob",
        "min_gap": min_gap})


def ablate(adapter, pairs: Sequence[TokenPair], ablation: Ablation, *, batch_size: int = 32,
           on_progress: Progress | None = None):
    """log p(answer) of every pair's A run with and without ``ablation``, and of its B run
    (a Dataset over ``pair``: ``logp_a_clean``, ``logp_a``, ``delta = logp_a - logp_a_clean``, ``logp_b``)."""
    import xarray as xr

    hooked = adapter if isinstance(adapter, Hooked) else hooked_model(adapter)
    a, b, ans = [p.a for p in pairs], [p.b for p in pairs], [p.answer for p in pairs]
    clean = answer_logprobs(hooked, a, ans, batch_size=batch_size)
    abl = answer_logprobs(hooked, a, ans, ablation=ablation, batch_size=batch_size, on_progress=on_progress)
    lb = answer_logprobs(hooked, b, ans, batch_size=batch_size)
    return xr.Dataset({"logp_a_clean": ("pair", clean), "logp_a": ("pair", abl), "delta": ("pair", abl - clean),
                       "logp_b": ("pair", lb)}, coords={"pair": np.arange(len(pairs))},
                      attrs={"ablation": ablation.label, "ablation_spec": _json(ablation.to_dict())})


def _masked_mean(v: np.ndarray, have: np.ndarray) -> np.ndarray:
    """Mean of per-pair ``v`` over the pairs that have each (layer, pos)."""
    w = have.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * v[:, None, None]).sum(0) / w.sum(0)


def _nanmean0(a: np.ndarray) -> np.ndarray:
    finite = np.isfinite(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, a, 0).sum(0) / finite.sum(0)


def _json(obj) -> str:
    import json

    return json.dumps(obj)
