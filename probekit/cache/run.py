"""Run a model over task inputs and write its activations to a store, block by block.

Arrays are pre-sized; each sample block is written as whole chunks, then recorded
in the store's manifest. Rerunning the same request on an interrupted store resumes
at the first missing block and gives the same bytes as an uninterrupted run; a
different request against an existing store is refused, saying what differs.

The request and its identity live in :mod:`probekit.cache.request`, sizes and the disk check
in :mod:`probekit.cache.plan`, the block loop in :mod:`probekit.cache.writer`; this module
validates, creates or resumes the store and drives the writer (model, checkpoints, random init).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

import probekit
from probekit.cache import plan, writer
from probekit.cache.request import OUTPUT_DESCRIPTIONS, CacheRequest, describe_difference, output_layout, parse_logits
from probekit.errors import DataError, StoreError, UnknownNameError, UsageError
from probekit.store import schema
from probekit.store.ids import utc_stamp
from probekit.store.manifest import PART_SUFFIX
from probekit.store.zarr_store import Store

__all__ = ["CacheRequest", "run_cache"]


def run_cache(host, req: CacheRequest, *, overwrite: bool = False,
              on_progress: Callable[[str, int, int], None] | None = None,
              on_start: Callable[[dict], None] | None = None, executor=None) -> Store:
    """Cache ``req.sites`` of ``req.model`` on ``req.n_samples`` task samples into ``req.out``
    (with ``req.checkpoints``: through every checkpoint found there, into a ``checkpoint`` dim).

    The whole request is validated first (task parameters, model, sites, sizes, and one
    forward pass on one sample): nothing is written before. ``req.out`` must be absent, an
    empty folder or a probekit store (resumed; with ``overwrite``, replaced: the new store is
    built beside the old one and swapped in when complete, so a failure leaves the old one
    intact). A new store that fails before its first block is removed.

    ``on_start(plan)`` is called once the work is known (``plan``: estimated bytes, free
    bytes, bytes per sample, resuming); ``on_progress(phase, samples_done, samples_total)``
    after every block (with checkpoints, samples count once per checkpoint). Before each
    call ``plan["written"]`` is updated: the samples, tokens (valid positions) and bytes
    this run has written so far, for honest rates on a resumed run.

    With ``executor`` (a :class:`~probekit.executors.DaskExecutor`) the blocks are computed and
    written by the cluster's workers (:mod:`probekit.cache.distributed`); the store is the same.
    """
    from probekit import outputs

    outputs.check_output(req.out, outputs.STORE, replace=True, storage_options=req.storage_options)
    req, task, adapter, refs = _prepare(host, req)
    store = Store(req.out, req.storage_options)
    where = store.location if store.remote else store.path  # what outputs' rules take
    replace = overwrite and store.location.exists()
    with outputs.made_here(where, keep=lambda: _any_block_done(store)), store.lock():
        outputs.clear_leftovers(where)  # what killed runs left beside the store
        if replace:
            with outputs.replacing(where) as stage:
                _run(host, dataclasses.replace(req, out=str(stage)), task, adapter, refs, True, on_progress, on_start,
                     executor)
            return Store(store.path, req.storage_options)
        try:
            return _run(host, req, task, adapter, refs, False, on_progress, on_start, executor)
        except Exception as exc:
            if not _any_block_done(store):
                raise  # and made_here removes what it made
            done = len(store.blocks_done())
            kept = StoreError(f"{_one_line(exc)}; the {done} finished block{'s' * (done != 1)} of {store.path} "
                              "are kept: rerun the same command to resume")
            kept.exit_code = getattr(exc, "exit_code", 1)
            raise kept from exc


def _prepare(host, req: CacheRequest):
    """Validate and complete ``req``: ``(req, task, adapter, checkpoint refs)``. Everything that
    can fail before the first block fails here, including one forward pass on one sample."""
    from probekit.models.adapters import load_adapter

    if req.dtype not in schema.STORE_DTYPES:
        raise UsageError(f"unknown dtype {req.dtype!r}; choose from: {', '.join(schema.STORE_DTYPES)}")
    for name, value in (("--n-samples", req.n_samples), ("--batch-size", req.batch_size), ("--block", req.block),
                        ("--inflight", req.inflight)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    if req.max_len is not None and req.max_len < 1:
        raise UsageError(f"--max-len must be >= 1, got {req.max_len}")
    parse_logits(req.logits)
    if not req.model and not req.checkpoints:
        raise UsageError("pass --model (or --checkpoints with a training run's checkpoints)")
    refs = None
    if req.checkpoints:
        req, refs = _resolve_checkpoints(req)
    adapter = load_adapter(host, req.model, device=req.device, dtype=req.model_dtype)
    if req.text:
        from probekit.tasks.text import TextTask

        task = TextTask.from_file(req.text, req.max_len, adapter)
        req = dataclasses.replace(req, task="text", task_params=dataclasses.asdict(task.params),
                                  n_samples=min(req.n_samples, len(task.prompts)), seed=0)
    else:
        from probekit.tasks.resolve import resolve_task

        resolved = resolve_task(host, adapter, req.task, req.task_params,
                                missing="this model records no task: pass --task (or --text FILE for prompts)")
        task = resolved.build()
        req = dataclasses.replace(req, task=resolved.name, task_params=dataclasses.asdict(task.params))
    sample = task.generate(1, req.seed)
    from probekit.models.capabilities import has

    if has(adapter, "prepare"):  # adapters of plain modules learn their sizes from one sample
        adapter.prepare(np.asarray(sample[task.io.input_var].values))
    from probekit.models.sites import canonical_sites

    req = dataclasses.replace(req, sites=canonical_sites(req.sites, adapter.sites)[0])  # TransformerLens names
    for site in req.sites:
        if site not in adapter.sites:
            raise UnknownNameError("site", site, adapter.sites)
    parse_logits(req.logits, adapter.d_out)
    plan.check_layouts(adapter, req.sites, task.io.seq_len)
    plan.request_shard(req, adapter, task.io.seq_len, plan.request_block(req, adapter, task.io.seq_len))
    _preflight(req, task, adapter, sample)
    return req, task, adapter, refs


def _preflight(req: CacheRequest, task, adapter, sample) -> None:
    """Run the model on one sample and cast what it gives, so a request the model rejects
    (a sequence longer than it takes, inputs of the wrong width) fails before anything is written."""
    inputs = np.asarray(sample[task.io.input_var].values)
    valid = {"valid": np.asarray(sample["valid"].values)} if "valid" in sample else {}
    try:
        acts, out = adapter.run(inputs, list(req.sites), **valid)
    except Exception as exc:  # the model's own error, in its words
        if isinstance(exc, (DataError, UsageError, StoreError)):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"the model cannot run on these inputs (task {task.name!r}, "
                         f"{_short_params(req.task_params)}): {first}") from exc
    for site in req.sites:
        writer.to_store_dtype(site, acts[site], req.dtype)
    writer.model_outputs(req, np.asarray(out))


def _one_line(exc: Exception) -> str:
    from probekit.errors import ProbekitError

    first = (str(exc).strip().splitlines() or [""])[0]
    return first if isinstance(exc, ProbekitError) else f"{type(exc).__name__}: {first}"


def _short_params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "default parameters"


def _any_block_done(store: Store) -> bool:
    """Whether ``store`` has a finished block (then a failed run keeps it, to be resumed)."""
    try:
        return store.exists() and bool(store.blocks_done())
    except Exception:
        return False


def _run(host, req: CacheRequest, task, adapter, refs, fresh: bool, on_progress, on_start, executor=None) -> Store:
    """Create (``fresh``, or when absent) or resume the store at ``req.out`` and fill it."""
    from probekit.models.adapters import load_adapter
    from probekit.models.capabilities import has

    store = Store(req.out, req.storage_options)
    resuming = store.exists() and not fresh
    work = plan.make_plan(req, adapter, task.io.seq_len, None if store.remote else store.path, resuming)
    if on_start:
        on_start(work)
    _clear_partial_writes(store)
    if resuming:
        old = Store.open(store).attrs().get("request", {})
        diff = describe_difference(old, req.identity())
        if diff:
            raise StoreError(f"{req.out} holds a different cache ({diff}); use --overwrite or another --out")
        if store.is_complete() and (not req.random_init or store.is_complete(schema.RANDOM_INIT_GROUP)):
            return store
    else:
        _create(store, req, task, adapter, refs and _checkpoint_coords(host, refs))
    base = Store.open(store).dataset()
    inputs = np.asarray(base[task.io.input_var].values)
    valid = np.asarray(base["valid"].values) if "valid" in base else None
    if executor is not None:
        from probekit.cache.distributed import ClusterWriter

        fill = ClusterWriter(executor, store, req, task.io.input_var, on_progress, work["written"])
    else:
        fill = writer.BlockWriter(store, req, inputs, valid, on_progress, work["written"])
    if refs:
        _fill_checkpoints(host, fill, refs, base, adapter)
    else:
        fill(adapter, None)
    if req.random_init:
        rand = load_adapter(host, req.model, random_init=True, device=req.device, dtype=req.model_dtype)
        if has(rand, "prepare"):
            rand.prepare(inputs[:1])
        if not store.has_group(schema.RANDOM_INIT_GROUP):
            _create_group(store, req, rand, schema.RANDOM_INIT_GROUP, inputs.shape[1])
        fill(rand, schema.RANDOM_INIT_GROUP)
    fill.finish()
    _clear_partial_writes(store)  # what workers lost mid-write left (their units were rerun)
    store.consolidate()
    return store


def _clear_partial_writes(store: Store) -> None:
    """Remove writes a kill interrupted (zarr's ``<key>.<uuid>.partial``): their blocks are not in
    the manifest, so they are rewritten."""
    if store.remote or not store.path.exists():
        return
    for leftover in list(store.path.rglob("*" + PART_SUFFIX)):
        leftover.unlink(missing_ok=True)


def _resolve_checkpoints(req: CacheRequest):
    """``req`` with its checkpoints resolved (``model`` becomes the last of them) and the refs."""
    from probekit.cache import checkpoints
    from probekit.models.adapters import parse_spec

    if req.random_init:
        raise UsageError("--random-init does not combine with --checkpoints: the step-0 checkpoint is the "
                         "untrained model of the run")
    if req.text:
        raise UsageError("--checkpoints caches task inputs; it does not take --text")
    refs = checkpoints.resolve(req.checkpoints)
    paths = [r.path for r in refs]
    given = None
    if req.model:
        scheme, rest = parse_spec(req.model)
        if scheme != "toy":
            raise UsageError(f"--checkpoints works with toy: checkpoints; --model is {req.model!r}")
        given = rest
    checkpoints.check_compatible(paths + ([given] if given and given not in paths else []))
    return dataclasses.replace(req, model=refs[-1].spec, checkpoint_paths=tuple(paths)), refs


def _checkpoint_coords(host, refs) -> dict:
    from probekit.cache.checkpoints import weights_hashes

    return {schema.CHECKPOINT: np.asarray([r.step for r in refs], dtype=np.int64),
            schema.CHECKPOINT_PATH: (schema.CHECKPOINT, [r.path for r in refs]),
            schema.CHECKPOINT_HASH: (schema.CHECKPOINT, weights_hashes(host, refs))}


def _fill_checkpoints(host, fill, refs, base, last) -> None:
    """Each checkpoint with blocks still to write is loaded in turn (one model in memory at a
    time), checked against the weights hash recorded at creation, and cached."""
    from probekit.models.adapters import load_adapter

    n_blocks = -(-fill.req.n_samples // fill.store.attrs()[schema.BLOCK_ATTR])
    done = fill.store.blocks_done()
    hashes = [str(h) for h in base[schema.CHECKPOINT_HASH].values]
    for ci, ref in enumerate(refs):
        if all((ci, b) in done for b in range(n_blocks)):
            continue
        adapter = last if ci == len(refs) - 1 else load_adapter(host, ref.spec, device=fill.req.device)
        if adapter.provenance()["model_hash"] != hashes[ci]:
            raise StoreError(f"checkpoint {ref.path} has changed since {fill.store.path} was started (its weights "
                             "hash differs); use --overwrite to start again")
        from probekit.cache.distributed import ModelRef

        fill(adapter, None, unit=(ci, len(refs), f"step {ref.step}"), model=ModelRef(ref.spec))


def _create(store: Store, req: CacheRequest, task, adapter, ckpt_coords: dict | None) -> None:
    ds = task.generate(req.n_samples, req.seed)
    n, T = ds.sizes[schema.SAMPLE], ds.sizes[schema.POS]
    if n != req.n_samples:
        raise DataError(f"task {task.name!r} generated {n} samples, {req.n_samples} were asked for")
    attrs = dict(ds.attrs)
    attrs.update(_group_attrs(req, adapter, T))
    attrs.update(
        probekit_format=schema.FORMAT_VERSION,
        probekit_version=probekit.__version__,
        created=utc_stamp(),
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
    if ckpt_coords:
        coords.update(ckpt_coords)
        attrs.update({schema.N_CHECKPOINTS_ATTR: len(req.checkpoint_paths), "checkpoint_source": req.checkpoints})
    base = ds.assign_coords(coords)
    base.attrs = attrs
    Store.create(store, base)
    _create_arrays(store, req, adapter, T, None)


def _group_attrs(req: CacheRequest, adapter, T: int) -> dict:
    block = plan.request_block(req, adapter, T)
    shard = plan.request_shard(req, adapter, T, block)
    return adapter.provenance() | {
        "sites": list(req.sites),
        "dtype": req.dtype,
        schema.BLOCK_ATTR: block,
    } | ({schema.SHARD_ATTR: shard} if shard else {})


def _create_group(store: Store, req: CacheRequest, adapter, group: str, T: int) -> None:
    import zarr

    zarr.open_group(store.target, path=group, mode="a").attrs.update(
        _group_attrs(req, adapter, T) | {"n_samples": req.n_samples}
    )
    _create_arrays(store, req, adapter, T, group)


def _create_arrays(store: Store, req: CacheRequest, adapter, T: int, group: str | None) -> None:
    """Pre-size every site and output variable; a checkpoint store puts ``checkpoint`` first."""
    block, shard = store.attrs(group)[schema.BLOCK_ATTR], store.attrs(group).get(schema.SHARD_ATTR)
    from probekit.models.adapters import adapter_site_layout

    n_ckpt = len(req.checkpoint_paths) if group is None else 0
    lead_dims, lead = ((schema.CHECKPOINT,), (n_ckpt,)) if n_ckpt else ((), ())
    for site in req.sites:
        dims, shape = adapter_site_layout(adapter, site, T)
        store.create_activation(site, (*lead, req.n_samples, *shape), dims=(*lead_dims, *dims), dtype=req.dtype,
                                block=block, shard=shard, group=group, attrs={"site": site})
    for name, shape, dims, dtype in output_layout(req, adapter.d_out, T):
        store.create_variable(name, (*lead, req.n_samples, *shape), (*lead_dims, schema.SAMPLE, *dims), dtype=dtype,
                              chunks=(*(1 for _ in lead), block, *shape), group=group,
                              shards=shard and (*(1 for _ in lead), shard, *shape),
                              attrs={"description": OUTPUT_DESCRIPTIONS[name]})


