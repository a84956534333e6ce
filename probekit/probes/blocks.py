"""The per-block jobs an executor runs: read one (sample block, layer) chunk of a store and
either accumulate fold statistics (pass 1) or score held-out predictions (pass 2). Jobs carry
a ``source`` tuple, not an open array, so they travel to dask workers; each process opens
an array once (cached) and a rewritten store is never read through a stale handle."""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from probekit.probes import scoring
from probekit.probes.ridge import FoldStats, sum_stats
from probekit.store.location import Location, mtime
from probekit.store.zarr_store import Store


class CheckpointView:
    """One checkpoint of a ``(checkpoint, sample, layer, ...)`` array, indexed like a plain
    ``(sample, layer, ...)`` one: the probing engine runs on it unchanged."""

    def __init__(self, arr, checkpoint: int):
        self.arr, self.checkpoint = arr, checkpoint
        self.shape, self.chunks, self.dtype = arr.shape[1:], arr.chunks[1:], arr.dtype

    def __getitem__(self, key):
        return self.arr[(self.checkpoint, *(key if isinstance(key, tuple) else (key,)))]


def view(arr, checkpoint: int | None):
    """``arr`` itself, or one checkpoint of it."""
    return arr if checkpoint is None else CheckpointView(arr, checkpoint)


@lru_cache(maxsize=64)
def _array(path: str, group: str | None, site: str, version: int, checkpoint: int | None = None):
    """Open one activation array (cached per process; ``version`` is its metadata's mtime,
    so a rewritten store is never read through a stale handle), or one checkpoint of it."""
    where = Location.from_token(path) if isinstance(path, tuple) else path  # a remote store: (URL, options)
    return view(Store(where).array(site, group), checkpoint)


def source(store: Store, group: str | None, site: str, checkpoint: int | None = None) -> tuple:
    """What a job needs to open one site's array (of one checkpoint) in any process."""
    rel = "/".join(filter(None, [group, site, "zarr.json"]))
    if store.remote:  # the URL and its storage options travel as a hashable token
        info = store.location.fs.info(store.location.key(rel))
        return (store.location.token(), group, site, int(mtime(info) * 1e9), checkpoint)
    return (str(store.path), group, site, (store.path / rel).stat().st_mtime_ns, checkpoint)


class ChunkCache:
    """Decoded chunks kept in memory, least recently used first out, up to ``budget`` bytes.

    A probe reads each layer in several passes (the shift, the fold statistics, the held-out
    scores) and once per group of targets; with the layer's chunks kept here, a layer that fits
    is read from the store once. ``budget = 0`` streams every read from the store (memory then
    stays at one block whatever the store's size)."""

    def __init__(self, budget: int):
        self.budget, self.bytes, self._items = int(budget), 0, OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key, value: np.ndarray) -> None:
        if value.nbytes > self.budget:
            return
        with self._lock:
            value.flags.writeable = False  # shared by every reader: never modified in place
            self._items[key] = value
            self.bytes += value.nbytes
            while self.bytes > self.budget:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0

    def resize(self, budget: int) -> None:
        with self._lock:
            self.budget = int(budget)
            while self.bytes > self.budget and self._items:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes


READ_CACHE = ChunkCache(256 * 2**20)  # per process; ProbeSettings.read_cache_mb sets it for a probe run


def read(src: tuple, layer: int, s0: int, s1: int) -> np.ndarray:
    """One chunk: activations ``[s1 - s0, pos, feature]`` of one layer, as float32 (read-only:
    it may be shared through :data:`READ_CACHE`). A chunk zarr cannot decode (crc32c mismatch,
    truncated) is a :class:`StoreError` naming it."""
    key = (src, layer, s0, s1)
    hit = READ_CACHE.get(key)
    if hit is not None:
        return hit
    arr = _array(*src)
    try:
        out = np.asarray(arr[s0:s1, layer], dtype=np.float32)
    except (ValueError, RuntimeError, OSError, TypeError) as exc:
        from probekit.store.integrity import read_error

        raise read_error(arr, layer, s0, s1, exc) from exc
    READ_CACHE.put(key, out)
    return out


def accumulate_block(src, layer, s0, s1, mask, y, fold, n_folds, shift, per_pos, device="cpu") -> dict:
    """Pass 1 on one block: fold statistics (pooled, and per position if asked) as numpy."""
    acts = read(src, layer, s0, s1)
    F, k = acts.shape[-1], y.shape[-1]
    pooled = FoldStats(n_folds, F, k, device=device).set_shift(*shift)
    order = np.argsort(fold, kind="stable")  # samples by fold: the probed rows arrive sorted, one copy
    i, pos = np.nonzero(mask[order])
    rows = order[i]
    pooled.add(acts[rows, pos], y[rows, pos], fold[rows])
    out = {"pooled": pooled.to_numpy()}
    if per_pos:
        out["per_pos"] = []
        for t in range(mask.shape[1]):
            st = FoldStats(n_folds, F, k, device=device).set_shift(*shift)
            m = mask[:, t]
            st.add(acts[m, t], y[m, t], fold[m])
            out["per_pos"].append(st.to_numpy())
    return out


def add_block_stats(a: dict, b: dict) -> dict:
    """The reduction of pass 1: ``a + b`` (in place in ``a``)."""
    a["pooled"] = sum_stats(a["pooled"], b["pooled"])
    if "per_pos" in a:
        a["per_pos"] = [sum_stats(x, y) for x, y in zip(a["per_pos"], b["per_pos"])]
    return a


def score_block(src, layer, s0, s1, mask, y, fold, coef, intercept, x_shift, cols, fold_mean) -> list:
    """Pass 2 on one block: held-out sums per target (``probekit.probes.scoring.HeldOut``)."""
    return scoring.block_held_out(read(src, layer, s0, s1), mask, y, fold, coef, intercept, x_shift, cols,
                                  fold_mean)
