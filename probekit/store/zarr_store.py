"""Open, create, write, lock and resume probekit stores (zarr v3 groups read by xarray).

A store knows paths and arrays, never models. Layout (see ``docs/store-spec.md``)::

    <run>.zarr/                  root group: task inputs, activations, model outputs, provenance
      random_init/               optional: the same sites for a random-init model
      probes/<hypothesis>/<id>/  probe results, one xarray Dataset each
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from probekit.store import schema
from probekit.store.location import Location, mtime
from probekit.errors import StoreError


def _zarr():
    import zarr

    return zarr


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's notice that consolidated metadata is not in the v3 spec (we rely on it knowingly)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        yield


def _checksummed(ds) -> dict:
    """``to_zarr`` encoding that appends the crc32c codec to every variable's compressors (zarr's
    default, zstd, before it): each chunk is checked whenever it is read."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {name: {**v.encoding, "compressors": [ZstdCodec(), Crc32cCodec()]} for name, v in ds.variables.items()}


def vlen_strings(ds):
    """Store text as zarr v3 variable-length strings: fixed-width UTF-32 has no v3 specification."""
    kinds = {name: v for name, v in ds.variables.items() if v.dtype.kind == "U"}
    return ds.assign_coords({n: v.astype(object) for n, v in kinds.items() if n in ds.coords}).assign(
        {n: v.astype(object) for n, v in kinds.items() if n not in ds.coords}
    ) if kinds else ds


class Store:
    """A probekit store at ``path``: a directory ending in ``.zarr`` by convention, or an
    object-store URL (``s3://bucket/run.zarr``) read and written with ``storage_options``
    (:mod:`probekit.store.location`). ``path`` is a :class:`~pathlib.Path` for a local store
    and the URL (a ``str``) for a remote one; ``location`` knows both."""

    def __init__(self, path: str | os.PathLike | Location, storage_options: dict | None = None):
        self.location = Location(path, storage_options)
        self.path = self.location.url if self.location.remote else self.location.path
        self._lock = None

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @property
    def remote(self) -> bool:
        return self.location.remote

    @property
    def target(self):
        """What zarr and xarray open: the local path, or a ``zarr.storage.FsspecStore``."""
        return self.location.zarr_store() if self.remote else self.path

    # -- creation and opening ------------------------------------------------

    def exists(self) -> bool:
        return self.location.isfile("zarr.json")

    @classmethod
    def create(cls, path, base, *, checksum: bool = True) -> "Store":
        """Create a store whose root holds ``base`` (an ``xr.Dataset``) and its attrs. Every chunk
        is written, even one equal to the fill value (so a missing chunk means damage); with
        ``checksum`` every variable carries the crc32c codec.

        Refuses any existing path but an empty folder: a store is replaced only by building
        the new one beside it and swapping it in (:func:`probekit.outputs.replacing`).
        """
        store = path if isinstance(path, Store) else cls(path)
        if store.remote:
            if store.location.find():
                raise StoreError(f"{store.path} already holds objects; refusing to write a new store over them")
        elif store.path.exists() and (not store.path.is_dir() or any(store.path.iterdir())):
            raise StoreError(f"{store.path} already exists; refusing to write a new store over it")
        else:
            store.path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_zarr():
            base = vlen_strings(base)
            base.to_zarr(store.target, mode="w-", zarr_format=3, consolidated=False, write_empty_chunks=True,
                         encoding=_checksummed(base) if checksum else None)
        store.consolidate()
        return store

    @classmethod
    def open(cls, path, storage_options: dict | None = None) -> "Store":
        """Open an existing probekit store, or raise :class:`StoreError` saying what is wrong."""
        store = path if isinstance(path, Store) else cls(path, storage_options)
        if not store.location.exists():
            raise StoreError(f"no store at {store.path}")
        if not store.exists():
            raise StoreError(f"{store.path} is not a zarr v3 store (no zarr.json)")
        try:
            attrs = store.attrs()
        except Exception as exc:
            raise StoreError(f"{store.path}/zarr.json is not readable zarr metadata ({str(exc).splitlines()[0][:80]}); "
                             f"if this is a probekit store it is damaged: run probekit verify {store.path}") from exc
        if "probekit_format" not in attrs:
            raise StoreError(f"{store.path} is a zarr store but not a probekit store (no probekit_format attribute)")
        return store

    def remove(self) -> None:
        if self.exists() or not self.location.exists():
            self.location.remove()
        else:
            raise StoreError(f"refusing to delete {self.path}: it is not a zarr store")

    # -- reading --------------------------------------------------------------

    def group(self, group: str | None = None, mode: str = "r"):
        zarr = _zarr()
        return zarr.open_group(self.target, path=group or "", mode=mode, use_consolidated=False)

    def attrs(self, group: str | None = None) -> dict:
        return dict(self.group(group).attrs)

    def has_group(self, group: str) -> bool:
        return self.location.isfile(f"{group}/zarr.json")

    def dataset(self, group: str | None = None):
        """The (lazy) xarray Dataset of the root or of a sub-group.

        Reads the metadata files themselves, never the consolidated copy, which can be
        stale while a write is under way. (Users' plain ``xr.open_zarr`` gets the
        consolidated metadata written when each command finishes.)
        """
        import xarray as xr

        if group and not self.has_group(group):
            raise StoreError(f"{self.path} has no group {group!r}")
        return xr.open_zarr(self.target, group=group, consolidated=False, chunks=None)

    def array(self, name: str, group: str | None = None):
        """The zarr array ``name`` (for chunk-wise reads that bypass xarray)."""
        g = self.group(group)
        if name not in g.array_keys():
            raise StoreError(f"{self.path} has no variable {name!r} in group {group or '/'}")
        return g[name]

    # -- writing --------------------------------------------------------------

    def update_attrs(self, attrs: dict, group: str | None = None) -> None:
        self.group(group, mode="a").attrs.update(attrs)

    def create_activation(
        self,
        name: str,
        shape: tuple[int, ...],
        *,
        dtype: str,
        block: int,
        dims: tuple[str, ...] = schema.ACTIVATION_DIMS,
        group: str | None = None,
        attrs: dict | None = None,
        checksum: bool = True,
        shard: int | None = None,
    ):
        """Pre-size an activation array ``(sample, layer or block, ...)``, or
        ``(checkpoint, sample, layer or block, ...)`` in a store of several checkpoints.

        One chunk is ``(block, 1, ...everything else)`` (after a leading 1 for the
        checkpoint): one layer of one sample block, a single contiguous read. With ``checksum``
        each chunk carries a crc32c, checked on every read (bit rot, truncation). With ``shard``
        (samples, a multiple of ``block``), chunks are inner chunks of zarr's sharding codec: one
        object holds every layer of ``shard`` samples, a chunk is still one contiguous range of it,
        and the crc32c applies to each inner chunk and to the shard's index.
        """
        if dtype not in schema.STORE_DTYPES:
            raise StoreError(f"unsupported store dtype {dtype!r}; choose from: {', '.join(schema.STORE_DTYPES)}")
        if schema.site_dims(dims) not in schema.SITE_DIMS or len(shape) != len(dims):
            raise StoreError(f"activation {name!r}: dims {dims} / shape {shape} are not a site layout")
        lead = (1,) if tuple(dims)[0] == schema.CHECKPOINT else ()
        zarr = _zarr()
        g = zarr.open_group(self.target, path=group or "", mode="a", use_consolidated=False)
        return g.create_array(
            name,
            shape=shape,
            chunks=(*lead, block, 1, *shape[len(lead) + 2:]),
            shards=(*lead, shard, *shape[len(lead) + 1:]) if shard else None,
            dtype=dtype,
            dimension_names=tuple(dims),
            fill_value=0,
            attributes=attrs or {},
            # activations barely compress (measured: 1% with zstd) and it halves write speed
            compressors=_checksum_codecs(checksum, compress=False),
            overwrite=True,
        )

    def create_variable(self, name, shape, dims, *, dtype, chunks, group=None, attrs=None, checksum: bool = True,
                        shards=None):
        """Pre-size any other per-sample variable (e.g. model outputs). Float variables (logits)
        are stored uncompressed like activations; integer and boolean ones (tokens, masks) with
        zarr's default compressor (zstd). ``checksum`` appends the crc32c codec; ``shards`` (a
        shape, a multiple of ``chunks``) stores them through zarr's sharding codec."""
        zarr = _zarr()
        g = zarr.open_group(self.target, path=group or "", mode="a", use_consolidated=False)
        return g.create_array(
            name, shape=shape, chunks=chunks, shards=shards or None, dtype=dtype, dimension_names=dims,
            fill_value=0, attributes=attrs or {}, overwrite=True,
            compressors=_checksum_codecs(checksum, compress=np.dtype(dtype).kind != "f"),
        )

    def writable(self, names, group: str | None = None) -> dict:
        """The arrays ``names`` opened for block writes. Every chunk is written, even an all-zero
        one: zarr otherwise compares each chunk with the fill value first, a full extra scan of
        everything written (measured: a third of the cache's time on a GPU)."""
        zarr = _zarr()
        with zarr.config.set({"array.write_empty_chunks": True}):
            g = self.group(group, mode="a")
            return {name: g[name] for name in names}

    def write_block(self, name: str, start: int, data: np.ndarray, group: str | None = None) -> None:
        """Write ``data`` at samples ``start:start+len(data)`` of variable ``name``."""
        arr = self.writable([name], group)[name]
        if data.shape[1:] != arr.shape[1:]:
            raise StoreError(f"block for {name!r} has shape {data.shape}, store expects (*, {arr.shape[1:]})")
        arr[start : start + data.shape[0]] = data

    # -- manifest of completed sample blocks (makes interrupted writes resumable) --

    # A checkpoint store's units are (checkpoint index, sample block) pairs, stored as [c, b].

    def blocks_done(self, group: str | None = None) -> set:
        """Completed units: sample block indices, or ``(checkpoint, block)`` pairs (one marker object
        each, listed in one go; :mod:`probekit.store.manifest`)."""
        from probekit.store import manifest
        from probekit.store.integrity import damaged

        node = self.group(group)
        try:
            return manifest.units(node, dict(node.attrs))
        except ValueError as exc:
            raise damaged(self.path, f"the manifest of group {group or '/'} is malformed ({exc})") from None

    def mark_block_done(self, index, group: str | None = None) -> None:
        """Record sample block ``index`` (an int, or a ``(checkpoint, block)`` pair) as written:
        one small object, whatever the number of blocks already done."""
        from probekit.store import manifest

        self.check_lock()  # a writer whose object-store lock was taken over writes no more blocks
        unit = tuple(int(i) for i in index) if isinstance(index, (tuple, list)) else int(index)
        node = self.group(group, mode="a")
        manifest.mark(node, dict(node.attrs), unit)

    def is_complete(self, group: str | None = None) -> bool:
        """Whether every sample block (of every checkpoint) of the root (or of ``group``) has been written."""
        if group and not self.has_group(group):
            return False
        from probekit.store.integrity import expected_units

        units = expected_units(self.attrs(group))  # (a manifest listing units the group lacks never counts)
        return bool(units) and units <= self.blocks_done(group)

    def check_chunks(self, group: str | None = None, names=None) -> None:
        """Raise :class:`StoreError` if a chunk of a finished sample block of the group's sites and
        model outputs (or of ``names``) is missing, or its metadata is unreadable: zarr would read
        a missing chunk as zeros. Lists files, reads no data (:func:`probekit.store.integrity.check_chunks`)."""
        from probekit.store.integrity import check_chunks

        check_chunks(self, group, names)

    def consolidate(self) -> None:
        zarr = _zarr()
        with quiet_zarr():
            zarr.consolidate_metadata(self.target)

    # -- probe results -----------------------------------------------------------

    def write_results(self, ds, hypothesis: str, run_id: str) -> str:
        """Write a results Dataset under ``probes/<hypothesis>/<run_id>``; returns the group path."""
        key = f"{schema.PROBES_GROUP}/{hypothesis}/{run_id}"
        n = 1
        while self.location.exists(key):  # the same settings twice in one second: a new key, never a rewrite
            n += 1
            key = f"{schema.PROBES_GROUP}/{hypothesis}/{run_id}-{n}"
        try:
            with quiet_zarr():
                ds = vlen_strings(ds)
                ds.to_zarr(self.target, group=key, mode="w-", zarr_format=3, consolidated=False,
                           write_empty_chunks=True, encoding=_checksummed(ds))
        except BaseException:
            self.location.remove(key)  # no half-written results group
            raise
        self.consolidate()
        return key

    def results(self, hypothesis: str | None = None) -> list[str]:
        """Group paths of stored probe results, oldest first."""
        keys = []
        for rel, info in self.location.find(schema.PROBES_GROUP, detail=True).items():
            parts = rel.split("/")
            if len(parts) == 3 and parts[2] == "zarr.json" and (not hypothesis or parts[0] == hypothesis):
                keys.append((mtime(info), f"{schema.PROBES_GROUP}/{parts[0]}/{parts[1]}"))
        return [k for _, k in sorted(keys)]

    # -- locking -----------------------------------------------------------------

    @property
    def lock_path(self) -> Path | str:
        """The sibling ``<name>.lock`` (a file, or an object of a remote store)."""
        from probekit.store.lock import lock_location

        at = lock_location(self.location)
        return at.url if at.remote else at.path

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive writer lock (a sibling ``.lock`` file or object; :mod:`probekit.store.lock`):
        stale locks (a dead process; on an object store also a heartbeat older than the timeout)
        are taken over."""
        from probekit.store.lock import Lock

        held = Lock(self.location).acquire()
        self._lock = held
        try:
            yield
        finally:
            self._lock = None
            held.release()

    def check_lock(self) -> None:
        """Raise :class:`StoreLockedError` if this store's writer lock was taken over by another
        writer (its heartbeat stalled past the timeout); a no-op when no lock is held."""
        if self._lock is not None:
            self._lock.check()


def _checksum_codecs(checksum: bool, *, compress: bool):
    """``compressors=`` of a new array: zstd (zarr's default) if ``compress``, then crc32c if ``checksum``."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    codecs = [ZstdCodec()] if compress else []
    codecs += [Crc32cCodec()] if checksum else []
    return codecs or None
