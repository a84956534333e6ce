"""The one hook runner: capture, patching and ablation go through :func:`run_with_hooks`.

A :class:`Hook` names a module and a function of its first input (``"input"``), its main output
(``"output"``) or both (``"around"``); the function returns a replacement, or None to leave the
value as it was (a capture). :func:`run_with_hooks` registers the hooks, runs one forward pass and
removes every handle in a ``finally`` (TransformerLens's ``run_with_hooks(..., reset_hooks_end=True)``
is the model). The adapters' ``run`` (caching), activation patching, ablation and the ICL-score
ablation of ``probekit heads`` all use it.

On top of it: :class:`Ablation` (heads and blocks removed by ``zero`` or ``mean``) with one
implementation, :func:`ablation_hooks`; :class:`ComponentMeans`, the per-position means a mean
ablation replaces components with; one head-spec parser, :func:`parse_heads`; and the patching
view of a model, :class:`Hooked` / :func:`run_hooked`, which reads where things are from the
adapter's :class:`~probekit.models.anatomy.Anatomy`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from probekit.errors import UsageError
from probekit.models.anatomy import Anatomy, anatomy_of
from probekit.models.capabilities import require

MODES = ("zero", "mean")
WHERE = ("input", "output", "around")


# --------------------------------------------------------------------------- the primitive

def first_output(out):
    """A module's main output: ``.logits`` of a model output, the first element of a tuple or list."""
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


def with_first(out, new):
    """``out`` with its main output replaced by ``new`` (tuples and lists keep their other elements)."""
    if isinstance(out, tuple):
        return (new, *out[1:])
    if isinstance(out, list):
        return [new, *out[1:]]
    return new


@dataclass(frozen=True)
class Hook:
    """``fn`` on ``module``'s first input (``at="input"``: ``fn(x)``), main output (``"output"``:
    ``fn(y)``) or both (``"around"``: ``fn(x, y)``, the replacement of ``y``). ``fn`` returns the
    replacement, or None to leave the value unchanged."""

    module: object
    fn: Callable
    at: str = "output"

    @classmethod
    def capture(cls, module, store: dict, key, at: str = "output") -> "Hook":
        """A hook that keeps the value (detached) in ``store[key]``."""
        return cls(module, lambda x: store.__setitem__(key, x.detach()), at)

    def register(self):
        if self.at not in WHERE:
            raise ValueError(f"hook position {self.at!r}; choose from: {', '.join(WHERE)}")
        fn = self.fn
        if self.at == "input":
            def pre(_mod, args, kwargs):
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = fn(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})
            return self.module.register_forward_pre_hook(pre, with_kwargs=True)
        if self.at == "output":
            def post(_mod, _args, out):
                new = fn(first_output(out))
                return None if new is None else with_first(out, new)
            return self.module.register_forward_hook(post)

        def around(_mod, args, kwargs, out):
            new = fn(args[0] if args else kwargs["hidden_states"], first_output(out))
            return None if new is None else with_first(out, new)
        return self.module.register_forward_hook(around, with_kwargs=True)


@contextlib.contextmanager
def hooks_installed(hooks: Iterable[Hook]):
    """Within the block, ``hooks`` are registered (in order); every handle is removed on exit."""
    handles = []
    try:
        for hook in hooks:
            handles.append(hook.register())
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_with_hooks(forward: Callable, hooks: Iterable[Hook] = (), *, grad: bool = False):
    """``forward()`` with ``hooks`` registered, under ``torch.no_grad`` unless ``grad``; every
    handle is removed afterwards, whatever happens."""
    import torch

    with hooks_installed(hooks), (contextlib.nullcontext() if grad else torch.no_grad()):
        return forward()


# --------------------------------------------------------------------------- what to remove

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


def parse_heads(spec: str | None, n_blocks: int, n_heads: int) -> tuple[tuple[int, int], ...]:
    """``"10.3,11.*"`` -> ``((10, 3), (11, 0), (11, 1), ...)``; blocks and heads from 0, as in
    TransformerLens (``L.H`` one head, ``L.*`` every head of block L; empty: no heads)."""
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
            raise UsageError(f"head {item!r} must look like L.H or L.* (e.g. 1.2; {valid})") from None
        if not sep or not 0 <= b < n_blocks or any(not 0 <= h < n_heads for h in hs):
            raise UsageError(f"head {item!r} does not exist: this model has {valid} (write L.H, or L.* for "
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


# --------------------------------------------------------------------------- the one ablation

def _head_at(kind: str) -> str:
    return "input" if kind == "merged" else "output"


def per_head(z, kind: str, n_heads: int):
    """``z`` as ``[..., pos, head, d_head]`` (a view: writing to it writes to ``z``)."""
    return z if kind == "split" else z.view(*z.shape[:-1], n_heads, z.shape[-1] // n_heads)


def ablation_hooks(anatomy: Anatomy, ablation: Ablation, means: dict | None = None) -> list[Hook]:
    """The hooks that remove ``ablation``'s heads (their outputs := 0 or their per-position mean
    ``means[("head", b)] [T, head, d_head]``) and blocks (block output := block input, plus the
    block's mean contribution ``means[("block", b)] [T, d_model]`` for ``mean``)."""
    if ablation.mode == "mean" and means is None:
        raise UsageError("mean ablation needs the components' means (see ComponentMeans)")
    H, hooks = anatomy.n_heads, []
    by_block: dict[int, list[int]] = {}
    for b, h in ablation.heads:
        by_block.setdefault(b, []).append(h)
    for b, idx in by_block.items():
        module, kind = anatomy.head_inputs[b]

        def heads_fn(z, b=b, idx=idx, kind=kind):
            z = z.clone()
            view = per_head(z, kind, H)
            view[..., idx, :] = 0 if ablation.mode == "zero" else means[("head", b)][: view.shape[-3], idx].to(z.dtype)
            return z
        hooks.append(Hook(module, heads_fn, _head_at(kind)))
    for b in ablation.blocks:
        def block_fn(x_in, _out, b=b):
            if ablation.mode == "mean":
                x_in = x_in + means[("block", b)][: x_in.shape[1]].to(x_in.dtype)
            return x_in
        hooks.append(Hook(anatomy.blocks[b], block_fn, "around"))
    return hooks


class ComponentMeans:
    """Per-position means of the components ``ablation`` removes, accumulated batch by batch:
    install :meth:`hooks` around each forward pass, then :meth:`add` its padding mask; :meth:`result`
    gives ``{("head", b): [T, head, d_head], ("block", b): [T, d_model]}`` (float32). Sums are kept
    in ``dtype`` on ``device``."""

    def __init__(self, anatomy: Anatomy, ablation: Ablation, n_pos: int, *, dtype=None, device="cpu"):
        import torch

        self.anatomy, self.ablation = anatomy, ablation
        self.dtype, self.device = dtype or torch.float32, device
        self.count = torch.zeros(n_pos, dtype=self.dtype, device=device)
        self.sums: dict = {}
        self._got: dict = {}

    def hooks(self) -> list[Hook]:
        got = self._got = {}
        hooks = []
        for b in sorted({b for b, _ in self.ablation.heads}):
            module, kind = self.anatomy.head_inputs[b]
            hooks.append(Hook(module, lambda z, b=b: got.__setitem__(("head", b), z), _head_at(kind)))
        for b in self.ablation.blocks:
            hooks.append(Hook(self.anatomy.blocks[b], lambda x, y, b=b: got.__setitem__(("block", b), y - x),
                              "around"))
        return hooks

    def add(self, valid) -> None:
        """Add the components captured by the last forward pass, weighted by ``valid [batch, pos]``."""
        import torch

        m = torch.as_tensor(valid).to(self.device, self.dtype)
        T = m.shape[1]
        self.count[:T] += m.sum(0)
        for key, x in self._got.items():
            x = x.flatten(2) if x.dim() == 4 else x  # split heads [b, T, H, dh] -> [b, T, H * dh]
            s = (x.to(self.device, self.dtype) * m[..., None]).sum(0)
            if key not in self.sums:
                self.sums[key] = torch.zeros(len(self.count), s.shape[-1], dtype=self.dtype, device=self.device)
            self.sums[key][:T] += s
        self._got.clear()

    def result(self) -> dict:
        n, T = self.count.clamp(min=1)[:, None], len(self.count)
        means = {k: (v / n).float() for k, v in self.sums.items()}
        return {k: (v.view(T, self.anatomy.n_heads, -1) if k[0] == "head" else v) for k, v in means.items()}


# --------------------------------------------------------------------------- the patching view

class Patch(NamedTuple):
    """Set ``resid[layer][rows[k], pos[k]] = values[k]`` (tensors on the model's device)."""

    layer: int
    rows: object
    pos: object
    values: object


class Forward(NamedTuple):
    logits: object  # [batch, pos or len(keep), vocab]
    resid: list | None  # per resid layer [batch, pos, d_model], after every intervention


class Hooked:
    """A model for patching: its :class:`Anatomy` (resid layers, blocks, heads) and its logits.

    ``resid_site(l)`` is ``(module, "pre" | "post")``; ``head_projs[b]`` the module whose input holds
    block b's heads side by side; ``logits(ids, valid, keep)`` the adapter's ``token_logits``."""

    def __init__(self, adapter, anatomy: Anatomy, logits_fn: Callable):
        self.adapter, self.anatomy, self.device = adapter, anatomy, adapter.device
        self.blocks = list(anatomy.blocks)
        self.head_projs = [m for m, kind in anatomy.head_inputs if kind == "merged"]
        self.n_heads, self.pad_id, self._logits = anatomy.n_heads, anatomy.pad_id, logits_fn

    @property
    def n_resid(self) -> int:
        return len(self.anatomy.resid)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def resid_site(self, layer: int):
        return self.anatomy.resid[layer]

    def logits(self, ids, valid, keep=None):
        """Logits ``[batch, pos, vocab]``, or only at the positions ``keep`` (a 1-D tensor)."""
        return self._logits(ids, valid, keep)

    def supports(self, *, heads: bool = False, blocks: bool = False) -> None:
        """Raise a :class:`UsageError` unless this model can ablate heads / blocks."""
        if heads:
            require(self.adapter, "heads", "head ablation")
        if blocks and not self.blocks:
            raise UsageError(f"block ablation needs a model whose blocks are known; {self.adapter.spec} names none")

    def check(self, ablation: Ablation | None) -> None:
        """Raise a :class:`UsageError` unless ``ablation`` fits this model."""
        if not ablation:
            return
        self.supports(heads=bool(ablation.heads), blocks=bool(ablation.blocks))
        parse_heads(",".join(f"{b}.{h}" for b, h in ablation.heads), self.n_blocks, max(self.n_heads, 1))
        parse_blocks(",".join(map(str, ablation.blocks)), self.n_blocks)


def hooked_model(adapter) -> Hooked:
    """The :class:`Hooked` view of an adapter that declares the ``patching`` capability."""
    if isinstance(adapter, Hooked):
        return adapter
    require(adapter, "patching", "patching")
    anatomy = anatomy_of(adapter)
    if not anatomy.resid:
        raise UsageError(f"{adapter.spec}: name the residual-stream modules as the resid site, e.g. ?resid=blocks.*")
    return Hooked(adapter, anatomy, adapter.token_logits)


def _set_rows(rows, pos, values):
    def fn(h):
        h = h.clone()
        h[rows, pos] = values.to(h.dtype)
        return h
    return fn


def run_hooked(hooked: Hooked, ids, valid=None, *, patches: Sequence[Patch] = (), ablation: Ablation | None = None,
               means: dict | None = None, capture: bool = False, keep=None) -> Forward:
    """One forward pass with ``ablation`` (its hooks first), then ``patches``, then (``capture``)
    reading every resid layer as the rest of the model sees it. ``ids``: ``[batch, pos]`` long
    tensor on the model's device; ``valid``: padding mask (default all True)."""
    import torch

    hooked = hooked_model(hooked)
    ids = torch.as_tensor(ids, device=hooked.device).long()
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else torch.as_tensor(valid, device=ids.device)
    hooks = ablation_hooks(hooked.anatomy, ablation, means) if ablation else []
    for p in patches:
        module, kind = hooked.resid_site(p.layer)
        hooks.append(Hook(module, _set_rows(p.rows, p.pos, p.values), "input" if kind == "pre" else "output"))
    resid: dict[int, object] = {}
    if capture:
        for layer in range(hooked.n_resid):
            module, kind = hooked.resid_site(layer)
            hooks.append(Hook(module, lambda h, layer=layer: resid.__setitem__(layer, h),
                              "input" if kind == "pre" else "output"))
    logits = run_with_hooks(lambda: hooked.logits(ids, valid, keep), hooks)
    return Forward(logits, [resid[layer] for layer in range(hooked.n_resid)] if capture else None)
