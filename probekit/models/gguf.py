"""GGUF files (llama.cpp's format) as ``hf:`` models: ``hf:path/to/model.gguf``.

A GGUF holds a model's weights (often quantised: ``Q4_1``, ``Q8_0``, ...), its config and its
tokenizer (vocabulary, merges, special tokens) in one file. ``hf:`` hands it to transformers
(``from_pretrained(folder, gguf_file=name)``), which builds the config and the tokenizer from the
file's metadata and *dequantises* every tensor to the compute dtype (float32 unless
``--model-dtype`` says otherwise). What was dequantised is recorded in the store's provenance as
``model_source`` (:func:`gguf_record`): the file, its sha256, its tensor types with their counts,
and the dtype they became. The activations are those of the dequantised float model, not of
llama.cpp's quantised kernels.

:func:`convert_gguf` writes the dequantised model as a safetensors HF directory (``save_pretrained``)
with the same record in ``probekit_gguf.json``, so later loads skip the dequantisation and the store
still says where the weights came from.

Needs the ``gguf`` package (``pip install 'probekit-lab[llm]'``), imported only here, inside functions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from probekit.errors import CheckpointError, UsageError

MAGIC = b"GGUF"
#: the record :func:`convert_gguf` leaves beside the safetensors weights
RECORD_FILE = "probekit_gguf.json"


def names_gguf(rest: str) -> bool:
    """Whether the part of an ``hf:`` spec after the scheme names a GGUF file: it ends in ``.gguf``, or
    it is an existing file that starts with the GGUF magic bytes."""
    path = Path(rest).expanduser()
    if rest.lower().endswith(".gguf"):
        return True
    return path.is_file() and _magic(path) == MAGIC


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def checked_gguf(rest: str) -> Path:
    """The GGUF file ``rest`` names, after checking it exists, is a GGUF and ``gguf`` is installed."""
    path = Path(rest).expanduser()
    if not path.is_file():
        raise CheckpointError(f"no GGUF file at {rest}")
    if _magic(path) != MAGIC:
        raise CheckpointError(f"{rest} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as exc:
        raise UsageError("GGUF models need the gguf package: pip install 'probekit-lab[llm]'") from exc
    return path


def gguf_record(path: Path, dtype: str) -> dict:
    """Provenance of a model read from the GGUF file ``path`` and dequantised to ``dtype``:
    ``{"format": "gguf", "file", "sha256", "architecture", "tensor_types": {type: count},
    "quantized": [types other than F32/F16/BF16], "dequantized_to": dtype}``."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # a truncated or corrupt file
        raise CheckpointError(f"cannot read GGUF file {path}: {type(exc).__name__}: {exc}") from exc
    types = Counter(t.tensor_type.name for t in reader.tensors)
    field = reader.fields.get("general.architecture")
    arch = field.contents() if field is not None else None
    return {
        "format": "gguf",
        "file": path.name,
        "sha256": file_sha256(path),
        "architecture": arch,
        "tensor_types": dict(sorted(types.items())),
        "quantized": sorted(t for t in types if t not in ("F32", "F16", "BF16", "F64")),
        "dequantized_to": dtype,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(directory: Path) -> dict | None:
    """The GGUF record :func:`convert_gguf` left in ``directory``, if any."""
    path = directory / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def convert_gguf(gguf_path, out_dir, *, dtype: str = "float32") -> Path:
    """Dequantise the GGUF file ``gguf_path`` once and save it as a safetensors HF directory ``out_dir``
    (model, tokenizer and :data:`RECORD_FILE`); ``hf:<out_dir>`` then loads it without the GGUF.
    Returns ``out_dir``."""
    import copy

    from safetensors.torch import save_model

    from probekit.models.hf import HFAdapter

    adapter = HFAdapter.load(str(gguf_path), dtype=dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # transformers marks a GGUF-loaded model as quantised (``quantization_config``) and will not
    # save_pretrained it; its tensors are plain dequantised ones, so write them and a clean config
    config = copy.deepcopy(adapter.model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    (out / RECORD_FILE).write_text(json.dumps(adapter.source, indent=1) + "\n")
    part = out / "model.safetensors.part"  # the weights last, under their name only once complete
    save_model(adapter.model, str(part), metadata={"format": "pt"})  # tied weights stored once
    part.replace(out / "model.safetensors")
    return out


if __name__ == "__main__":  # python -m probekit.models.gguf <file.gguf> <out_dir>
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m probekit.models.gguf <model.gguf> <out_dir>")
    try:
        print(convert_gguf(sys.argv[1], sys.argv[2]))
    except (CheckpointError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
