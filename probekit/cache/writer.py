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
    """Computes each missing block of a group (or of one checkpoint) and writes it. One writer
    thread writes block b (then marks it done) while block b+1 is computed; at most one block
    waits, so memory stays bounded."""

    def __init__(self, store: Store, req: CacheRequest, inputs: np.ndarray, valid: np.ndarray | None,
                 on_progress, written: dict):
        self.store, self.req, self.inputs, self.valid = store, req, inputs, valid
        self.on_progress, self.written = on_progress, written

    def __call__(self, adapter, group: str | None, unit: tuple[int, int, str] | None = None) -> None:
        """``unit = (checkpoint index, number of checkpoints, phase)`` writes one checkpoint's slice."""
        from concurrent.futures import ThreadPoolExecutor

        store, req, n = self.store, self.req, self.req.n_samples
        block = store.attrs(group)[schema.BLOCK_ATTR]
        ci, n_units, phase = unit or (None, 1, "random-init" if group else "model")
        done = store.blocks_done(group)
        names = [*req.sites, *(name for name, *_ in output_layout(req, adapter.d_out, self.inputs.shape[1]))]
        arrays = store.writable(names, group)
        pending = None
        with ThreadPoolExecutor(max_workers=1) as writer:
            for b in range(-(-n // block)):
                if (b if ci is None else (ci, b)) in done:
                    continue
                s0, s1 = b * block, min(n, (b + 1) * block)
                blocks = self._compute(adapter, s0, s1)
                if pending is not None:
                    pending.result()  # surfaces write errors; keeps one block in flight
                pending = writer.submit(self._write, arrays, group, (ci, n_units, phase), b, s0, s1, blocks)
            if pending is not None:
                pending.result()

    def _compute(self, adapter, s0: int, s1: int) -> dict[str, np.ndarray]:
        """Samples ``s0:s1`` through the model in batches, cast and shaped as the store holds them."""
        req, inputs, valid = self.req, self.inputs, self.valid
        parts = [adapter.run(inputs[i : min(s1, i + req.batch_size)], list(req.sites),
                             **({} if valid is None else {"valid": valid[i : min(s1, i + req.batch_size)]}))
                 for i in range(s0, s1, req.batch_size)]
        blocks = {}
        for site in req.sites:
            blocks[site] = to_store_dtype(site, np.concatenate([p[0][site] for p in parts]), req.dtype)
        blocks.update(model_outputs(req, np.concatenate([p[1] for p in parts])))
        return blocks

    def _write(self, arrays, group, unit, b: int, s0: int, s1: int, blocks: dict) -> None:
        ci, n_units, phase = unit
        for name, data in blocks.items():
            if ci is None:
                arrays[name][s0:s1] = data
            else:
                arrays[name][ci, s0:s1] = data
        self.store.mark_block_done(b if ci is None else (ci, b), group)  # only after every chunk is on disk
        valid, T, n = self.valid, self.inputs.shape[1], self.req.n_samples
        self.written["samples"] += s1 - s0
        self.written["tokens"] += int(valid[s0:s1].sum()) if valid is not None else (s1 - s0) * T
        self.written["bytes"] += sum(int(d.nbytes) for d in blocks.values())
        if self.on_progress:
            self.on_progress(phase, (ci or 0) * n + s1, n * n_units)
