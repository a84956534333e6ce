"""How big a cache is before it runs: chunk (sample block) sizing, the layouts sites must share,
the bytes it will take and whether the disk has them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from probekit.cache.request import CacheRequest, output_layout
from probekit.errors import StoreError, UsageError
from probekit.store import schema

TARGET_CHUNK_BYTES = 4 * 2**20  # one (block, layer) chunk; DESIGN asks for 1-64 MB


def sample_block(n_samples: int, bytes_per_sample: int) -> int:
    """Samples per chunk so one layer of one block is about TARGET_CHUNK_BYTES."""
    return int(max(1, min(n_samples, TARGET_CHUNK_BYTES // max(1, bytes_per_sample))))


def request_block(req: CacheRequest, adapter, T: int) -> int:
    """The request's samples per block: ``req.block``, or sized for one (layer, pos, feature) slice
    (attention patterns get the same sample block)."""
    block = req.block or sample_block(req.n_samples, T * adapter.d_model * np.dtype(req.dtype).itemsize)
    if block < 1:
        raise UsageError(f"block must be >= 1, got {block}")
    return block


TARGET_SHARD_BYTES = 256 * 2**20  # one shard of one site (all its layers): thousands of objects per 100M tokens
AUTO_SHARD_BYTES = 8 * 2**30  # ``--shard auto`` shards a store whose estimate is at least this


def request_shard(req: CacheRequest, adapter, T: int, block: int) -> int | None:
    """Samples per shard (a multiple of ``block``), or None for one file per chunk. ``auto``
    shards stores of at least AUTO_SHARD_BYTES, into shards of about TARGET_SHARD_BYTES per site."""
    from probekit.models.adapters import adapter_site_layout

    if req.shard is None:
        return None
    if req.shard == "auto":
        if estimate_bytes(req, adapter, T) < AUTO_SHARD_BYTES:
            return None
        per_sample = max(int(np.prod(adapter_site_layout(adapter, s, T)[1])) for s in req.sites)
        samples = TARGET_SHARD_BYTES // max(1, per_sample * np.dtype(req.dtype).itemsize)
    elif isinstance(req.shard, int) or str(req.shard).isdigit():
        samples = int(req.shard)
    else:
        raise UsageError(f"--shard {req.shard!r}: give samples per shard (a positive integer) or auto")
    if samples < 1:
        raise UsageError(f"--shard must be >= 1 samples, got {samples}")
    blocks = -(-min(samples, req.n_samples) // block)  # whole blocks, at most the samples there are
    return max(1, blocks) * block


def check_layouts(adapter, sites, seq_len: int) -> None:
    """Sites sharing a dimension (``layer`` or ``block``) must agree on its length in one Dataset."""
    from probekit.models.adapters import adapter_site_layout

    sizes: dict[str, dict[str, int]] = {}
    for site in sites:
        dims, shape = adapter_site_layout(adapter, site, seq_len)
        sizes.setdefault(dims[1], {})[site] = shape[0]
    for dim, by_site in sizes.items():
        if len(set(by_site.values())) > 1:
            listed = ", ".join(f"{s} ({n})" for s, n in by_site.items())
            raise UsageError(f"sites {listed} have different numbers of {dim}s and cannot share one store; "
                             "cache them into separate stores")


def estimate_bytes(req: CacheRequest, adapter, seq_len: int) -> int:
    """Uncompressed bytes the activations and outputs will take (an upper bound on disk use)."""
    from probekit.models.adapters import adapter_site_layout

    per_sample = sum(int(np.prod(adapter_site_layout(adapter, s, seq_len)[1])) for s in req.sites)
    per_sample *= np.dtype(req.dtype).itemsize
    per_sample += sum(int(np.prod(shape)) * np.dtype(dt).itemsize
                      for _, shape, _, dt in output_layout(req, adapter.d_out, seq_len))
    return int(per_sample * req.n_samples * req.copies)


def check_disk(path: Path, needed: int) -> int:
    """Free bytes where ``path`` will be written; refuse to start when ``needed`` does not fit."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise StoreError(f"{path} needs about {needed / 2**30:.2f} GiB (uncompressed) but only "
                         f"{free / 2**30:.2f} GiB is free there; choose another --out or fewer samples/sites")
    return free


def make_plan(req: CacheRequest, adapter, seq_len: int, path: Path, resuming: bool) -> dict:
    """What ``on_start`` is told: estimated and free bytes, bytes per sample, whether resuming, and
    the ``written`` counters the block writer updates. Refuses a new store the disk cannot hold."""
    needed = estimate_bytes(req, adapter, seq_len)
    free = check_disk(path, 0 if resuming else needed) if path is not None else None  # None: an object store
    return {"estimated_bytes": needed, "free_bytes": free, "resuming": resuming,
            "bytes_per_sample": needed // (req.n_samples * req.copies),
            "written": {"samples": 0, "tokens": 0, "bytes": 0}}
