"""Model adapters: load a model from a spec and run batches, capturing named sites.

A spec is ``<scheme>:<rest>``; the scheme picks an adapter class from the model
registry (``toy`` is built in; plugins add more). An adapter exposes:

* ``sites``: site name -> number of layers it has (``resid`` has n_layers + 1: the
  embeddings are layer 0, layer l is the residual stream after block l);
* ``run(inputs, sites) -> (activations, outputs)`` with activations
  ``{site: array[batch, layer, pos, feature]}`` and outputs ``[batch, pos, d_out]``;
* ``provenance()``: attributes recorded in the store;
* ``capabilities``: a frozenset of :data:`probekit.models.capabilities.CAPABILITIES` names (what it
  can do beyond the above; lenses ``require`` them instead of inspecting the adapter);
* ``anatomy`` (adapters with ``tokens``, ``heads``, ``weights`` or ``patching``): a
  :class:`probekit.models.anatomy.Anatomy`, where its blocks, heads and embeddings are.

The built-in adapters: ``toy`` (:mod:`probekit.models.toy.adapter`), ``hf``, ``tlens``, ``nnsight``, ``torch``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from probekit.errors import UsageError


@runtime_checkable
class ModelAdapter(Protocol):
    """What ``probekit cache`` needs of a model. Register the class under a spec scheme."""

    spec: str

    @classmethod
    def load(cls, rest: str, *, random_init: bool = False, device: str = "cpu") -> "ModelAdapter":
        """Load the model named by the part of the spec after ``<scheme>:``."""

    @property
    def sites(self) -> dict[str, int]:
        """Site name -> number of layers it has."""

    @property
    def d_model(self) -> int:
        """Feature size of every site."""

    @property
    def d_out(self) -> int:
        """Size of the model output at each position."""

    def run(self, inputs: np.ndarray, sites: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Activations ``{site: [batch, layer, pos, feature]}`` and outputs ``[batch, pos, d_out]``."""

    def provenance(self) -> dict:
        """Store attributes: model_spec, model_hash, device, torch_version, random_init, ..."""


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"toy:path"`` into ``("toy", "path")``."""
    scheme, sep, rest = spec.partition(":")
    if not sep or not scheme or not rest:
        raise UsageError(f"model spec {spec!r} must look like <scheme>:<name or path>, e.g. toy:store/models/demo")
    return scheme, rest


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA device")
    return device


def decode_each(tokenizer, ids) -> list[list[str]]:
    """Each token's own text (``decode([id])``, special tokens kept) for ``ids[b, T]`` or ``ids[T]``:
    the position labels of text adapters (``hf:``, ``tlens:``)."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    return [tokenizer.batch_decode([[int(i)] for i in row], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False) for row in ids]


def site_layout(site: str, n: int, seq_len: int, d_model: int, n_heads: int):
    """The conventional layout of a named site: ``(dims, shape without sample)``."""
    from probekit.store import schema
    if site == "attn_pattern":
        return schema.PATTERN_DIMS, (n, n_heads, seq_len, seq_len)
    if site in ("attn_out", "mlp_out"):
        return schema.BLOCK_DIMS, (n, seq_len, d_model)
    return schema.ACTIVATION_DIMS, (n, seq_len, d_model)


def adapter_site_layout(adapter, site: str, seq_len: int):
    """An adapter's layout for ``site`` (adapters without ``site_layout`` store (layer, pos, feature))."""
    if hasattr(adapter, "site_layout"):
        return adapter.site_layout(site, seq_len)
    from probekit.store import schema
    return schema.ACTIVATION_DIMS, (adapter.sites[site], seq_len, adapter.d_model)


MODEL_DTYPES = ("float32", "bfloat16", "float16")
#: dtypes an adapter can compute in (``torch_dtype`` accepts these names or a torch.dtype)
COMPUTE_DTYPES = ("float32", "float16", "bfloat16", "float64")


def torch_dtype(dtype):
    """``None`` (float32), a torch.dtype, or one of :data:`COMPUTE_DTYPES` (``"torch."`` prefix allowed)."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in COMPUTE_DTYPES:
        raise UsageError(f"dtype {dtype!r} is not supported; choose from: {', '.join(COMPUTE_DTYPES)}")
    return getattr(torch, name)


def load_adapter(host, spec: str, *, random_init: bool = False, device: str = "cpu", dtype: str | None = None):
    """Resolve ``spec`` through the host's model registry and load it (``dtype``: the model's
    compute dtype, for adapters that support it; None keeps the adapter's default)."""
    scheme, rest = parse_spec(spec)
    adapter_cls = host.models.get(scheme)
    if dtype is None:
        return adapter_cls.load(rest, random_init=random_init, device=device)
    if dtype not in MODEL_DTYPES:
        raise UsageError(f"unknown model dtype {dtype!r}; choose from: {', '.join(MODEL_DTYPES)}")
    import inspect

    if "dtype" not in inspect.signature(adapter_cls.load).parameters:
        raise UsageError(f"model scheme {scheme!r} does not take a model dtype")
    return adapter_cls.load(rest, random_init=random_init, device=device, dtype=dtype)


def __getattr__(name):
    if name == "ToyAdapter":  # it lives in probekit.models.toy.adapter now
        from probekit.models.toy.adapter import ToyAdapter

        return ToyAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
