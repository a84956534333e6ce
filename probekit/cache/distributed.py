"""Caching on a dask.distributed cluster: the client creates (or resumes) the store, as in one
process; each write unit (a sample block, or a shard) becomes one task. A worker loads the model
once (:func:`_worker_adapter` keeps the last one it loaded), reads the unit's inputs from the
store, computes the unit exactly as :class:`~probekit.cache.writer.BlockWriter` does in one
process (same batches, same casts), writes its chunks straight into the shared store (a shared
filesystem path or an object store) and only then marks its blocks done.

A worker that dies mid-unit has marked nothing of it; dask reruns the task on another worker,
which writes the same bytes (zarr writes each object whole, to a temporary name renamed into
place), so the finished store is the one a single process writes. A client killed mid-run leaves
the blocks its workers finished; rerunning the command resumes as in one process.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from probekit.cache.request import CacheRequest
from probekit.cache.writer import BlockWriter, write_units
from probekit.store import manifest, schema
from probekit.store.location import Location
from probekit.store.zarr_store import Store


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """How a worker loads the model of a unit: a model spec, and whether the random-init copy."""

    spec: str
    random_init: bool = False


@dataclasses.dataclass(frozen=True)
class Unit:
    """One task: samples ``s0:s1`` (blocks ``blocks``) of ``group`` (of checkpoint ``ci``)."""

    store: tuple[str, str]  # Location.token(): picklable, options included
    req: CacheRequest
    model: ModelRef
    input_var: str
    group: str | None
    ci: int | None
    s0: int
    s1: int
    blocks: tuple[int, ...]


def cache_unit(unit: Unit) -> dict:
    """Run on a worker: compute and write one unit, then mark its blocks done. Returns what it
    wrote (``samples``, ``tokens``, ``bytes``) for the client's rates."""
    location = Location.from_token(unit.store)
    store = Store(location)
    req = dataclasses.replace(unit.req, out=str(location), storage_options=location.options)
    ds = Store.open(store).dataset()
    inputs = np.asarray(ds[unit.input_var][unit.s0:unit.s1].values)
    valid = np.asarray(ds["valid"][unit.s0:unit.s1].values) if "valid" in ds else None
    adapter = _worker_adapter(unit.model.spec, unit.model.random_init, req.device, req.model_dtype, inputs[:1])
    written = {"samples": 0, "tokens": 0, "bytes": 0}
    fill = BlockWriter(store, req, inputs, valid, None, written, offset=unit.s0)
    fill.write_unit(adapter, unit.group, unit.ci, unit.blocks, unit.s0, unit.s1)
    return written


_LOADED: dict = {}  # this worker process's model: {(spec, random_init, device, dtype): adapter}, one at most
_LOAD_LOCK = threading.Lock()


def _worker_adapter(spec: str, random_init: bool, device: str, dtype: str | None, first: np.ndarray):
    """The adapter of ``spec`` in this worker process, loaded once: one model per worker (per GPU),
    replaced when a unit of another model (another checkpoint, the random init) arrives."""
    from probekit.models.adapters import load_adapter
    from probekit.models.capabilities import has
    from probekit.plugin.host import PluginHost

    key = (spec, random_init, device, dtype)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED.clear()  # free the previous model before loading the next
            adapter = load_adapter(PluginHost.default(), spec, random_init=random_init, device=device, dtype=dtype)
            if has(adapter, "prepare"):  # adapters of plain modules learn their sizes from one sample
                adapter.prepare(first)
            _LOADED[key] = adapter
        return _LOADED[key]


class ClusterWriter:
    """:class:`~probekit.cache.writer.BlockWriter`'s interface on a cluster: each call submits
    the units of a group (or of one checkpoint) still to write; :meth:`finish` waits for them all,
    counting progress and the bytes written as units complete (in any order)."""

    def __init__(self, executor, store: Store, req: CacheRequest, input_var: str, on_progress, written: dict):
        self.executor, self.store, self.req, self.input_var = executor, store, req, input_var
        self.on_progress, self.written = on_progress, written
        self.units: list[Unit] = []

    def __call__(self, adapter, group: str | None, unit: tuple[int, int, str] | None = None,
                 model: ModelRef | None = None) -> None:
        attrs = self.store.attrs(group)
        block, step = attrs[schema.BLOCK_ATTR], attrs.get(schema.SHARD_ATTR) or attrs[schema.BLOCK_ATTR]
        ci = unit[0] if unit else None
        model = model or ModelRef(self.req.model, random_init=bool(group))
        token = self.store.location.token()
        node = self.store.group(group, mode="a")
        manifest.ensure(node, dict(node.attrs))  # before the workers mark blocks in it, concurrently
        todo = write_units(self.req.n_samples, self.store.blocks_done(group), ci, block, step)
        self.units += [Unit(token, self.req, model, self.input_var, group, ci, s0, s1, tuple(blocks))
                       for s0, s1, blocks in todo]

    def finish(self) -> None:
        """Run every submitted unit on the cluster; progress as they complete."""
        units, self.units = self.units, []
        total = self.req.n_samples * self.req.copies  # every group or checkpoint, finished before or not
        done = total - sum(u.s1 - u.s0 for u in units)
        if self.on_progress:
            self.on_progress(self._phase(units), done, total)
        for (unit,), wrote in self.executor.as_completed(cache_unit, [(u,) for u in units]):
            for key, value in wrote.items():
                self.written[key] += value
            done += unit.s1 - unit.s0
            if self.on_progress:
                self.on_progress(self._phase([unit]), done, total)

    def _phase(self, units: list[Unit]) -> str:
        return "cluster · " + (f"step {units[0].ci}" if units and units[0].ci is not None
                               else "random-init" if units and units[0].group else "model")
