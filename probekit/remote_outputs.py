"""The nothing-lost rule of :mod:`probekit.outputs` for outputs at object-store URLs.

An object store has no folders and no rename, so the local rules map as follows:

* **What is there.** A URL prefix is absent when no key starts with it. A prefix whose
  ``zarr.json`` says probekit store is a store; any other objects there (a zarr store of
  someone else, files) are refused, as is a key inside another zarr store (a parent prefix
  with a ``zarr.json``).
* **Writable.** One small object ``.probekit-write-test-<uuid>`` is put beside the output and
  deleted, before any work (wrong credentials, a read-only bucket, a missing bucket fail here).
* **Replacing (``--overwrite``).** The new store is built under the hidden sibling prefix
  ``.<name>.probekit-new-<uuid>``; the old one is untouched until the new one is complete.
  Then, as S3 has no rename, the swap is a copy: a marker object ``.<name>.probekit-swap``
  naming the sibling is written, the old store's objects are deleted, the new ones are
  copied in with server-side copies (the root ``zarr.json`` last), and the sibling and the
  marker are deleted. A run killed during the swap leaves the marker: the next command on
  that store (under its writer lock) finishes the swap before anything else. A reader during
  the swap sees no store (no root ``zarr.json``) or the old or new one, never a mix it accepts.
* **Leftovers.** A ``-new-`` sibling without a marker is a half-built store of a killed run:
  the next run on that store deletes it (it holds the writer lock, so no live run builds it).
* **Failure.** A failed new store (no finished block) is deleted, as on disk.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Callable, Iterator

from probekit.outputs import KIND_ATTR, PATCH, PATCH_KIND, STORE, CURVE, CURVE_KIND, OutputError, UnwritableError
from probekit.store.location import Location

_KINDS = {CURVE_KIND: CURVE, PATCH_KIND: PATCH}
NEW, SWAP = ".probekit-new-", ".probekit-swap"


def _meta(where: Location, rel: str = "") -> dict | None:
    key = f"{rel}/zarr.json" if rel else "zarr.json"
    if not where.isfile(key):
        return None
    try:
        out = json.loads(where.read_bytes(key))
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) and out else {}


def describe(where: Location) -> str | None:
    """What is at a URL, in words (``None``: no object starts with it)."""
    if where.isfile():
        return f"an object ({where.fs.size(where.root):,} bytes)"
    if _swap_marker(where).isfile():
        return STORE  # a replacement killed mid-swap: finished by the next run
    meta = _meta(where)
    if meta == {}:
        return f"a zarr node whose zarr.json is unreadable (damaged? try: probekit verify {where})"
    if meta is not None:
        attrs = meta.get("attributes") or {}
        if meta.get("node_type") == "array":
            return "a zarr array"
        if attrs.get(KIND_ATTR) in _KINDS:
            return _KINDS[attrs[KIND_ATTR]]
        return STORE if "probekit_format" in attrs else "a zarr group (not a probekit store)"
    keys = where.find()
    if not keys:
        return None
    return f"a prefix holding {len(keys):,} object{'s' * (len(keys) != 1)} (not a probekit store)"


def enclosing_store(where: Location) -> Location | None:
    """The nearest prefix above ``where`` (within its bucket) holding a ``zarr.json``."""
    scheme, _, rest = where.url.partition("://")
    parts = rest.split("/")
    for i in range(len(parts) - 1, 1, -1):  # parts[0] is the bucket
        above = Location(f"{scheme}://{'/'.join(parts[:i])}", where.options)
        if above.isfile("zarr.json"):
            return above
    return None


def check_output(where: Location, kind: str, *, replace: bool, option: str) -> str:
    owner = enclosing_store(where)
    if owner is not None:
        raise OutputError(f"{option} {where} is inside the zarr store {owner}; choose a URL outside it")
    check_writable(where, option)
    there = describe(where)
    if there is None:
        return str(where)
    if there == kind:
        if replace or kind in (CURVE, PATCH):
            return str(where)
        raise OutputError(f"{option} {where} already holds {kind}; pass --overwrite to replace it "
                          "(it is kept until the new one is complete)")
    raise OutputError(f"{option} {where} holds {there}, not {kind}; refusing to overwrite it: choose another URL")


def check_writable(where: Location, option: str) -> None:
    """Put and delete one small object beside ``where``: credentials and bucket checked before any work."""
    probe = where.sibling(f".probekit-write-test-{uuid.uuid4().hex[:12]}")
    try:
        probe.fs.pipe_file(probe.root, b"")
        probe.fs.rm(probe.root)
    except (OSError, PermissionError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UnwritableError(f"{option} {where}: cannot write there ({type(exc).__name__}: {first})") from None
    except Exception as exc:  # noqa: BLE001 - a backend's own error type (botocore, google.auth)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UnwritableError(f"{option} {where}: cannot write there ({type(exc).__name__}: {first})") from None


def _swap_marker(where: Location) -> Location:
    return where.sibling(f".{where.name}{SWAP}")


def _siblings(where: Location) -> list[Location]:
    """The hidden ``-new-`` siblings of ``where`` (half-built or complete replacements)."""
    parent = where.parent
    parent.refresh()
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in parent.fs.ls(parent.root, detail=False)]
    except FileNotFoundError:
        return []
    return [where.sibling(n) for n in names if n.startswith(f".{where.name}{NEW}")]


def clear_leftovers(where: Location) -> None:
    """Finish a swap a killed run began (its marker is there), else delete half-built siblings.
    Call under the store's writer lock."""
    marker = _swap_marker(where)
    if marker.isfile():
        stage = where.sibling(json.loads(marker.fs.cat_file(marker.root))["stage"])
        swap_in(stage, where)
    for sibling in _siblings(where):
        sibling.remove()


@contextlib.contextmanager
def replacing(where: Location) -> Iterator[str]:
    """Build beside ``where`` (yields the sibling URL) and copy it into place on success."""
    clear_leftovers(where)
    stage = where.sibling(f".{where.name}{NEW}{uuid.uuid4().hex[:12]}")
    try:
        yield stage.url
    except BaseException:
        stage.remove()
        raise
    swap_in(stage, where)


def swap_in(stage: Location, where: Location) -> None:
    """Replace ``where`` by ``stage`` (idempotent: rerun after a kill, it ends the same)."""
    marker = _swap_marker(where)
    marker.fs.pipe_file(marker.root, json.dumps({"stage": stage.name}).encode())
    where.remove()
    keys = stage.find()
    first = [k for k in keys if k != "zarr.json"]
    fs = stage.fs
    if first:
        fs.copy([stage.key(k) for k in first], [where.key(k) for k in first])
    if "zarr.json" in keys:
        fs.copy(stage.key("zarr.json"), where.key("zarr.json"))  # the commit point: now a store again
    stage.remove()
    marker.remove()
    where.refresh()


@contextlib.contextmanager
def made_here(where: Location, keep: Callable[[], bool]) -> Iterator[None]:
    """If the block fails, delete what it wrote under an absent prefix unless ``keep()``."""
    absent = not where.find() and not where.isfile()
    try:
        yield
    except BaseException:
        if absent and not keep():
            where.remove()
        raise
