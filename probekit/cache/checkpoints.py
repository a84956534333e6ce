"""The checkpoints of a training run, as one store dimension (``probekit cache --checkpoints``).

``resolve(source)`` turns a directory (every subdirectory that is a toy checkpoint, e.g.
``OUT/checkpoints`` written by ``probekit train --checkpoint-every``) or a glob into
:class:`CheckpointRef` s sorted by training step; ``check_compatible`` refuses a set whose
architectures or tasks differ, since their activations could not share one array.
The step of a checkpoint is ``training.step`` in its ``config.json``, else the number its
directory name ends with (``step-0000500`` -> 500).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

from probekit.errors import UsageError

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint: its directory (as found from the source) and training step."""

    path: str
    step: int

    @property
    def spec(self) -> str:
        return f"toy:{self.path}"


def is_toy_checkpoint(path: Path) -> bool:
    from probekit.models.toy.checkpoint import CONFIG, WEIGHTS

    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def resolve(source: str) -> list[CheckpointRef]:
    """The toy checkpoints named by ``source`` (a directory of them, or a glob), by training step."""
    from probekit.models.toy import checkpoint
    if any(c in source for c in GLOB_CHARS):
        found = [Path(p) for p in sorted(glob.glob(source)) if is_toy_checkpoint(Path(p))]
        if not found:
            raise UsageError(f"--checkpoints {source!r} matches no toy checkpoint "
                             "(a directory with config.json and model.safetensors)")
    else:
        root = Path(source)
        if not root.is_dir():
            raise UsageError(f"--checkpoints {source}: no such directory")
        found = [p for p in sorted(root.iterdir()) if is_toy_checkpoint(p)]
        if not found and (root / "checkpoints").is_dir():  # a training run's output directory
            found = [p for p in sorted((root / "checkpoints").iterdir()) if is_toy_checkpoint(p)]
        if not found:
            raise UsageError(f"--checkpoints {source} holds no toy checkpoints (subdirectories with config.json "
                             "and model.safetensors, as `probekit train --checkpoint-every` writes)")
    refs = sorted((CheckpointRef(str(p), _step(p, checkpoint.read(p).training)) for p in found),
                  key=lambda r: (r.step, r.path))
    for a, b in zip(refs, refs[1:]):
        if a.step == b.step:
            raise UsageError(f"checkpoints {a.path} and {b.path} are both at training step {a.step}; "
                             "pass a glob that picks one of them")
    return refs


def _step(path: Path, training: dict) -> int:
    step = training.get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    match = re.search(r"(\d+)$", path.name)
    if match:
        return int(match.group(1))
    raise UsageError(f"cannot tell the training step of checkpoint {path}: its config.json has no training.step "
                     "and its name ends in no number")


def check_compatible(paths: list[str]) -> None:
    """Refuse checkpoints that differ in architecture or task, naming the first that does and how."""
    from probekit.models.toy import checkpoint
    first = checkpoint.read(paths[0])
    ref = _describe(first)
    for path in paths[1:]:
        other = _describe(checkpoint.read(path))
        diffs = [f"{k} ({ref.get(k)!r} vs {other.get(k)!r})" for k in sorted(ref.keys() | other.keys())
                 if ref.get(k) != other.get(k)]
        if diffs:
            raise UsageError(f"checkpoints must share architecture and task: {path} differs from {paths[0]} in "
                             + ", ".join(diffs))


def _describe(ckpt) -> dict:
    """Flat ``{"model.d_model": 16, "task": "lds", "task_params.dim": 3, ...}`` of one checkpoint."""
    flat = {f"model.{k}": v for k, v in ckpt.config.to_dict().items()}
    flat["task"] = ckpt.task
    flat.update({f"task_params.{k}": v for k, v in ckpt.task_params.items()})
    return flat


def weights_hashes(host, refs: list[CheckpointRef]) -> list[str]:
    """sha256 of each checkpoint's weights (the ``model_hash`` a plain cache of it records)."""
    from probekit.models.adapters import load_adapter

    return [load_adapter(host, r.spec).provenance()["model_hash"] for r in refs]


def short_list(value) -> str:
    """A list for a one-line message: in full when short, else its length, first and last items."""
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} items [{value[0]!r} ... {value[-1]!r}]"
    return repr(value)
