"""Run a model over task inputs and write its activations to a store, block by block.

Arrays are pre-sized; each sample block is written as whole chunks, then recorded
in the store's manifest. Rerunning the same request on an interrupted store resumes
at the first missing block and gives the same bytes as an uninterrupted run; a
different request against an existing store is refused, saying what differs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import probekit
from probekit import schema
from probekit.errors import DataError, StoreError, UnknownNameError, UsageError
from probekit.store import Store

TARGET_CHUNK_BYTES = 4 * 2**20  # one (block, layer) chunk; DESIGN asks for 1-64 MB


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

    def identity(self) -> dict:
        """The fields that must match for a resume. Not batch size, device or block (a resumed
        store keeps the block size it was created with), nor random_init: the random-init
        group can be added to a finished store later."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))  # as stored: tuples become lists
        return {k: d[k] for k in ("model", "task", "task_params", "n_samples", "seed", "sites", "dtype", "model_dtype")}


def sample_block(n_samples: int, bytes_per_sample: int) -> int:
    """Samples per chunk so one layer of one block is about TARGET_CHUNK_BYTES."""
    return int(max(1, min(n_samples, TARGET_CHUNK_BYTES // max(1, bytes_per_sample))))


def _to_store_dtype(site: str, acts: np.ndarray, dtype: str) -> np.ndarray:
    """Cast activations for storage, refusing NaN/inf and float16 overflow with a clear message.

    One finiteness scan of the *cast* array covers both (overflow becomes inf in float16);
    the slower diagnosis runs only when something is wrong.
    """
    with np.errstate(over="ignore"):  # overflow is detected (and explained) below
        out = acts.astype(dtype)
    if np.isfinite(out).all():
        return out
    if not np.isfinite(acts).all():
        raise DataError(f"site {site!r} has NaN or inf activations; the model itself produced them")
    layer = int(np.argwhere(~np.isfinite(out))[0][1])
    limit = float(np.finfo(np.float16).max)
    raise DataError(
        f"site {site!r} overflows float16 at layer {layer} (max |value| {np.abs(acts).max():.3g} > {limit:.0f}); "
        f"rerun with --dtype float32"
    )


def _check_layouts(adapter, sites, seq_len: int) -> None:
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


def _describe_difference(old: dict, new: dict) -> str:
    diffs = [f"{k}: store has {old.get(k)!r}, asked for {new[k]!r}" for k in new if old.get(k) != new[k]]
    return "; ".join(diffs)


def estimate_bytes(req: CacheRequest, adapter, seq_len: int) -> int:
    """Uncompressed bytes the activations and outputs will take (an upper bound on disk use)."""
    from probekit.models.adapters import adapter_site_layout

    per_sample = sum(int(np.prod(adapter_site_layout(adapter, s, seq_len)[1])) for s in req.sites)
    per_sample *= np.dtype(req.dtype).itemsize
    per_sample += seq_len * adapter.d_out * 4
    return int(per_sample * req.n_samples * (2 if req.random_init else 1))


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


def run_cache(host, req: CacheRequest, *, overwrite: bool = False,
              on_progress: Callable[[str, int, int], None] | None = None,
              on_start: Callable[[dict], None] | None = None) -> Store:
    """Cache ``req.sites`` of ``req.model`` on ``req.n_samples`` task samples into ``req.out``.

    ``on_start(plan)`` is called once the work is known (``plan``: estimated bytes, free
    bytes, bytes per sample, blocks to do); ``on_progress(phase, samples_done,
    samples_total)`` after every block.
    """
    from probekit.models.adapters import load_adapter

    if req.dtype not in schema.STORE_DTYPES:
        raise UsageError(f"unknown dtype {req.dtype!r}; choose from: {', '.join(schema.STORE_DTYPES)}")
    if req.n_samples < 1:
        raise UsageError("--n-samples must be >= 1")
    adapter = load_adapter(host, req.model, device=req.device, dtype=req.model_dtype)
    if req.text:
        from probekit.tasks.text import TextTask

        task = TextTask.from_file(req.text, req.max_len, adapter)
        req = dataclasses.replace(req, task="text", task_params=dataclasses.asdict(task.params),
                                  n_samples=min(req.n_samples, len(task.prompts)), seed=0)
    else:
        ckpt = getattr(adapter, "ckpt", None)
        task_name = req.task or (ckpt.task if ckpt else None)
        if task_name is None:
            raise UsageError("this model records no task: pass --task (or --text FILE for prompts)")
        params = dict(ckpt.task_params) if ckpt and ckpt.task == task_name else {}
        params.update(req.task_params)
        task = host.tasks.get(task_name)(**params)
        req = dataclasses.replace(req, task=task_name, task_params=dataclasses.asdict(task.params))
    if hasattr(adapter, "prepare"):  # adapters of plain modules learn their sizes from one sample
        adapter.prepare(np.asarray(task.generate(1, req.seed)[task.io.input_var].values))
    for site in req.sites:
        if site not in adapter.sites:
            raise UnknownNameError("site", site, adapter.sites)

    _check_layouts(adapter, req.sites, task.io.seq_len)
    store = Store(req.out)
    seq_len = task.io.seq_len
    needed = estimate_bytes(req, adapter, seq_len)
    if store.path.exists() and not store.exists() and not overwrite:
        raise StoreError(f"{req.out} exists and is not a probekit store; choose another --out")
    with store.lock():
        resuming = store.exists() and not overwrite
        free = check_disk(store.path, 0 if resuming else needed)
        if on_start:
            on_start({"estimated_bytes": needed, "free_bytes": free, "resuming": resuming,
                      "bytes_per_sample": needed // (req.n_samples * (2 if req.random_init else 1))})
        for leftover in store.path.rglob("*.partial") if store.path.exists() else []:
            leftover.unlink()  # a write interrupted by a kill; its block is not in the manifest
        if store.exists() and not overwrite:
            old = Store.open(req.out).attrs().get("request", {})
            diff = _describe_difference(old, req.identity())
            if diff:
                raise StoreError(f"{req.out} holds a different cache ({diff}); use --overwrite or another --out")
            if store.is_complete() and (not req.random_init or store.is_complete(schema.RANDOM_INIT_GROUP)):
                return store
        elif store.path.exists() and not overwrite:
            raise StoreError(f"{req.out} exists and is not a probekit store; choose another --out")
        else:
            _create(store, req, task, adapter, overwrite)
        base = Store.open(req.out).dataset()
        inputs = np.asarray(base[task.io.input_var].values)
        valid = np.asarray(base["valid"].values) if "valid" in base else None
        _fill(store, adapter, req, inputs, None, on_progress, valid)
        if req.random_init:
            rand = load_adapter(host, req.model, random_init=True, device=req.device, dtype=req.model_dtype)
            if hasattr(rand, "prepare"):
                rand.prepare(inputs[:1])
            if not store.has_group(schema.RANDOM_INIT_GROUP):
                _create_group(store, req, rand, schema.RANDOM_INIT_GROUP, inputs.shape[1])
            _fill(store, rand, req, inputs, schema.RANDOM_INIT_GROUP, on_progress, valid)
        store.consolidate()
    return store


def _create(store: Store, req: CacheRequest, task, adapter, overwrite: bool) -> None:
    ds = task.generate(req.n_samples, req.seed)
    n, T = ds.sizes[schema.SAMPLE], ds.sizes[schema.POS]
    if n != req.n_samples:
        raise DataError(f"task {task.name!r} generated {n} samples, {req.n_samples} were asked for")
    attrs = dict(ds.attrs)
    attrs.update(_group_attrs(req, adapter, T))
    attrs.update(
        probekit_format=schema.FORMAT_VERSION,
        probekit_version=probekit.__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        n_samples=req.n_samples,
        request=req.identity(),
    )
    from probekit.models.adapters import adapter_site_layout

    layouts = [adapter_site_layout(adapter, s, T) for s in req.sites]
    coords = {}
    for dims, shape in layouts:
        if dims[1] == schema.LAYER:
            coords[schema.LAYER] = np.arange(max(shape[0], len(coords.get(schema.LAYER, []))))
        else:
            coords[schema.BLOCK] = np.arange(1, shape[0] + 1)
    base = ds.assign_coords(coords)
    base.attrs = attrs
    Store.create(store.path, base, overwrite=overwrite)
    _create_arrays(store, req, adapter, T, None)


def _group_attrs(req: CacheRequest, adapter, T: int) -> dict:
    block = req.block or sample_block(req.n_samples, T * adapter.d_model * np.dtype(req.dtype).itemsize)
    # (sized for one (layer, pos, feature) slice; attention patterns get the same sample block)
    if block < 1:
        raise UsageError(f"block must be >= 1, got {block}")
    return adapter.provenance() | {
        "sites": list(req.sites),
        "dtype": req.dtype,
        schema.BLOCK_ATTR: block,
        schema.MANIFEST_ATTR: [],
    }


def _create_group(store: Store, req: CacheRequest, adapter, group: str, T: int) -> None:
    import zarr

    zarr.open_group(store.path, path=group, mode="a").attrs.update(
        _group_attrs(req, adapter, T) | {"n_samples": req.n_samples}
    )
    _create_arrays(store, req, adapter, T, group)


def _create_arrays(store: Store, req: CacheRequest, adapter, T: int, group: str | None) -> None:
    block = store.attrs(group)[schema.BLOCK_ATTR]
    from probekit.models.adapters import adapter_site_layout

    for site in req.sites:
        dims, shape = adapter_site_layout(adapter, site, T)
        store.create_activation(site, (req.n_samples, *shape), dims=dims, dtype=req.dtype, block=block,
                                group=group, attrs={"site": site})
    store.create_variable(schema.OUTPUT_VAR, (req.n_samples, T, adapter.d_out),
                          (schema.SAMPLE, schema.POS, schema.OUTPUT_FEATURE), dtype="float32",
                          chunks=(block, T, adapter.d_out), group=group,
                          attrs={"description": "model output at each position"})


def _fill(store: Store, adapter, req: CacheRequest, inputs: np.ndarray, group: str | None, on_progress,
          valid: np.ndarray | None = None) -> None:
    """Compute each missing block and write it. One writer thread writes block b (then marks it
    done) while block b+1 is computed; at most one block waits, so memory stays bounded."""
    from concurrent.futures import ThreadPoolExecutor

    block = store.attrs(group)[schema.BLOCK_ATTR]
    n = req.n_samples
    done = store.blocks_done(group)
    phase = "random-init" if group else "model"
    arrays = {name: store.group(group, mode="a")[name] for name in (*req.sites, schema.OUTPUT_VAR)}

    def write(b: int, s0: int, s1: int, blocks: dict) -> None:
        for name, data in blocks.items():
            arrays[name][s0:s1] = data
        store.mark_block_done(b, group)  # only after every chunk of the block is on disk
        if on_progress:
            on_progress(phase, s1, n)

    pending = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        for b in range(-(-n // block)):
            if b in done:
                continue
            s0, s1 = b * block, min(n, (b + 1) * block)
            parts = [adapter.run(inputs[i : min(s1, i + req.batch_size)], list(req.sites),
                                 **({} if valid is None else {"valid": valid[i : min(s1, i + req.batch_size)]}))
                     for i in range(s0, s1, req.batch_size)]
            blocks = {}
            for site in req.sites:
                blocks[site] = _to_store_dtype(site, np.concatenate([p[0][site] for p in parts]), req.dtype)
            blocks[schema.OUTPUT_VAR] = np.concatenate([p[1] for p in parts])
            if pending is not None:
                pending.result()  # surfaces write errors; keeps one block in flight
            pending = writer.submit(write, b, s0, s1, blocks)
        if pending is not None:
            pending.result()
