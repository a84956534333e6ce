"""The block loop: compute each missing sample block, cast it for the store, write it as whole
chunks and only then mark it done in the manifest (so a killed run resumes bit-identically)."""

from __future__ import annotations

import numpy as np

from probekit.cache.request import CacheRequest, output_layout, parse_logits
from probekit.errors import DataError
from probekit.store import schema
from probekit.store.zarr_store import Store


def to_store_dtype(site: str, acts: np.ndarray, dtype: str) -> np.ndarray:
    """Cast activations for storage, refusing NaN/inf and float16 overflow with a clear message.

    One finiteness scan of the *cast* array covers both (overflow becomes inf in float16);
    the slower diagnosis runs only when something is wrong.
    """
    import torch

    # torch casts and scans with SIMD on all its threads: ~2x numpy's astype + isfinite
    cast = torch.from_numpy(np.ascontiguousarray(acts)).to(getattr(torch, dtype))
    if bool(torch.isfinite(cast).all()):
        return cast.numpy()
    with np.errstate(over="ignore"):
        out = acts.astype(dtype)
    if not np.isfinite(acts).all():
        raise DataError(f"site {site!r} has NaN or inf activations; the model itself produced them")
    layer = int(np.argwhere(~np.isfinite(out))[0][1])
    limit = float(np.finfo(np.float16).max)
    raise DataError(
        f"site {site!r} overflows float16 at layer {layer} (max |value| {np.abs(acts).max():.3g} > {limit:.0f}); "
        f"rerun with --dtype float32"
    )


def model_outputs(req: CacheRequest, out: np.ndarray) -> dict[str, np.ndarray]:
    """The model output ``[batch, pos, d_out]`` as the variables ``req.logits`` asks for
    (top-k: largest first; among equal values, the order ``argpartition`` leaves them in)."""
    k = parse_logits(req.logits)
    if k is None:
        return {schema.OUTPUT_VAR: out}
    if k == 0:
        return {}
    idx = np.argpartition(-out, k - 1, axis=-1)[..., :k] if k < out.shape[-1] else np.broadcast_to(
        np.arange(out.shape[-1]), out.shape).copy()
    vals = np.take_along_axis(out, idx, -1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    idx, vals = np.take_along_axis(idx, order, -1), np.take_along_axis(vals, order, -1)
    index_dtype = "int32" if out.shape[-1] < 2**31 else "int64"
    return {schema.TOPK_VALUES_VAR: vals.astype(np.float32), schema.TOPK_INDICES_VAR: idx.astype(index_dtype)}


class BlockWriter:
    """Computes each missing block of a group (or of one checkpoint) and writes it. A pool of
    ``req.inflight`` writer threads writes (each write spreads its chunks over zarr's concurrent
    async writes) and marks finished blocks done, while the next block is computed; at most
    ``inflight`` blocks wait or are being written, so memory stays bounded at about
    ``inflight + 1`` blocks. In a sharded store the unit of work is one shard (its blocks are
    written together, so a shard object is written once, whole)."""

    def __init__(self, store: Store, req: CacheRequest, inputs: np.ndarray, valid: np.ndarray | None,
                 on_progress, written: dict, offset: int = 0):
        """``inputs`` (and ``valid``) hold samples ``offset:offset + len(inputs)`` of the store."""
        import threading

        self.store, self.req, self.inputs, self.valid, self.offset = store, req, inputs, valid, offset
        self.on_progress, self.written = on_progress, written
        self.lock = threading.Lock()
        self.peak_inflight = 0  # the most blocks computed but not yet written (checked by the tests)

    def __call__(self, adapter, group: str | None, unit: tuple[int, int, str] | None = None, model=None) -> None:
        """``unit = (checkpoint index, number of checkpoints, phase)`` writes one checkpoint's slice.
        (``model``, how a worker would load ``adapter``, is for :class:`~probekit.cache.distributed.ClusterWriter`.)"""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        store, req = self.store, self.req
        attrs = store.attrs(group)
        block, step = attrs[schema.BLOCK_ATTR], attrs.get(schema.SHARD_ATTR) or attrs[schema.BLOCK_ATTR]
        ci, n_units, phase = unit or (None, 1, "random-init" if group else "model")
        arrays = store.writable(self._names(adapter), group)
        pending: deque = deque()
        def retire(wait: bool) -> None:  # in order: progress counts up; surfaces write errors
            while pending and (wait or pending[0].done()):
                s1 = pending.popleft().result()
                if self.on_progress:
                    self.on_progress(phase, (ci or 0) * req.n_samples + s1, req.n_samples * n_units)

        with ThreadPoolExecutor(max_workers=max(1, req.inflight)) as pool:
            for s0, s1, blocks in self._todo(store.blocks_done(group), ci, block, step):
                data = self._compute(adapter, s0, s1)
                retire(False)
                while len(pending) >= max(1, req.inflight):  # bounds the blocks in flight
                    pending[0].result()
                    retire(False)
                pending.append(pool.submit(self._write, arrays, group, ci, blocks, s0, s1, data))
                self.peak_inflight = max(self.peak_inflight, len(pending))
            while pending:
                retire(True)

    def write_unit(self, adapter, group: str | None, ci, blocks, s0: int, s1: int) -> int:
        """Compute samples ``s0:s1`` (blocks ``blocks``) and write them, then mark the blocks done:
        one unit, in this thread (what a cluster worker runs)."""
        data = self._compute(adapter, s0, s1)
        return self._write(self.store.writable(self._names(adapter), group), group, ci, blocks, s0, s1, data)

    def _names(self, adapter) -> list[str]:
        """The variables a unit writes: the sites, and the model outputs ``req.logits`` keeps."""
        req = self.req
        return [*req.sites, *(name for name, *_ in output_layout(req, adapter.d_out, self.inputs.shape[1]))]

    def finish(self) -> None:
        """Every call above has written its blocks when it returns: nothing is left to wait for."""

    def _todo(self, done: set, ci, block: int, step: int):
        return write_units(self.req.n_samples, done, ci, block, step)

    def _compute(self, adapter, s0: int, s1: int) -> dict[str, np.ndarray]:
        """Samples ``s0:s1`` through the model in batches, cast and shaped as the store holds them:
        cast where the model runs when its adapter gives tensors (``tensors``), else on the host.
        A block that is not finite is redone on the host, whose error says what is wrong."""
        from probekit.models.capabilities import has

        data = self._compute_tensors(adapter, s0, s1) if has(adapter, "tensors") else None
        return data if data is not None else self._compute_numpy(adapter, s0, s1)

    def _batches(self, s0: int, s1: int):
        """``(i, j, run keywords)`` of each batch of samples ``s0:s1``."""
        off = self.offset
        for i in range(s0, s1, self.req.batch_size):
            j = min(s1, i + self.req.batch_size)
            yield i, j, {} if self.valid is None else {"valid": self.valid[i - off:j - off]}

    def _compute_tensors(self, adapter, s0: int, s1: int) -> dict[str, np.ndarray] | None:
        """:meth:`_compute` through :class:`~probekit.cache.staging.HostBlock` (None: not finite)."""
        from probekit.cache.staging import HostBlock

        req, host, out_key = self.req, HostBlock(s1 - s0), "\0outputs"
        want_out = parse_logits(req.logits) != 0
        for i, j, kw in self._batches(s0, s1):
            rows = self.inputs[i - self.offset:j - self.offset]
            acts, out = adapter.run(rows, list(req.sites), as_tensors=True, **kw)
            for site in req.sites:
                host.add(site, acts[site], i - s0, req.dtype)
            if want_out:
                host.add(out_key, out.float(), i - s0, "float32", check=False)
            del acts, out
        blocks = host.result()
        if blocks is None:
            return None
        out = blocks.pop(out_key, None)
        blocks.update(model_outputs(req, out) if out is not None else {})
        return blocks

    def _compute_numpy(self, adapter, s0: int, s1: int) -> dict[str, np.ndarray]:
        req = self.req
        off = self.offset
        parts = [adapter.run(self.inputs[i - off:j - off], list(req.sites), **kw)
                 for i, j, kw in self._batches(s0, s1)]
        blocks = {}
        for site in req.sites:
            blocks[site] = to_store_dtype(site, np.concatenate([p[0][site] for p in parts]), req.dtype)
        blocks.update(model_outputs(req, np.concatenate([p[1] for p in parts])))
        return blocks

    def _write(self, arrays, group, ci, blocks, s0: int, s1: int, data: dict) -> int:
        for name, values in data.items():
            if ci is None:
                arrays[name][s0:s1] = values
            else:
                arrays[name][ci, s0:s1] = values
        for b in blocks:  # only after every chunk is written
            self.store.mark_block_done(b if ci is None else (ci, b), group)
        valid, T = self.valid, self.inputs.shape[1]
        with self.lock:
            self.written["samples"] += s1 - s0
            self.written["tokens"] += int(valid[s0 - self.offset:s1 - self.offset].sum()) if valid is not None \
                else (s1 - s0) * T
            self.written["bytes"] += sum(int(d.nbytes) for d in data.values())
        return s1


def write_units(n_samples: int, done: set, ci, block: int, step: int):
    """``(s0, s1, block indices)`` of each write unit (a block, or a shard of ``step`` samples) of
    ``n_samples`` with a block not in ``done`` (of checkpoint ``ci``, when not None)."""
    for s0 in range(0, n_samples, step):
        s1 = min(n_samples, s0 + step)
        blocks = range(s0 // block, -(-s1 // block))
        if any((b if ci is None else (ci, b)) not in done for b in blocks):
            yield s0, s1, blocks
