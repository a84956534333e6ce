"""The ``toy:<checkpoint dir>`` adapter: probekit's own toy transformers (see :mod:`probekit.models.adapters`)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from probekit.errors import UnknownNameError
from probekit.models.adapters import resolve_device, site_layout
from probekit.models.anatomy import FAMILIES, Anatomy
from probekit.models.hooks import Hook, run_with_hooks


class ToyAdapter:
    """Adapter for probekit's own toy transformers: ``toy:<checkpoint dir>``."""

    scheme = "toy"
    #: what every toy model can do; an instance adds what its config allows (``tokens``, ``heads``,
    #: ``weights``, ``patching``: a transformer with token inputs)
    capabilities = frozenset({"differentiable", "task", "tensors"})

    def __init__(self, model, ckpt, spec: str, *, random_init: bool, init_seed: int, device: str):
        self.model, self.ckpt, self.spec = model, ckpt, spec
        self.random_init, self.init_seed, self.device = random_init, init_seed, device
        n, cfg = ckpt.config.n_layers, ckpt.config
        self.hook_names = {
            "resid": ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(n)],
            "attn_out": [f"blocks.{i}.hook_attn_out" for i in range(n)],
            "attn_pattern": [f"blocks.{i}.attn.hook_pattern" for i in range(n)],
        }
        if cfg.mlp and cfg.arch == "transformer":
            self.hook_names["mlp_out"] = [f"blocks.{i}.hook_mlp_out" for i in range(n)]
        tokens, transformer = cfg.input_kind == "tokens", cfg.arch == "transformer"
        extra = ({"tokens"} if tokens else set()) | ({"heads"} if transformer else set())
        self.capabilities = type(self).capabilities | extra | ({"weights", "patching"} if tokens and transformer
                                                               else set())

    @classmethod
    def load(cls, rest: str, *, random_init: bool = False, init_seed: int = 12345, device: str = "cpu"):
        import torch

        from probekit.models.toy import checkpoint
        from probekit.models.toy.model import build_model

        device = resolve_device(device)
        ckpt = checkpoint.read(Path(rest))
        if random_init:
            torch.manual_seed(init_seed)
        model = build_model(ckpt.config)
        if not random_init:
            checkpoint.load_weights(model, rest)
        return cls(model.to(device).eval(), ckpt, f"toy:{rest}", random_init=random_init,
                   init_seed=init_seed, device=device)

    @cached_property
    def anatomy(self) -> Anatomy:
        cfg, model = self.ckpt.config, self.model
        names = FAMILIES["toy"]
        transformer, tokens = cfg.arch == "transformer", cfg.input_kind == "tokens"
        blocks = tuple(model.blocks) if transformer else ()
        bos = self.ckpt.task_params.get("bos") is True
        if transformer and tokens:
            why = ""
        else:
            why = "weight scores need a toy transformer with token inputs"
        return Anatomy(
            model, "toy", d_model=cfg.d_model, n_heads=cfg.n_heads if transformer else 0,
            d_head=cfg.d_model // cfg.n_heads if transformer else 0, blocks=blocks,
            resid=((model.hook_embed, "post"),) + tuple((b, "post") for b in blocks),
            head_inputs=tuple((b.get_submodule(names["out_proj"]), "merged") for b in blocks),
            embed=model.embed, ln_final=model.ln_f,
            vocab=cfg.d_in if tokens else None, max_positions=cfg.max_len, bos_id=0 if bos else None,
            n_tokens=cfg.d_in if tokens else None, special_ids=frozenset({0} if bos else ()),
            weights="toy" if not why else None, weights_note=why)

    @property
    def sites(self) -> dict[str, int]:
        return {site: len(names) for site, names in self.hook_names.items()}

    def trained_task(self) -> tuple[str, dict]:
        """The task this checkpoint was trained on and its parameters (the ``task`` capability)."""
        return self.ckpt.task, dict(self.ckpt.task_params)

    @classmethod
    def recorded_task(cls, rest: str) -> tuple[str, dict]:
        """:meth:`trained_task` of the checkpoint at ``rest``, read without loading its weights."""
        from probekit.models.toy import checkpoint

        ckpt = checkpoint.read(Path(rest))
        return ckpt.task, dict(ckpt.task_params)

    @property
    def d_model(self) -> int:
        return self.ckpt.config.d_model

    def site_layout(self, site: str, seq_len: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Store dims and per-sample shape of a site (see :data:`probekit.store.schema.SITE_DIMS`)."""
        return site_layout(site, self.sites[site], seq_len, self.d_model, self.ckpt.config.n_heads)

    @property
    def d_out(self) -> int:
        return self.ckpt.config.d_out

    @property
    def input_kind(self) -> str:
        """``"tokens"`` or ``"continuous"``: what :meth:`forward` takes."""
        return self.ckpt.config.input_kind

    def forward(self, x):
        """The model as a torch function of its inputs (token ids or continuous vectors), gradients kept."""
        return self.model(x)

    def run(self, inputs: np.ndarray, sites: list[str], *, as_tensors: bool = False):
        """Activations ``{site: [b, layer, pos, d]}`` and outputs ``[b, pos, d_out]``: float32 numpy,
        or (``as_tensors``) torch tensors on the model's device in its dtype."""
        import torch

        unknown = [s for s in sites if s not in self.hook_names]
        if unknown:
            raise UnknownNameError("site", unknown[0], self.hook_names)
        captured: dict = {}
        modules = dict(self.model.named_modules())
        hooks = [Hook.capture(modules[name], captured, (site, layer))
                 for site in sites for layer, name in enumerate(self.hook_names[site])]
        x = torch.as_tensor(inputs, device=self.device)
        x = x.float() if self.ckpt.config.input_kind == "continuous" else x.long()
        out = run_with_hooks(lambda: self.model(x), hooks)
        acts = {site: torch.stack([captured[(site, l)] for l in range(len(self.hook_names[site]))], 1)
                for site in sites}
        if as_tensors:
            return acts, out
        return {site: a.float().cpu().numpy() for site, a in acts.items()}, out.float().cpu().numpy()

    def token_logits(self, ids, valid, keep=None):
        """Logits ``[batch, pos, vocab]`` of token ids (a torch tensor on the device), or only at ``keep``."""
        out = self.model(ids)
        return out if keep is None else out[:, keep]

    def provenance(self) -> dict:
        import torch

        from probekit.models.toy.checkpoint import weights_hash

        return {
            "model_spec": self.spec,
            "model_hash": weights_hash(self.model),
            "model_config": self.ckpt.config.to_dict(),
            "random_init": self.random_init,
            "init_seed": self.init_seed if self.random_init else None,
            "device": self.device,
            "torch_version": torch.__version__,
        }
