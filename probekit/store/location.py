"""Where a store lives: a local folder, or an object-store URL with its storage options.

``s3://bucket/run.zarr``, ``gs://bucket/run.zarr``, ``az://…`` or any other fsspec URL is
remote; anything else (``file://`` included) is a local path and behaves exactly as a plain
path always has. Storage options (``endpoint_url``, ``profile``, ``anon``, ``key``/``secret``,
nested ``client_kwargs``) go to the fsspec filesystem and to zarr's ``FsspecStore``; they
are held in memory only, never written into a store.

Object stores have no folders: a "folder" is a key prefix, and a prefix "exists" when a key
starts with it. Keys are ``/``-separated relative paths below the location's root.
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
from pathlib import Path

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(where) -> bool:
    """Whether ``where`` names an object-store location (a URL that is not ``file://``)."""
    return isinstance(where, str) and bool(_URL.match(where)) and not where.lower().startswith("file://")


class Location:
    """A local path or a URL plus storage options. ``str()`` is how messages name it."""

    def __init__(self, where, storage_options: dict | None = None):
        if isinstance(where, Location):
            storage_options = where.options if storage_options is None else storage_options
            where = where.url if where.remote else where.path
        text = os.fspath(where)
        self.options = dict(storage_options or {})
        self.remote = is_url(text)
        if self.remote:
            self.url, self.path = text.rstrip("/"), None
        else:
            self.url, self.path = None, Path(text[len("file://"):] if text.lower().startswith("file://") else text)

    def __str__(self) -> str:
        return self.url if self.remote else str(self.path)

    def __repr__(self) -> str:  # never the options: they may hold credentials
        return f"Location({str(self)!r})"

    def token(self) -> tuple[str, str]:
        """A hashable, picklable form (for caches and dask jobs): ``(where, options as JSON)``."""
        return str(self), json.dumps(self.options, sort_keys=True, default=str)

    @classmethod
    def from_token(cls, token: tuple[str, str]) -> "Location":
        return cls(token[0], json.loads(token[1]))

    # -- naming ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.remote else self.path.name

    def child(self, rel: str) -> "Location":
        if not rel:
            return self
        return Location(f"{self.url}/{rel}" if self.remote else self.path / rel, self.options)

    def sibling(self, name: str) -> "Location":
        return Location(f"{self.url.rsplit('/', 1)[0]}/{name}" if self.remote else self.path.with_name(name),
                        self.options)

    @property
    def parent(self) -> "Location":
        return Location(self.url.rsplit("/", 1)[0] if self.remote else self.path.parent, self.options)

    # -- the filesystem -------------------------------------------------------

    @cached_property
    def _fs_root(self):
        from fsspec.core import url_to_fs

        if not self.remote:
            fs, root = url_to_fs(str(self.path.absolute()))
            return fs, root
        try:
            return url_to_fs(self.url, **self.options)
        except (ImportError, ValueError) as exc:
            from probekit.errors import UsageError

            scheme = self.url.split("://", 1)[0]
            hint = {"s3": "s3fs (pip install 'probekit-lab[s3]')", "gs": "gcsfs (pip install 'probekit-lab[gcs]')",
                    "gcs": "gcsfs (pip install 'probekit-lab[gcs]')"}.get(scheme, f"the fsspec package for {scheme}://")
            raise UsageError(f"cannot open {self.url}: {str(exc).splitlines()[0][:120]}; it needs {hint}") from None

    @property
    def fs(self):
        return self._fs_root[0]

    @property
    def root(self) -> str:
        return self._fs_root[1].rstrip("/")

    def key(self, rel: str = "") -> str:
        """The filesystem path of ``rel`` below the root."""
        return f"{self.root}/{rel}" if rel else self.root

    def zarr_store(self):
        """What zarr and xarray open: the local path itself, or a ``zarr.storage.FsspecStore``."""
        if not self.remote:
            return self.path
        from zarr.storage import FsspecStore

        if getattr(self, "_zarr", None) is None:
            self.fs  # a clear error for a missing backend before zarr's own
            self._zarr = FsspecStore.from_url(self.url, storage_options=self.options or None, read_only=False)
        return self._zarr

    def refresh(self) -> None:
        """Forget listings fsspec cached: another process may have written since."""
        if self.remote:
            self.fs.invalidate_cache()

    # -- keys ------------------------------------------------------------------

    def isfile(self, rel: str = "") -> bool:
        if not self.remote:
            return (self.path / rel).is_file() if rel else self.path.is_file()
        self.refresh()
        return self.fs.isfile(self.key(rel))

    def exists(self, rel: str = "") -> bool:
        """A local path exists, or a key or prefix does."""
        if not self.remote:
            return (self.path / rel).exists() if rel else self.path.exists()
        self.refresh()
        return self.fs.exists(self.key(rel))

    def read_bytes(self, rel: str) -> bytes:
        if not self.remote:
            return (self.path / rel).read_bytes()
        return self.fs.cat_file(self.key(rel))

    def find(self, rel: str = "", detail: bool = False):
        """Every key below ``rel`` (relative to it), or ``{key: info}`` with ``detail``."""
        if not self.remote:
            base = self.path / rel
            found = {p.relative_to(base).as_posix(): {"mtime": p.stat().st_mtime, "size": p.stat().st_size}
                     for p in base.rglob("*") if p.is_file()} if base.is_dir() else {}
            return found if detail else sorted(found)
        self.refresh()
        prefix = self.key(rel).rstrip("/") + "/"
        try:
            found = self.fs.find(self.key(rel), detail=True)
        except FileNotFoundError:
            found = {}
        out = {k[len(prefix):]: v for k, v in found.items() if k.startswith(prefix) and v.get("type") != "directory"}
        return out if detail else sorted(out)

    def remove(self, rel: str = "") -> None:
        """Delete ``rel`` (everything below it); absent is fine."""
        if not self.remote:
            import shutil

            p = self.path / rel if rel else self.path
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            return
        self.refresh()
        key = self.key(rel)
        if self.fs.exists(key):
            self.fs.rm(key, recursive=True)
        self.refresh()


def mtime(info: dict) -> float:
    """A listing entry's modification time as seconds (fsspec backends name it differently)."""
    value = info.get("mtime", info.get("LastModified", info.get("updated", info.get("last_modified", 0))))
    if hasattr(value, "timestamp"):
        return value.timestamp()
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return float(value or 0)
