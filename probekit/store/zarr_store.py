"""Open, create, write, lock and resume probekit stores (zarr v3 groups read by xarray).

A store knows paths and arrays, never models. Layout (see ``docs/store-spec.md``)::

    <run>.zarr/                  root group: task inputs, activations, model outputs, provenance
      random_init/               optional: the same sites for a random-init model
      probes/<hypothesis>/<id>/  probe results, one xarray Dataset each
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from probekit.store import schema
from probekit.errors import StoreError, StoreLockedError


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
    """A probekit store at ``path`` (a directory ending in ``.zarr`` by convention)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- creation and opening ------------------------------------------------

    def exists(self) -> bool:
        return (self.path / "zarr.json").is_file()

    @classmethod
    def create(cls, path, base, *, checksum: bool = True) -> "Store":
        """Create a store whose root holds ``base`` (an ``xr.Dataset``) and its attrs. Every chunk
        is written, even one equal to the fill value (so a missing chunk means damage); with
        ``checksum`` every variable carries the crc32c codec.

        Refuses any existing path but an empty folder: a store is replaced only by building
        the new one beside it and swapping it in (:func:`probekit.outputs.replacing`).
        """
        store = cls(path)
        if store.path.exists() and (not store.path.is_dir() or any(store.path.iterdir())):
            raise StoreError(f"{store.path} already exists; refusing to write a new store over it")
        store.path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_zarr():
            base = vlen_strings(base)
            base.to_zarr(store.path, mode="w-", zarr_format=3, consolidated=False, write_empty_chunks=True,
                         encoding=_checksummed(base) if checksum else None)
        store.consolidate()
        return store

    @classmethod
    def open(cls, path) -> "Store":
        """Open an existing probekit store, or raise :class:`StoreError` saying what is wrong."""
        store = cls(path)
        if not store.path.exists():
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
        if (self.path / "zarr.json").is_file() or not self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            raise StoreError(f"refusing to delete {self.path}: it is not a zarr store")

    # -- reading --------------------------------------------------------------

    def group(self, group: str | None = None, mode: str = "r"):
        zarr = _zarr()
        return zarr.open_group(self.path, path=group or "", mode=mode, use_consolidated=False)

    def attrs(self, group: str | None = None) -> dict:
        return dict(self.group(group).attrs)

    def has_group(self, group: str) -> bool:
        return (self.path / group / "zarr.json").is_file()

    def dataset(self, group: str | None = None):
        """The (lazy) xarray Dataset of the root or of a sub-group.

        Reads the metadata files themselves, never the consolidated copy, which can be
        stale while a write is under way. (Users' plain ``xr.open_zarr`` gets the
        consolidated metadata written when each command finishes.)
        """
        import xarray as xr

        if group and not self.has_group(group):
            raise StoreError(f"{self.path} has no group {group!r}")
        return xr.open_zarr(self.path, group=group, consolidated=False, chunks=None)

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
    ):
        """Pre-size an activation array ``(sample, layer or block, ...)``, or
        ``(checkpoint, sample, layer or block, ...)`` in a store of several checkpoints.

        One chunk is ``(block, 1, ...everything else)`` (after a leading 1 for the
        checkpoint): one layer of one sample block, a single contiguous read. With ``checksum``
        each chunk carries a crc32c, checked on every read (bit rot, truncation).
        """
        if dtype not in schema.STORE_DTYPES:
            raise StoreError(f"unsupported store dtype {dtype!r}; choose from: {', '.join(schema.STORE_DTYPES)}")
        if schema.site_dims(dims) not in schema.SITE_DIMS or len(shape) != len(dims):
            raise StoreError(f"activation {name!r}: dims {dims} / shape {shape} are not a site layout")
        lead = (1,) if tuple(dims)[0] == schema.CHECKPOINT else ()
        zarr = _zarr()
        g = zarr.open_group(self.path, path=group or "", mode="a", use_consolidated=False)
        return g.create_array(
            name,
            shape=shape,
            chunks=(*lead, block, 1, *shape[len(lead) + 2:]),
            dtype=dtype,
            dimension_names=tuple(dims),
            fill_value=0,
            attributes=attrs or {},
            # activations barely compress (measured: 1% with zstd) and it halves write speed
            compressors=_checksum_codecs(checksum, compress=False),
            overwrite=True,
        )

    def create_variable(self, name, shape, dims, *, dtype, chunks, group=None, attrs=None, checksum: bool = True):
        """Pre-size any other per-sample variable (e.g. model outputs). Float variables (logits)
        are stored uncompressed like activations; integer and boolean ones (tokens, masks) with
        zarr's default compressor (zstd). ``checksum`` appends the crc32c codec."""
        zarr = _zarr()
        g = zarr.open_group(self.path, path=group or "", mode="a", use_consolidated=False)
        return g.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims,
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
        """Completed units: sample block indices, or ``(checkpoint, block)`` pairs."""
        from probekit.store.integrity import damaged, manifest_units

        try:
            return manifest_units(self.attrs(group).get(schema.MANIFEST_ATTR, []))
        except ValueError as exc:
            raise damaged(self.path, f"the manifest of group {group or '/'} is malformed ({exc})") from None

    def mark_block_done(self, index, group: str | None = None) -> None:
        """Record sample block ``index`` (an int, or a ``(checkpoint, block)`` pair) as written."""
        unit = tuple(int(i) for i in index) if isinstance(index, (tuple, list)) else int(index)
        done = sorted(self.blocks_done(group) | {unit})
        self.update_attrs({schema.MANIFEST_ATTR: [list(u) if isinstance(u, tuple) else u for u in done]}, group)

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
            zarr.consolidate_metadata(self.path)

    # -- probe results -----------------------------------------------------------

    def write_results(self, ds, hypothesis: str, run_id: str) -> str:
        """Write a results Dataset under ``probes/<hypothesis>/<run_id>``; returns the group path."""
        key = f"{schema.PROBES_GROUP}/{hypothesis}/{run_id}"
        n = 1
        while (self.path / key).exists():  # the same settings twice in one second: a new key, never a rewrite
            n += 1
            key = f"{schema.PROBES_GROUP}/{hypothesis}/{run_id}-{n}"
        try:
            with quiet_zarr():
                ds = vlen_strings(ds)
                ds.to_zarr(self.path, group=key, mode="w-", zarr_format=3, consolidated=False,
                           write_empty_chunks=True, encoding=_checksummed(ds))
        except BaseException:
            shutil.rmtree(self.path / key, ignore_errors=True)  # no half-written results group
            raise
        self.consolidate()
        return key

    def results(self, hypothesis: str | None = None) -> list[str]:
        """Group paths of stored probe results, oldest first."""
        base = self.path / schema.PROBES_GROUP
        keys = []
        for hyp_dir in sorted(base.iterdir()) if base.is_dir() else []:
            if not hyp_dir.is_dir() or (hypothesis and hyp_dir.name != hypothesis):
                continue
            for run in hyp_dir.iterdir():
                if run.is_dir() and (run / "zarr.json").is_file():
                    keys.append((run.stat().st_mtime, f"{schema.PROBES_GROUP}/{hyp_dir.name}/{run.name}"))
        return [k for _, k in sorted(keys)]

    # -- locking -----------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive writer lock (a sibling ``.lock`` file); stale locks of dead processes are taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                holder = _read_lock(self.lock_path)
                if holder.get("host") == me["host"] and not _pid_alive(holder.get("pid")):
                    self.lock_path.unlink(missing_ok=True)  # stale: its writer died
                    continue
                raise StoreLockedError(
                    f"{self.path} is being written by another process (pid {holder.get('pid')} on "
                    f"{holder.get('host')}); wait for it, or delete {self.lock_path} if that process is gone"
                ) from None
        else:  # pragma: no cover - lost a race twice
            raise StoreLockedError(f"could not lock {self.path}")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            yield
        finally:
            self.lock_path.unlink(missing_ok=True)


def _checksum_codecs(checksum: bool, *, compress: bool):
    """``compressors=`` of a new array: zstd (zarr's default) if ``compress``, then crc32c if ``checksum``."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    codecs = [ZstdCodec()] if compress else []
    codecs += [Crc32cCodec()] if checksum else []
    return codecs or None


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
