"""Inputs from a text file: one prompt per line (``.txt``) or one JSON object per line with a
``"text"`` field (``.jsonl``), tokenised by the model's own tokenizer.

The store gets ``tokens`` and ``valid`` ``(sample, pos)`` (False at padding: probes never see
those positions), ``token_str`` (each token's text, to label positions in a notebook) and
``text`` ``(sample,)``. The file's sha256 is recorded, so a resume refuses a changed file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probekit.errors import DataError, UsageError
from probekit.tasks import ModelIO, Task


@dataclass(frozen=True)
class TextParams:
    file: str = ""
    sha256: str = ""
    max_len: int = 0  # 0: the longest prompt


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt (one per non-empty line) or .jsonl (``{"text": ...}`` per line) file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--text file {path} does not exist")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for i, ln in enumerate(lines, 1):
            try:
                prompts.append(str(json.loads(ln)["text"]))
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{i} is not a JSON object with a 'text' field") from None
        lines = prompts
    if not lines:
        raise DataError(f"{path} holds no prompts")
    return lines


class TextTask(Task):
    """Prompts from a file; needs the model adapter's tokenizer (``bind``) before ``generate``."""

    name = "text"
    Params = TextParams

    @classmethod
    def from_file(cls, path: str, max_len: int | None, adapter) -> "TextTask":
        from probekit.models.capabilities import has

        if not has(adapter, "tokenizer"):
            raise UsageError(f"--text needs a model with a tokenizer (e.g. hf:<path>); {adapter.spec} has none: "
                             "cache a task instead (--task NAME)")
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else ""
        task = cls(file=str(path), sha256=digest, max_len=int(max_len or 0))
        task.prompts = read_prompts(path)
        task.adapter = adapter
        task.ids, task.valid = adapter.tokenize(task.prompts, max_len=max_len or None)
        return task

    @property
    def io(self) -> ModelIO:
        vocab = int(self.adapter.d_out)
        return ModelIO("tokens", "tokens", "tokens", vocab, vocab, int(self.ids.shape[1]))

    def generate(self, n: int, seed: int):
        """The first ``n`` prompts (``seed`` is ignored: a file has one order)."""
        import xarray as xr

        if n > len(self.prompts):
            raise UsageError(f"{self.params.file} holds {len(self.prompts)} prompts, {n} were asked for")
        ids, valid = self.ids[:n], self.valid[:n]
        strings = np.array(self.adapter.decode_tokens(ids), dtype=object)
        strings[~valid] = ""
        return xr.Dataset(
            {
                "tokens": (("sample", "pos"), ids.astype(np.int64), {"description": "token ids (0 at padding)"}),
                "valid": (("sample", "pos"), valid, {"description": "False at padding; probes skip those"}),
                "token_str": (("sample", "pos"), strings, {"description": "each token's text"}),
                "text": (("sample",), np.array(self.prompts[:n], dtype=object)),
            },
            coords={"pos": np.arange(ids.shape[1])},
            attrs=self.provenance(seed),
        )
