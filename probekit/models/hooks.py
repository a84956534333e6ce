"""A model seen through hooks: where its resid layers, heads and blocks are, and one forward pass
with patches (resid vectors replaced), an ablation (heads or blocks zeroed or mean-replaced) and
the resid stream captured. :mod:`probekit.lenses.interventions.patching` builds patching and ablation on it.

Works on ``toy:`` (token inputs), ``hf:`` (causal LMs) and ``torch:`` (resid patching only) adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from probekit.errors import UsageError

MODES = ("zero", "mean")


# --------------------------------------------------------------------------- what to do

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

def first_output(out):
    """A module's main output: the first element when it returns a tuple."""
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

    from probekit.models.torch_module import _first as model_output

    modules = dict(adapter.model.named_modules())

    def logits(ids, valid, keep):
        out = model_output(adapter.model(ids.to(torch.long)))
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
    return module.register_forward_hook(lambda _m, _a, out: _with_first(out, fn(first_output(out))))


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
