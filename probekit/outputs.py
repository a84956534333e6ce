"""The one rule for every path a command writes: nothing is lost.

An output path is either absent (or an empty folder), or a thing of the kind the command
makes: a probekit store (``cache``), a probekit toy checkpoint (``train``), an icl curve
(``icl --out``), a figure file (every ``--plot``). Anything else is refused in one line
naming what is there, *before* any work starts. Replacing an output (``--overwrite``)
builds the new one beside the old, in a hidden sibling, and swaps it in only when it is
complete (:func:`replacing`): until then the old output is intact, and a failure removes
only what this command made.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from probekit.errors import ProbekitError, UsageError

STORE = "a probekit store"
CHECKPOINT = "a probekit toy checkpoint"
CURVE = "a probekit icl curve"
PATCH = "a probekit patching result"
FIGURE = "a figure"
REPORT = "a probekit JSON report"
FOLDER = "a folder"

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
KIND_ATTR = "probekit_kind"  # the root attribute of a standalone result store: icl curve, patching
CURVE_KIND_ATTR = KIND_ATTR
CURVE_KIND = "icl-curve"
PATCH_KIND = "patch"
_KINDS = {CURVE_KIND: CURVE, PATCH_KIND: PATCH}
_STAGE = ".probekit-new-"  # hidden siblings: .<name>.probekit-new-<pid> (being built), -old- (being replaced)
_OLD = ".probekit-old-"


class OutputError(UsageError):
    """An output path holds something the command did not make."""


class UnwritableError(ProbekitError):
    """An output path cannot be written (a read-only disk, no permission): a failure, exit 1."""


def describe(path: Path) -> str | None:
    """What is at ``path``, in words (``None`` when nothing is)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link"
    if path.is_file():
        return REPORT if _is_report(path) else f"a file ({path.stat().st_size:,} bytes)"
    if not path.is_dir():
        return "something that is neither a file nor a folder"
    meta = _zarr_meta(path)
    if meta == {}:
        return f"a zarr node whose zarr.json is unreadable (damaged? try: probekit verify {path})"
    if meta is not None:
        if meta.get("node_type") == "array":
            return "a zarr array" + _inside(path)
        attrs = meta.get("attributes") or {}
        if attrs.get(KIND_ATTR) in _KINDS:
            return _KINDS[attrs[KIND_ATTR]]
        if "probekit_format" in attrs:
            return STORE
        return "a zarr group" + (_inside(path) or " (not a probekit store)")
    if _is_checkpoint(path):
        return CHECKPOINT
    entries = sum(1 for _ in path.iterdir())
    return "an empty folder" if entries == 0 else f"a folder of {entries} entr{'y' if entries == 1 else 'ies'}"


def check_output(path, kind: str, *, replace: bool = False, option: str = "--out",
                 storage_options: dict | None = None) -> Path:
    """Refuse ``path`` as the output of a command that makes ``kind``, unless it is absent, an
    empty folder, or already ``kind`` (then ``replace`` must be true, except for figures and
    curves, which a rerun replaces). Also refused: a path inside a zarr store, or under a file.
    Returns the path (an object-store URL, with ``storage_options``: :mod:`probekit.remote_outputs`,
    and returned as given)."""
    remote = _remote(path, storage_options)
    if remote is not None:
        from probekit import remote_outputs

        return remote_outputs.check_output(remote, kind, replace=replace, option=option)
    path = Path(path)
    owner = enclosing_store(path.parent)
    if owner is not None:
        raise OutputError(f"{option} {path} is inside the zarr store {owner}; choose a path outside it")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{option} {path}: {parent} is {describe(parent)}, not a folder")
    if kind == FIGURE and path.suffix.lower() not in FIGURE_SUFFIXES:
        raise OutputError(f"{option} {path}: a figure is written as {', '.join(FIGURE_SUFFIXES)}; "
                          f"{path.suffix or 'no suffix'} is not one")
    check_writable(path, option)
    there = describe(path)
    if there is None or there == "an empty folder" and kind not in (FIGURE, REPORT):
        return path
    if kind == FIGURE and there.startswith("a file"):
        return path  # a figure of an earlier run: replaced
    if kind == FOLDER and path.is_dir() and there not in (STORE, CHECKPOINT, CURVE, PATCH):
        return path  # new files go into it; what it holds is checked file by file
    if there == kind:
        if replace or kind in (CURVE, PATCH, REPORT):  # results of an earlier run are replaced
            return path
        raise OutputError(f"{option} {path} already holds {kind}; pass --overwrite to replace it "
                          "(it is kept until the new one is complete)")
    raise OutputError(f"{option} {path} holds {there}, not {kind}; refusing to overwrite it: choose another path")


def check_writable(path, option: str = "--out", storage_options: dict | None = None) -> None:
    """Refuse, before any work, a path whose nearest existing folder cannot be written (a
    read-only disk, no permission): one file is created there and removed (at a URL: one
    object is put beside it and deleted)."""
    import tempfile

    remote = _remote(path, storage_options)
    if remote is not None:
        from probekit import remote_outputs

        return remote_outputs.check_writable(remote, option)

    path = Path(path)
    where = next((p for p in (path, *path.parents) if p.is_dir()), Path("."))
    try:
        fd, probe = tempfile.mkstemp(prefix=".probekit-write-test-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UnwritableError(f"{option} {path}: cannot write in {where} ({exc.strerror or exc})") from None


def enclosing_store(path: Path) -> Path | None:
    """The nearest folder at or above ``path`` that holds a ``zarr.json`` (``None``: none)."""
    for p in (Path(path), *Path(path).parents):
        if (p / "zarr.json").is_file():
            return p
    return None


@contextlib.contextmanager
def replacing(path) -> Iterator[Path]:
    """Build an output beside ``path`` and swap it in when the block succeeds.

    Yields a hidden sibling ``.<name>.probekit-new-<pid>`` to write into. On success the old
    ``path`` (if any) is moved aside, the new one renamed into place, and the old removed; on
    any failure (an interrupt included) only the sibling is removed and ``path`` is untouched.
    Siblings left by killed runs of earlier processes are cleared first. At a URL (a remote
    :class:`~probekit.store.location.Location`) the sibling is a prefix and the swap a copy
    (:func:`probekit.remote_outputs.replacing`)."""
    remote = _remote(path)
    if remote is not None:
        from probekit import remote_outputs

        with remote_outputs.replacing(remote) as stage:
            yield stage
        return
    path = Path(path)
    clear_leftovers(path)
    stage = path.with_name(f".{path.name}{_STAGE}{os.getpid()}")
    _remove(stage)
    try:
        yield stage
    except BaseException:
        _remove(stage)
        raise
    swap_in(stage, path)


def swap_in(stage: Path, path: Path) -> None:
    """Move ``stage`` to ``path``, replacing what is there with two renames (files: one)."""
    if stage.is_file() or not path.exists():
        os.replace(stage, path)
        return
    old = path.with_name(f".{path.name}{_OLD}{os.getpid()}")
    _remove(old)
    os.replace(path, old)
    try:
        os.replace(stage, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def clear_leftovers(path: Path) -> None:
    """Remove the hidden siblings of ``path`` that killed processes left: half-built outputs
    (``-new-``) and, when ``path`` itself is present, replaced ones (``-old-``). An ``-old-``
    sibling without ``path`` means a swap died between its two renames: it is put back.
    (At a URL: :func:`probekit.remote_outputs.clear_leftovers`.)"""
    remote = _remote(path)
    if remote is not None:
        from probekit import remote_outputs

        return remote_outputs.clear_leftovers(remote)
    path = Path(path)
    if not path.parent.is_dir():
        return
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.probekit-*"):
        rest = sibling.name[len(path.name) + 1:]
        marker = next((m for m in (_STAGE, _OLD) if rest.startswith(m) and rest[len(m):].isdigit()), None)
        if marker is None or _alive(int(rest[len(marker):])):
            continue
        if marker == _OLD and not path.exists():
            os.replace(sibling, path)  # the swap died between its renames: the old output goes back
        else:
            _remove(sibling)


@contextlib.contextmanager
def made_here(path, keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """If the block fails, remove what it made at ``path`` (and the folders made for it),
    unless ``keep()`` says it is worth keeping (e.g. a cache with finished blocks, to resume).
    A failed command leaves nothing half-made: an absent ``path`` is absent again, an empty
    folder is empty again, and anything else that was there is left alone. (At a URL: an
    absent prefix is absent again.)"""
    remote = _remote(path)
    if remote is not None:
        from probekit import remote_outputs

        with remote_outputs.made_here(remote, keep):
            yield
        return
    path = Path(path)
    absent = not path.exists()
    empty = path.is_dir() and not any(path.iterdir())
    if not (absent or empty):
        yield
        return
    new_parents = [p for p in path.parents if not p.exists()]
    try:
        yield
    except BaseException:
        if not keep():
            if absent:
                _remove(path)
            elif path.is_dir():
                for child in path.iterdir():
                    _remove(child)
            for p in new_parents:  # innermost first
                with contextlib.suppress(OSError):
                    p.rmdir()
        raise


def write_text(path, text: str) -> Path:
    """Write a text file at ``path`` atomically (beside it, then renamed into place)."""
    path = Path(path)
    with replacing(path) as stage:
        stage.write_text(text)
    return path


def _remote(path, storage_options: dict | None = None):
    """The remote :class:`~probekit.store.location.Location` of ``path`` (a URL, or a Location
    that is remote), else None (a local path: the rules above)."""
    from probekit.store.location import Location, is_url

    if isinstance(path, Location):
        return path if path.remote else None
    return Location(path, storage_options) if is_url(path) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    from probekit.store.lock import pid_alive  # the writer lock's own liveness test

    return pid == os.getpid() or pid_alive(pid)


def _zarr_meta(path: Path) -> dict | None:
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        out = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}  # present but unreadable
    return out if isinstance(out, dict) and out else {}


def _inside(path: Path) -> str:
    owner = enclosing_store(path.parent)
    return f" inside the zarr store {owner}" if owner else ""


def _is_report(path: Path) -> bool:
    """A JSON report probekit wrote (``patch.json``): an object with its ``plot`` and ``saved`` keys."""
    if path.suffix != ".json" or path.stat().st_size > 2**26:
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"plot", "saved"} <= set(data)


def _is_checkpoint(path: Path) -> bool:
    from probekit.models.toy.checkpoint import CONFIG, FORMAT, WEIGHTS

    try:
        return (path / WEIGHTS).is_file() and json.loads((path / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
