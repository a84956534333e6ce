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
from probekit.store import schema
from probekit.errors import DataError, StoreError, UnknownNameError, UsageError
from probekit.store.zarr_store import Store

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
    checkpoints: str | None = None  # a directory of toy checkpoints or a glob: cache through each of them
    checkpoint_paths: tuple[str, ...] = ()  # what ``checkpoints`` resolved to (set by run_cache)
    logits: str = "keep"  # the model output: keep, skip or topk:K

    def identity(self) -> dict:
        """The fields that must match for a resume. Not batch size, device or block (a resumed
        store keeps the block size it was created with), nor random_init: the random-init
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


IDENTITY_DEFAULTS = {"checkpoints": None, "logits": "keep"}  # identity keys a plain request leaves out
LOGITS_MODES = ("keep", "skip", "topk:K")


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


def _outputs(req: CacheRequest, out: np.ndarray) -> dict[str, np.ndarray]:
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


def sample_block(n_samples: int, bytes_per_sample: int) -> int:
    """Samples per chunk so one layer of one block is about TARGET_CHUNK_BYTES."""
    return int(max(1, min(n_samples, TARGET_CHUNK_BYTES // max(1, bytes_per_sample))))


def _to_store_dtype(site: str, acts: np.ndarray, dtype: str) -> np.ndarray:
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
    from probekit.cache.checkpoints import short_list

    keys = list(new) + [k for k in old if k not in new and k in IDENTITY_DEFAULTS]
    diffs = []
    for k in keys:
        was, asked = old.get(k, IDENTITY_DEFAULTS.get(k)), new.get(k, IDENTITY_DEFAULTS.get(k))
        if was != asked:
            diffs.append(f"{k}: store has {short_list(was)}, asked for {short_list(asked)}")
    return "; ".join(diffs)


def estimate_bytes(req: CacheRequest, adapter, seq_len: int) -> int:
    """Uncompressed bytes the activations and outputs will take (an upper bound on disk use)."""
    from probekit.models.adapters import adapter_site_layout

    per_sample = sum(int(np.prod(adapter_site_layout(adapter, s, seq_len)[1])) for s in req.sites)
    per_sample *= np.dtype(req.dtype).itemsize
    per_sample += sum(int(np.prod(shape)) * np.dtype(dt).itemsize
                      for _, shape, _, dt in output_layout(req, adapter.d_out, seq_len))
    copies = len(req.checkpoint_paths) or (2 if req.random_init else 1)
    return int(per_sample * req.n_samples * copies)


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
    """
    from probekit import outputs

    outputs.check_output(req.out, outputs.STORE, replace=True)
    req, task, adapter, refs = _prepare(host, req)
    store = Store(req.out)
    replace = overwrite and store.path.exists()
    with outputs.made_here(store.path, keep=lambda: _any_block_done(store)), store.lock():
        outputs.clear_leftovers(store.path)  # what killed runs left beside the store
        if replace:
            with outputs.replacing(store.path) as stage:
                _run(host, dataclasses.replace(req, out=str(stage)), task, adapter, refs, True, on_progress, on_start)
            return Store(store.path)
        try:
            return _run(host, req, task, adapter, refs, False, on_progress, on_start)
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
    for name, value in (("--n-samples", req.n_samples), ("--batch-size", req.batch_size), ("--block", req.block)):
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
        ckpt = getattr(adapter, "ckpt", None)
        task_name = req.task or (ckpt.task if ckpt else None)
        if task_name is None:
            raise UsageError("this model records no task: pass --task (or --text FILE for prompts)")
        params = dict(ckpt.task_params) if ckpt and ckpt.task == task_name else {}
        params.update(req.task_params)
        task = host.tasks.get(task_name)(**params)
        req = dataclasses.replace(req, task=task_name, task_params=dataclasses.asdict(task.params))
    sample = task.generate(1, req.seed)
    if hasattr(adapter, "prepare"):  # adapters of plain modules learn their sizes from one sample
        adapter.prepare(np.asarray(sample[task.io.input_var].values))
    from probekit.models.sites import canonical_sites

    req = dataclasses.replace(req, sites=canonical_sites(req.sites, adapter.sites)[0])  # TransformerLens names
    for site in req.sites:
        if site not in adapter.sites:
            raise UnknownNameError("site", site, adapter.sites)
    parse_logits(req.logits, adapter.d_out)
    _check_layouts(adapter, req.sites, task.io.seq_len)
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
        _to_store_dtype(site, acts[site], req.dtype)
    _outputs(req, np.asarray(out))


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


def _run(host, req: CacheRequest, task, adapter, refs, fresh: bool, on_progress, on_start) -> Store:
    """Create (``fresh``, or when absent) or resume the store at ``req.out`` and fill it."""
    from probekit.models.adapters import load_adapter

    store = Store(req.out)
    resuming = store.exists() and not fresh
    needed = estimate_bytes(req, adapter, task.io.seq_len)
    free = check_disk(store.path, 0 if resuming else needed)
    copies = len(req.checkpoint_paths) or (2 if req.random_init else 1)
    plan = {"estimated_bytes": needed, "free_bytes": free, "resuming": resuming,
            "bytes_per_sample": needed // (req.n_samples * copies),
            "written": {"samples": 0, "tokens": 0, "bytes": 0}}
    if on_start:
        on_start(plan)
    for leftover in store.path.rglob("*.partial") if store.path.exists() else []:
        leftover.unlink()  # a write interrupted by a kill; its block is not in the manifest
    if resuming:
        old = Store.open(req.out).attrs().get("request", {})
        diff = _describe_difference(old, req.identity())
        if diff:
            raise StoreError(f"{req.out} holds a different cache ({diff}); use --overwrite or another --out")
        if store.is_complete() and (not req.random_init or store.is_complete(schema.RANDOM_INIT_GROUP)):
            return store
    else:
        _create(store, req, task, adapter, refs and _checkpoint_coords(host, refs))
    base = Store.open(req.out).dataset()
    inputs = np.asarray(base[task.io.input_var].values)
    valid = np.asarray(base["valid"].values) if "valid" in base else None
    fill = _Fill(store, req, inputs, valid, on_progress, plan["written"])
    if refs:
        _fill_checkpoints(host, fill, refs, base, adapter)
    else:
        fill(adapter, None)
    if req.random_init:
        rand = load_adapter(host, req.model, random_init=True, device=req.device, dtype=req.model_dtype)
        if hasattr(rand, "prepare"):
            rand.prepare(inputs[:1])
        if not store.has_group(schema.RANDOM_INIT_GROUP):
            _create_group(store, req, rand, schema.RANDOM_INIT_GROUP, inputs.shape[1])
        fill(rand, schema.RANDOM_INIT_GROUP)
    store.consolidate()
    return store


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
        fill(adapter, None, unit=(ci, len(refs), f"step {ref.step}"))


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
    if ckpt_coords:
        coords.update(ckpt_coords)
        attrs.update({schema.N_CHECKPOINTS_ATTR: len(req.checkpoint_paths), "checkpoint_source": req.checkpoints})
    base = ds.assign_coords(coords)
    base.attrs = attrs
    Store.create(store.path, base)
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


OUTPUT_DESCRIPTIONS = {
    schema.OUTPUT_VAR: "model output at each position",
    schema.TOPK_VALUES_VAR: "the model's K largest outputs at each position, largest first",
    schema.TOPK_INDICES_VAR: "the output indices (e.g. token ids) of model_out_topk_values",
}


def _create_arrays(store: Store, req: CacheRequest, adapter, T: int, group: str | None) -> None:
    """Pre-size every site and output variable; a checkpoint store puts ``checkpoint`` first."""
    block = store.attrs(group)[schema.BLOCK_ATTR]
    from probekit.models.adapters import adapter_site_layout

    n_ckpt = len(req.checkpoint_paths) if group is None else 0
    lead_dims, lead = ((schema.CHECKPOINT,), (n_ckpt,)) if n_ckpt else ((), ())
    for site in req.sites:
        dims, shape = adapter_site_layout(adapter, site, T)
        store.create_activation(site, (*lead, req.n_samples, *shape), dims=(*lead_dims, *dims), dtype=req.dtype,
                                block=block, group=group, attrs={"site": site})
    for name, shape, dims, dtype in output_layout(req, adapter.d_out, T):
        store.create_variable(name, (*lead, req.n_samples, *shape), (*lead_dims, schema.SAMPLE, *dims), dtype=dtype,
                              chunks=(*(1 for _ in lead), block, *shape), group=group,
                              attrs={"description": OUTPUT_DESCRIPTIONS[name]})


class _Fill:
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

        store, req, inputs, valid = self.store, self.req, self.inputs, self.valid
        block = store.attrs(group)[schema.BLOCK_ATTR]
        n = req.n_samples
        ci, n_units, phase = unit or (None, 1, "random-init" if group else "model")
        done = store.blocks_done(group)
        names = [*req.sites, *(name for name, *_ in output_layout(req, adapter.d_out, inputs.shape[1]))]
        arrays = store.writable(names, group)

        def write(b: int, s0: int, s1: int, blocks: dict) -> None:
            for name, data in blocks.items():
                if ci is None:
                    arrays[name][s0:s1] = data
                else:
                    arrays[name][ci, s0:s1] = data
            store.mark_block_done(b if ci is None else (ci, b), group)  # only after every chunk is on disk
            self.written["samples"] += s1 - s0
            self.written["tokens"] += int(valid[s0:s1].sum()) if valid is not None else (s1 - s0) * inputs.shape[1]
            self.written["bytes"] += sum(int(d.nbytes) for d in blocks.values())
            if self.on_progress:
                self.on_progress(phase, (ci or 0) * n + s1, n * n_units)

        pending = None
        with ThreadPoolExecutor(max_workers=1) as writer:
            for b in range(-(-n // block)):
                if (b if ci is None else (ci, b)) in done:
                    continue
                s0, s1 = b * block, min(n, (b + 1) * block)
                parts = [adapter.run(inputs[i : min(s1, i + req.batch_size)], list(req.sites),
                                     **({} if valid is None else {"valid": valid[i : min(s1, i + req.batch_size)]}))
                         for i in range(s0, s1, req.batch_size)]
                blocks = {}
                for site in req.sites:
                    blocks[site] = _to_store_dtype(site, np.concatenate([p[0][site] for p in parts]), req.dtype)
                blocks.update(_outputs(req, np.concatenate([p[1] for p in parts])))
                if pending is not None:
                    pending.result()  # surfaces write errors; keeps one block in flight
                pending = writer.submit(write, b, s0, s1, blocks)
            if pending is not None:
                pending.result()
