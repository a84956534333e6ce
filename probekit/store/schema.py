"""Names of the store's dimensions, variables and attributes, and a validator.

The written specification is ``docs/store-spec.md``; this module is its executable form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probekit.errors import StoreError

if TYPE_CHECKING:
    import xarray as xr

FORMAT_VERSION = 1

# Dimensions
SAMPLE = "sample"
POS = "pos"
LAYER = "layer"
FEATURE = "feature"
HEAD = "head"
CHECKPOINT = "checkpoint"

BLOCK = "block"  # transformer block l (1-based), whose output enters resid layer l
QUERY, KEY = "query", "key"

# Activation variables, chunked (sample block, 1, everything else):
ACTIVATION_DIMS = (SAMPLE, LAYER, POS, FEATURE)  # resid: layer 0 = embeddings, l = after block l
BLOCK_DIMS = (SAMPLE, BLOCK, POS, FEATURE)  # attn_out, mlp_out: what block l adds to the stream
PATTERN_DIMS = (SAMPLE, BLOCK, HEAD, QUERY, KEY)  # attn_pattern
SITE_DIMS = (ACTIVATION_DIMS, BLOCK_DIMS, PATTERN_DIMS)
# A store cached through several checkpoints of a training run puts ``checkpoint`` first on
# every activation and output variable: (checkpoint, sample, layer, pos, feature), chunked
# (1, sample block, 1, ...): still one layer of one sample block, now of one checkpoint.

# Model output variable (what the model predicts at each position)
OUTPUT_VAR = "model_out"
OUTPUT_FEATURE = "out_feature"
# ``--logits topk:K`` stores these two instead of OUTPUT_VAR (``--logits skip``: neither)
TOPK_VALUES_VAR = "model_out_topk_values"
TOPK_INDICES_VAR = "model_out_topk_indices"
TOPK = "topk"

# Checkpoint stores: coordinates along ``checkpoint`` (whose own values are training steps)
CHECKPOINT_PATH = "checkpoint_path"
CHECKPOINT_HASH = "checkpoint_hash"
N_CHECKPOINTS_ATTR = "n_checkpoints"

# Groups inside a store
RANDOM_INIT_GROUP = "random_init"
PROBES_GROUP = "probes"

# Attributes every store root carries
REQUIRED_ATTRS = (
    "probekit_format",
    "probekit_version",
    "created",
    "task",
    "task_params",
    "seed",
    "n_samples",
    "model_spec",
    "model_hash",
    "sites",
    "dtype",
    "device",
    "torch_version",
)
MANIFEST_ATTR = "blocks_done"  # stores before the marker manifest: finished sample blocks, per group
SHARD_ATTR = "sample_shard"  # samples per shard of a sharded store (absent: one file per chunk)
BLOCK_ATTR = "sample_block"  # samples per block (chunk size along `sample`)
STORE_DTYPES = ("float16", "float32")  # numpy (hence zarr here) has no bfloat16


def site_dims(dims) -> tuple[str, ...]:
    """A variable's dims without a leading ``checkpoint`` (the layout of one checkpoint)."""
    dims = tuple(dims)
    return dims[1:] if dims[:1] == (CHECKPOINT,) else dims


def activation_sites(ds: "xr.Dataset") -> list[str]:
    """Variables of ``ds`` that hold per-layer activations a probe can read (one vector per position)."""
    return [name for name, v in ds.data_vars.items() if site_dims(v.dims) in (ACTIVATION_DIMS, BLOCK_DIMS)]


def layer_offset(dims) -> int:
    """Probe-results layer of a site's first entry: 0 for resid (embeddings), 1 for per-block sites."""
    return 1 if site_dims(dims)[1] == BLOCK else 0


def validate_store(ds: "xr.Dataset") -> list[str]:
    """Problems that make ``ds`` (a store's root dataset) not a valid probekit store."""
    problems = [f"missing attribute {a!r}" for a in REQUIRED_ATTRS if a not in ds.attrs]
    if ds.attrs.get("probekit_format", FORMAT_VERSION) > FORMAT_VERSION:
        problems.append(
            f"store format {ds.attrs['probekit_format']} is newer than this probekit understands ({FORMAT_VERSION})"
        )
    for site in ds.attrs.get("sites", []):
        if site not in ds:
            problems.append(f"site {site!r} is listed in attrs but has no variable")
        elif site_dims(ds[site].dims) not in SITE_DIMS:
            problems.append(f"site {site!r} has dims {ds[site].dims}, expected one of {SITE_DIMS}")
        elif (CHECKPOINT in ds.dims) != (ds[site].dims[0] == CHECKPOINT):
            problems.append(f"site {site!r} has dims {ds[site].dims}: in a store with a {CHECKPOINT!r} "
                            "dimension every site starts with it, and only then")
    if SAMPLE not in ds.dims:
        problems.append(f"no {SAMPLE!r} dimension")
    elif ds.attrs.get("n_samples") not in (None, ds.sizes[SAMPLE]):
        problems.append(f"n_samples attr {ds.attrs['n_samples']} != size of sample dim {ds.sizes[SAMPLE]}")
    if CHECKPOINT in ds.dims:
        problems += _checkpoint_problems(ds)
    return problems


def _checkpoint_problems(ds: "xr.Dataset") -> list[str]:
    """A checkpoint store: integer, distinct, increasing training steps, each with a path and weights hash."""
    import numpy as np

    problems = []
    n = ds.sizes[CHECKPOINT]
    if CHECKPOINT not in ds.coords or ds[CHECKPOINT].dtype.kind not in "iu":
        problems.append(f"{CHECKPOINT!r} needs an integer coordinate (training steps)")
    elif not np.all(np.diff(ds[CHECKPOINT].values) > 0):
        problems.append(f"{CHECKPOINT!r} steps are not strictly increasing")
    for name in (CHECKPOINT_PATH, CHECKPOINT_HASH):
        if name not in ds.variables or ds[name].dims != (CHECKPOINT,):
            problems.append(f"no {name!r} along {CHECKPOINT!r}")
    if ds.attrs.get(N_CHECKPOINTS_ATTR) != n:
        problems.append(f"{N_CHECKPOINTS_ATTR} attr {ds.attrs.get(N_CHECKPOINTS_ATTR)} != size of {CHECKPOINT} dim {n}")
    return problems


def assert_valid_store(ds: "xr.Dataset", where: str = "store") -> None:
    problems = validate_store(ds)
    if problems:
        raise StoreError(f"{where} is not a valid probekit store: " + "; ".join(problems))
