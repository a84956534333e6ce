"""Toy-model checkpoints: ``model.safetensors`` + ``config.json`` in one directory. Nothing is pickled."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from probekit.errors import CheckpointError
from probekit.models.toy.model import ToyConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "probekit-toy/1"


@dataclass
class Checkpoint:
    """What a toy checkpoint directory records besides the weights."""

    config: ToyConfig
    task: str
    task_params: dict
    training: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.config.to_dict(),
            "task": self.task,
            "task_params": self.task_params,
            "training": self.training,
        }


def save(model, ckpt: Checkpoint, out: str | os.PathLike) -> Path:
    """Write ``model``'s weights (safetensors) and ``ckpt`` (JSON) into directory ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / (WEIGHTS + ".tmp")))
    os.replace(out / (WEIGHTS + ".tmp"), out / WEIGHTS)  # never leave half a weights file
    (out / CONFIG).write_text(json.dumps(ckpt.to_json(), indent=2) + "\n")
    return out


def read(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint directory's ``config.json``."""
    path = Path(path)
    cfg_file = path / CONFIG
    if not cfg_file.is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not a probekit toy checkpoint (needs {CONFIG} and {WEIGHTS})")
    try:
        raw = json.loads(cfg_file.read_text())
        if raw.get("format") != FORMAT:
            raise CheckpointError(f"{cfg_file} has format {raw.get('format')!r}, expected {FORMAT!r}")
        return Checkpoint(ToyConfig.from_dict(raw["model"]), raw["task"], raw["task_params"], raw.get("training", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{cfg_file} is malformed: {exc}") from exc


def load_weights(model, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model``; a shape or key mismatch is a CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(Path(path) / WEIGHTS))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from exc


def weights_hash(model) -> str:
    """sha256 over parameter names, shapes and bytes: identifies the exact weights cached."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()
