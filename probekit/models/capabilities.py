"""What an adapter can do, declared instead of sniffed.

An adapter class lists its optional capabilities in ``capabilities`` (a frozenset of the
names below): what every model it loads can do, which is what conformance checks of the class
rely on. An instance adds what its own model allows in ``__init__`` (``self.capabilities = ...``:
a toy transformer with token inputs adds ``tokens``, ``heads``, ``weights``, ``patching``); lenses
ask the instance. A lens that needs one calls :func:`require` once, which raises one clear
:class:`~probekit.errors.UsageError`; nothing outside ``probekit.models`` inspects an adapter
with ``hasattr``/``getattr``.
"""

from __future__ import annotations

from probekit.errors import UsageError

CAPABILITIES = {
    "tokens": "token inputs (a language model; its anatomy gives the vocabulary and context length)",
    "tokenizer": "a tokenizer (text prompts: --text, icl, patch with text pairs)",
    "padding": "a padding mask: run(inputs, sites, valid=...) and tokenize() returning one",
    "heads": "addressable attention heads (head ablation; the anatomy's head_inputs)",
    "weights": "readable attention weights (OV/QK circuit scores; the anatomy's weights reader)",
    "patching": "token inputs, a hookable residual stream and next-token logits (activation patching and ablation)",
    "differentiable": "its outputs as a differentiable torch function of its inputs (forward(x); a toy model)",
    "task": "the task it was trained on (a toy checkpoint: --task may be omitted)",
    "prepare": "sizes learnt from one sample of inputs (a plain torch module)",
    "tensors": "run(..., as_tensors=True): activations and outputs as torch tensors on the model's device, in "
               "its dtype (the cache casts them there and copies them to pinned host buffers itself)",
}


def capabilities(adapter) -> frozenset[str]:
    """The capabilities ``adapter`` (an instance or a class) declares."""
    return frozenset(getattr(adapter, "capabilities", ()))


def has(adapter, capability: str) -> bool:
    """Whether ``adapter`` declares ``capability`` (a name from :data:`CAPABILITIES`)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; choose from: {', '.join(CAPABILITIES)}")
    return capability in capabilities(adapter)


def require(adapter, capability: str, what: str) -> None:
    """Raise a one-line :class:`UsageError` unless ``adapter`` declares ``capability``;
    ``what`` names the thing that needs it (e.g. ``"--ablate-heads"``)."""
    if not has(adapter, capability):
        spec = getattr(adapter, "spec", type(adapter).__name__)
        raise UsageError(f"{what} needs a model with {CAPABILITIES[capability]}; {spec} does not declare "
                         f"the {capability!r} capability")
