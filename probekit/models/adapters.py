"""Model adapters: load a model from a spec and run batches, capturing named sites.

A spec is ``<scheme>:<rest>``; the scheme picks an adapter class from the model
registry (``toy`` is built in; plugins add more). An adapter exposes:

* ``sites``: site name -> number of layers it has (``resid`` has n_layers + 1: the
  embeddings are layer 0, layer l is the residual stream after block l);
* ``run(inputs, sites) -> (activations, outputs)`` with activations
  ``{site: array[batch, layer, pos, feature]}`` and outputs ``[batch, pos, d_out]``;
* ``provenance()``: attributes recorded in the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from probekit.errors import UnknownNameError, UsageError


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


class ToyAdapter:
    """Adapter for probekit's own toy transformers: ``toy:<checkpoint dir>``."""

    scheme = "toy"

    def __init__(self, model, ckpt, spec: str, *, random_init: bool, init_seed: int, device: str):
        self.model, self.ckpt, self.spec = model, ckpt, spec
        self.random_init, self.init_seed, self.device = random_init, init_seed, device
        n = ckpt.config.n_layers
        self.hook_names = {"resid": ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]}

    @classmethod
    def load(cls, rest: str, *, random_init: bool = False, init_seed: int = 12345, device: str = "cpu"):
        import torch

        from probekit.models import checkpoint
        from probekit.models.toy import ToyTransformer

        device = resolve_device(device)
        ckpt = checkpoint.read(Path(rest))
        if random_init:
            torch.manual_seed(init_seed)
        model = ToyTransformer(ckpt.config)
        if not random_init:
            checkpoint.load_weights(model, rest)
        return cls(model.to(device).eval(), ckpt, f"toy:{rest}", random_init=random_init,
                   init_seed=init_seed, device=device)

    @property
    def sites(self) -> dict[str, int]:
        return {site: len(names) for site, names in self.hook_names.items()}

    @property
    def d_model(self) -> int:
        return self.ckpt.config.d_model

    @property
    def d_out(self) -> int:
        return self.ckpt.config.d_out

    def run(self, inputs: np.ndarray, sites: list[str]):
        import torch

        unknown = [s for s in sites if s not in self.hook_names]
        if unknown:
            raise UnknownNameError("site", unknown[0], self.hook_names)
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = []
        for site in sites:
            for layer, name in enumerate(self.hook_names[site]):
                def hook(_mod, _inp, out, key=(site, layer)):
                    captured[key] = out.detach()
                handles.append(modules[name].register_forward_hook(hook))
        x = torch.as_tensor(inputs, device=self.device)
        x = x.float() if self.ckpt.config.input_kind == "continuous" else x.long()
        try:
            with torch.no_grad():
                out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        acts = {
            site: torch.stack([captured[(site, l)] for l in range(len(self.hook_names[site]))], 1).float().cpu().numpy()
            for site in sites
        }
        return acts, out.float().cpu().numpy()

    def provenance(self) -> dict:
        import torch

        from probekit.models.checkpoint import weights_hash

        return {
            "model_spec": self.spec,
            "model_hash": weights_hash(self.model),
            "model_config": self.ckpt.config.to_dict(),
            "random_init": self.random_init,
            "init_seed": self.init_seed if self.random_init else None,
            "device": self.device,
            "torch_version": torch.__version__,
        }


def load_adapter(host, spec: str, *, random_init: bool = False, device: str = "cpu"):
    """Resolve ``spec`` through the host's model registry and load it."""
    scheme, rest = parse_spec(spec)
    adapter_cls = host.models.get(scheme)
    return adapter_cls.load(rest, random_init=random_init, device=device)
