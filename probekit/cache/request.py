"""What a cache run is asked for: :class:`CacheRequest`, its identity (what a resume must match)
and the model-output modes (``--logits keep | skip | topk:K``) with the variables each stores."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from probekit.errors import UsageError
from probekit.store import schema


@dataclass
class CacheRequest:
    """Everything that determines a store's contents (compared when resuming)."""

    model: str
    out: str
    task: str | None = None
    task_params: dict = field(default_factory=dict)
    n_samples: int = 2000
    seed: int = 1
    sites: tuple[str, ...] = ("resid",)
    dtype: str = "float16"
    random_init: bool = False
    batch_size: int = 256
    device: str = "cpu"
    block: int | None = None  # samples per chunk; default sizes chunks near TARGET_CHUNK_BYTES
    model_dtype: str | None = None  # compute dtype of the model (hf: float32, bfloat16, float16)
    text: str | None = None  # a .txt/.jsonl file of prompts instead of a task
    max_len: int | None = None  # truncate prompts to this many tokens
    checkpoints: str | None = None  # a directory of toy checkpoints or a glob: cache through each of them
    checkpoint_paths: tuple[str, ...] = ()  # what ``checkpoints`` resolved to (set by run_cache)
    logits: str = "keep"  # the model output: keep, skip or topk:K
    inflight: int = 2  # blocks (shards) computed ahead of the writes: memory is about inflight + 1 of them
    shard: int | str | None = None  # samples per shard (zarr sharding codec), "auto", or None: a file per chunk
    # fsspec options of an object-store --out (endpoint, credentials): never stored, never compared
    storage_options: dict | None = field(default=None, repr=False, compare=False)

    def identity(self) -> dict:
        """The fields that must match for a resume. Not batch size, device, block, shard or inflight
        (a resumed store keeps the block and shard sizes it was created with), nor random_init: the random-init
        group can be added to a finished store later. Checkpoints (the resolved list, not
        the glob that found them) and a non-default ``logits`` are added only when used, so
        plain stores record what they always did."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))  # as stored: tuples become lists
        out = {k: d[k] for k in ("model", "task", "task_params", "n_samples", "seed", "sites", "dtype", "model_dtype")}
        if self.checkpoint_paths:
            out["checkpoints"] = d["checkpoint_paths"]
        if self.logits != "keep":
            out["logits"] = self.logits
        return out

    @property
    def copies(self) -> int:
        """How many times the samples are cached: once per checkpoint, or model + random init."""
        return len(self.checkpoint_paths) or (2 if self.random_init else 1)


IDENTITY_DEFAULTS = {"checkpoints": None, "logits": "keep"}  # identity keys a plain request leaves out
LOGITS_MODES = ("keep", "skip", "topk:K")

OUTPUT_DESCRIPTIONS = {
    schema.OUTPUT_VAR: "model output at each position",
    schema.TOPK_VALUES_VAR: "the model's K largest outputs at each position, largest first",
    schema.TOPK_INDICES_VAR: "the output indices (e.g. token ids) of model_out_topk_values",
}


def describe_difference(old: dict, new: dict) -> str:
    """``"key: store has A, asked for B; ..."`` for the identity keys that differ ("" if none)."""
    from probekit.cache.checkpoints import short_list

    keys = list(new) + [k for k in old if k not in new and k in IDENTITY_DEFAULTS]
    diffs = []
    for k in keys:
        was, asked = old.get(k, IDENTITY_DEFAULTS.get(k)), new.get(k, IDENTITY_DEFAULTS.get(k))
        if was != asked:
            diffs.append(f"{k}: store has {short_list(was)}, asked for {short_list(asked)}")
    return "; ".join(diffs)


def parse_logits(spec: str, d_out: int | None = None) -> int | None:
    """``keep`` -> None (store ``model_out``), ``skip`` -> 0 (store nothing), ``topk:K`` -> K."""
    if spec == "keep":
        return None
    if spec == "skip":
        return 0
    kind, _, k = spec.partition(":")
    if kind != "topk" or not k.isdigit() or int(k) < 1:
        raise UsageError(f"--logits {spec!r}: choose from {', '.join(LOGITS_MODES)} (K a positive integer)")
    if d_out is not None and int(k) > d_out:
        raise UsageError(f"--logits {spec}: the model has only {d_out} outputs per position")
    return int(k)


def output_layout(req: CacheRequest, d_out: int, T: int) -> list[tuple[str, tuple, tuple, str]]:
    """``(name, per-sample shape, dims after sample, dtype)`` of each model-output variable stored."""
    k = parse_logits(req.logits, d_out)
    if k is None:
        return [(schema.OUTPUT_VAR, (T, d_out), (schema.POS, schema.OUTPUT_FEATURE), "float32")]
    if k == 0:
        return []
    index = "int32" if d_out < 2**31 else "int64"
    return [(schema.TOPK_VALUES_VAR, (T, k), (schema.POS, schema.TOPK), "float32"),
            (schema.TOPK_INDICES_VAR, (T, k), (schema.POS, schema.TOPK), index)]
