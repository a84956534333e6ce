"""Adapter for any ``torch.nn.Module``: ``torch:<module.path>:<factory>?<site>=<pattern>&...``.

``factory()`` (an importable callable, no arguments) returns the module, weights included. The
part after ``?`` maps store sites to module paths; ``*`` stands for the layer index, so
``resid=blocks.*`` captures the outputs of ``blocks.0``, ``blocks.1``, ... as the layers of
``resid``, and ``emb=embed`` a one-layer site. Example::

    probekit cache --task lds --out store/m.zarr \\
        --model 'torch:my_models:make_model?resid=blocks.*&mlp_out=blocks.*.mlp' --site resid

The module is called on the task's input tensor ``[batch, pos, ...]`` and must return
``[batch, pos, d_out]`` (a tuple's first element, or an output's ``.logits``, is used). Each
captured module must output ``[batch, pos, d_model]`` (or a tuple whose first element is).
``--random-init`` re-initialises every submodule that has ``reset_parameters`` under a
fixed seed.
"""

from __future__ import annotations

import importlib
import re
from urllib.parse import parse_qsl

import numpy as np

from probekit.errors import CheckpointError, UnknownNameError, UsageError
from probekit.models.anatomy import Anatomy
from probekit.models.hooks import Hook, first_output, run_with_hooks


def module_patterns(model) -> dict[str, list[str]]:
    """Every module-path pattern with layer indices replaced by ``*`` -> the paths it matches."""
    patterns: dict[str, list[str]] = {}
    for name, _ in model.named_modules():
        if name:
            patterns.setdefault(re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", name), []).append(name)
    return patterns


class TorchModuleAdapter:
    """Any ``nn.Module`` with sites given as module-path patterns (see the module docstring)."""

    scheme = "torch"
    #: its sizes come from one sample (``prepare``); patching needs the ``resid`` site named
    capabilities = frozenset({"prepare", "patching", "tensors"})

    def __init__(self, model, spec: str, site_paths: dict[str, list[str]], *, random_init, init_seed, device):
        self.model, self.spec, self.site_paths = model, spec, site_paths
        self.random_init, self.init_seed, self.device = random_init, init_seed, device
        self._d_model = self._d_out = None
        modules = dict(model.named_modules())
        # resid layer l: the output of the l-th module of the resid site (none named: no patching)
        self.anatomy = Anatomy(model, "torch", resid=tuple((modules[p], "post") for p in site_paths.get("resid", ())))

    @classmethod
    def load(cls, rest: str, *, random_init: bool = False, init_seed: int = 12345, device: str = "cpu"):
        import torch

        from probekit.models.adapters import resolve_device

        target, _, query = rest.partition("?")
        modpath, sep, attr = target.partition(":")
        if not sep or not modpath or not attr:
            raise UsageError(f"torch spec {rest!r} must look like <module.path>:<factory>?<site>=<pattern>")
        try:
            factory = getattr(importlib.import_module(modpath), attr)
        except (ImportError, AttributeError) as exc:
            raise CheckpointError(f"cannot import {modpath}:{attr}: {exc}") from exc
        if random_init:
            torch.manual_seed(init_seed)
        model = factory()
        if not isinstance(model, torch.nn.Module):
            raise CheckpointError(f"{modpath}:{attr}() returned a {type(model).__name__}, not a torch.nn.Module")
        if random_init:
            torch.manual_seed(init_seed)
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        patterns = module_patterns(model)
        mapping = dict(parse_qsl(query, keep_blank_values=True))
        if not mapping:
            raise UsageError(f"name the sites to capture after '?', e.g. ?resid=<pattern>; patterns of this model: "
                             f"{', '.join(sorted(patterns))}")
        site_paths = {}
        for site, pattern in mapping.items():
            if pattern not in patterns:
                raise UnknownNameError("module pattern", pattern, patterns)
            site_paths[site] = patterns[pattern]
        device = resolve_device(device)
        return cls(model.to(device).eval(), f"torch:{rest}", site_paths, random_init=random_init,
                   init_seed=init_seed, device=device)

    @property
    def sites(self) -> dict[str, int]:
        return {site: len(paths) for site, paths in self.site_paths.items()}

    def _probe_shapes(self, inputs) -> None:
        if self._d_model is None:
            acts, out = self.run(inputs[:1], list(self.site_paths))
            dims = {a.shape[-1] for a in acts.values()}
            if len(dims) != 1:
                raise UsageError(f"captured modules output different feature sizes {sorted(dims)}; cache them separately")
            self._d_model, self._d_out = dims.pop(), out.shape[-1]

    @property
    def d_model(self) -> int:
        if self._d_model is None:
            raise UsageError("call prepare(inputs) before asking a torch: adapter for its sizes")
        return self._d_model

    @property
    def d_out(self) -> int:
        self.d_model  # noqa: B018 - same precondition
        return self._d_out

    def prepare(self, inputs: np.ndarray) -> None:
        """Learn feature and output sizes from one sample (a plain module does not declare them)."""
        self._probe_shapes(inputs)

    def run(self, inputs: np.ndarray, sites: list[str], *, as_tensors: bool = False):
        """Float32 numpy activations and outputs, or (``as_tensors``) torch tensors on the device."""
        import torch

        unknown = [s for s in sites if s not in self.site_paths]
        if unknown:
            raise UnknownNameError("site", unknown[0], self.site_paths)
        modules = dict(self.model.named_modules())
        captured: dict = {}
        hooks = [Hook.capture(modules[path], captured, (site, layer))
                 for site in sites for layer, path in enumerate(self.site_paths[site])]
        x = torch.as_tensor(inputs, device=self.device)
        x = x.long() if x.dtype in (torch.int32, torch.int64) else x.float()
        out = first_output(run_with_hooks(lambda: self.model(x), hooks))
        acts = {s: torch.stack([captured[(s, i)] for i in range(len(self.site_paths[s]))], 1) for s in sites}
        if as_tensors:
            return acts, out
        return {s: a.float().cpu().numpy() for s, a in acts.items()}, out.float().cpu().numpy()

    def token_logits(self, ids, valid, keep=None):
        """The module's output on token ids ``[batch, pos]`` (a torch tensor), or only at ``keep``."""
        import torch

        out = first_output(self.model(ids.to(torch.long)))
        return out if keep is None else out[:, keep]

    def provenance(self) -> dict:
        import torch

        from probekit.models.toy.checkpoint import weights_hash

        return {"model_spec": self.spec, "model_hash": weights_hash(self.model), "random_init": self.random_init,
                "init_seed": self.init_seed if self.random_init else None, "device": self.device,
                "torch_version": torch.__version__,
                "site_modules": {s: p for s, p in self.site_paths.items()}}
