"""TransformerLens 4: ``tlens:`` models as a ``TransformerBridge`` (TransformerLens 4 removed
``HookedTransformer``; :mod:`probekit.models.tlens` documents the adapter, which runs either).

With TransformerLens >= 4 installed, ``tlens:<name>`` boots ``TransformerBridge.boot_transformers``:
``<name>`` is an HF hub id (``gpt2``, ``meta-llama/Llama-3.2-1B``...) or a local HF model directory
(``save_pretrained``), so the thousands of architectures TransformerLens 4 wraps work here. The
weight-processing switches of the spec keep their meaning and their defaults (HookedTransformer's:
``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases`` on): they are
passed to ``bridge.enable_compatibility_mode(...)``, TransformerLens 4's HookedTransformer-equivalent
processing; ``?processing=none`` leaves the bridge raw (HF numerics). A :func:`~probekit.models.tlens.save_tlens`
directory (a ``HookedTransformerConfig``) needs TransformerLens < 4: it is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from probekit.errors import CheckpointError

LEGACY_HINT = "pip install 'transformer-lens<4'"


def tl_major() -> int | None:
    """The installed TransformerLens's major version (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformer-lens").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return None


def is_save_tlens_dir(path: Path) -> bool:
    """Whether ``path`` is a :func:`save_tlens` directory (a HookedTransformerConfig, not an HF config)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "model_type" not in cfg and {"n_layers", "d_model", "n_ctx"} <= cfg.keys()


def load_bridge(name: str, flags: dict, *, random_init: bool, init_seed: int, device: str, dtype):
    """Boot a ``TransformerBridge`` and process it per ``flags``: ``(bridge, applied, source)``."""
    import torch

    from probekit.models.tlens_load import one_line, quiet

    from transformer_lens import TransformerBridge

    local = Path(name).expanduser()
    if local.is_dir() and is_save_tlens_dir(local):
        raise CheckpointError(f"{name} was saved with save_tlens for HookedTransformer, which TransformerLens 4 "
                              f"removed: load it with {LEGACY_HINT}, or save the HF model with save_pretrained")
    source = "directory" if local.is_dir() else "pretrained"
    if random_init:
        torch.manual_seed(init_seed)
    try:
        with quiet():
            bridge = TransformerBridge.boot_transformers(str(local) if local.is_dir() else name, device=device,
                                                         dtype=dtype, load_weights=not random_init)
            if random_init:
                bridge = bridge.to(dtype).to(device)
            bridge.eval()
            if any(flags.values()):
                bridge.enable_compatibility_mode(disable_warnings=True, **flags)
    except Exception as exc:  # offline, unknown name, unsupported architecture: one line
        raise CheckpointError(f"cannot boot {name} as a TransformerBridge: {type(exc).__name__}: "
                              f"{one_line(exc)}") from exc
    return bridge.eval(), dict(flags), source


def config_dict(cfg) -> dict:
    """A bridge's (or HookedTransformer's) config as a plain dict, for provenance."""
    import dataclasses

    from probekit.models.tlens_load import config_to_dict

    if dataclasses.is_dataclass(cfg):
        return config_to_dict(cfg, strict=False)
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_") and k != "device"}
