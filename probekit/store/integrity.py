"""Integrity that zarr does not give: every chunk a store should hold is there and decodes.

zarr reads a missing chunk file as the fill value, so a store with one deleted chunk would
probe as zeros with no error. probekit knows which chunks must exist: a group written block
by block (the root, ``random_init``) records the sample blocks it finished in its manifest
(``blocks_done``), and every chunk of a finished block of its sites and model outputs is on
disk. Arrays written with the crc32c codec (``docs/store-spec.md``) also detect bit rot and
truncation whenever a chunk is read.

Two entry points, neither prints:

* :func:`check_chunks` -- before a probe: lists the chunk files of a group's block-written
  arrays (reads no data) and raises :class:`StoreError` naming the first missing one;
* :func:`verify_store` -- ``probekit verify``: parses every ``zarr.json``, reads every chunk
  of every array of every group, checks the manifests, and returns plain records.

:func:`read_error` turns a failed chunk read into a :class:`StoreError` naming what was read.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator

from probekit.store import schema
from probekit.store.location import Location
from probekit.errors import StoreError

OK, INCOMPLETE, DAMAGED = "ok", "incomplete", "damaged"
OUTPUT_VARS = (schema.OUTPUT_VAR, schema.TOPK_VALUES_VAR, schema.TOPK_INDICES_VAR)
METADATA = "zarr.json"


def damaged(path, what: str) -> StoreError:
    """The one-line error for a damaged store: what is wrong, and what to run."""
    return StoreError(f"{path}: {what}; the store is damaged: run probekit verify {path}")


# -- the manifest --------------------------------------------------------------------------


def manifest_units(raw) -> set:
    """The units of a manifest attribute (sample-block ints, or ``(checkpoint, block)`` pairs
    stored as ``[c, b]``); raises ``ValueError`` naming the first malformed entry."""
    if not isinstance(raw, list):
        raise ValueError(f"{schema.MANIFEST_ATTR} is a {type(raw).__name__}, not a list")
    units = set()
    for u in raw:
        if _is_index(u):
            units.add(u)
        elif isinstance(u, list) and len(u) == 2 and all(_is_index(i) for i in u):
            units.add(tuple(u))
        else:
            raise ValueError(f"{schema.MANIFEST_ATTR} holds {json.dumps(u)[:40]}, "
                             "not a sample block or a [checkpoint, block] pair")
    return units


def _is_index(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and i >= 0


def expected_units(attrs: dict) -> set | None:
    """Every unit a block-written group will hold once complete (None if ``attrs`` lack the sizes)."""
    n, block = attrs.get("n_samples"), attrs.get(schema.BLOCK_ATTR)
    if not (_is_index(n) and _is_index(block) and block):
        return None
    blocks = range(-(-n // block))
    if schema.N_CHECKPOINTS_ATTR in attrs:
        return set(itertools.product(range(int(attrs[schema.N_CHECKPOINTS_ATTR])), blocks))
    return set(blocks)


def _unit_name(unit) -> str:
    return f"sample block {unit[1]} at checkpoint {unit[0]}" if isinstance(unit, tuple) else f"sample block {unit}"


def block_variables(attrs: dict, arrays) -> list[str]:
    """Variables of a group written sample block by sample block: its sites and model outputs."""
    sites = [s for s in attrs.get("sites", []) if isinstance(s, str)]
    return [*sites, *(v for v in OUTPUT_VARS if v in arrays and v not in sites)]


# -- chunks of one array ------------------------------------------------------------------------


def _listing(root, rel: str) -> tuple[set[str], set[str]]:
    """Relative paths (``/``-separated) of the files and of the directories under an array's
    folder (of an object store: its keys; no directories): one walk or listing, whatever the
    number of chunks."""
    if isinstance(root, Location):
        return set(root.find(rel)), set()
    array_dir = root / rel
    files, dirs = set(), set()
    for dirpath, dirnames, filenames in os.walk(array_dir):
        rel = os.path.relpath(dirpath, array_dir).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        files.update(prefix + f for f in filenames)
        dirs.update(prefix + d for d in dirnames)
    return files, dirs


def _checkpointed(arr) -> bool:
    return tuple(arr.metadata.dimension_names or ())[:1] == (schema.CHECKPOINT,)


def chunk_unit(arr, coords):
    """The manifest unit a chunk belongs to: its sample block, or ``(checkpoint, block)``."""
    return (int(coords[0]), int(coords[1])) if _checkpointed(arr) else int(coords[0])


def describe_chunk(arr, coords) -> str:
    """``random_init/resid layer 2 of sample block 3`` (what a reader would call this chunk)."""
    dims = tuple(arr.metadata.dimension_names or ())
    lead = 1 if _checkpointed(arr) else 0
    what = arr.path
    if len(dims) > lead + 1 and arr.chunks[lead + 1] == 1 and dims[lead + 1] in (schema.LAYER, schema.BLOCK):
        index = int(coords[lead + 1]) + (1 if dims[lead + 1] == schema.BLOCK else 0)  # blocks count from 1
        what += f" {dims[lead + 1]} {index}"
    return f"{what} of {_unit_name(chunk_unit(arr, coords))}"


def has_checksum(arr) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs)


def chunk_states(root, arr) -> Iterator[tuple[tuple, str, str]]:
    """``(coords, key, state)`` of every chunk of ``arr`` in its grid, ``state`` one of ``file``,
    ``missing`` or ``directory`` (keys from zarr's own chunk key encoding). ``root``: the
    store's folder, or the :class:`Location` of a remote store."""
    files, dirs = _listing(root, arr.path)
    per = [s // c for s, c in zip(arr.shards, arr.chunks)] if arr.shards else [1] * len(arr.chunks)
    for coords in itertools.product(*(range(n) for n in arr.cdata_shape)):  # a sharded array: its shard's key
        key = arr.metadata.encode_chunk_key(tuple(c // p for c, p in zip(coords, per)))
        yield coords, key, ("directory" if key in dirs else "file" if key in files else "missing")


def read_chunk(arr, coords) -> str | None:
    """Read one chunk through zarr (which checks its crc32c); None, or why it is unreadable."""
    try:
        arr[tuple(slice(c * k, (c + 1) * k) for c, k in zip(coords, arr.chunks))]  # (an inner chunk if sharded)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to decode is an unreadable chunk
        return reason(exc)
    return None


def reason(exc: BaseException) -> str:
    """A zarr decode error in a few words (the checksum mismatch message carries raw bytes)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if "checksum" in text.lower():
        return "crc32c checksum mismatch"
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def read_error(arr, layer: int, s0: int, s1: int, exc: BaseException) -> StoreError:
    """The error for a failed read of ``arr[s0:s1, layer]`` (a zarr array, or a view with
    ``.arr`` and ``.checkpoint``): names the variable, layer, samples and the store."""
    base = getattr(arr, "arr", arr)
    store = getattr(base.store_path.store, "root", "the store")
    where = f"{base.path} layer {layer} of samples {s0}:{s1}"
    if getattr(arr, "checkpoint", None) is not None:
        where += f" at checkpoint {arr.checkpoint}"
    return damaged(store, f"{where} is unreadable ({reason(exc)})")


# -- before a probe: cheap, reads no data ---------------------------------------------------------


def walk_nodes(root) -> dict[str, tuple[dict | None, str | None]]:
    """Every node under ``root``: ``relative path -> (metadata, None)``, or ``(None, why)`` for
    a ``zarr.json`` that is truncated or garbled, and for a folder that holds chunks or nodes
    but lost its own ``zarr.json``. Chunk folders of readable arrays are not walked (of a
    remote store, a :class:`Location`, every key is listed once)."""
    if isinstance(root, Location):
        return _walk_keys(root)
    nodes, bare = {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel = "" if rel == "." else rel
        if METADATA not in filenames:
            bare.append((rel, "c" in dirnames))
            continue
        nodes[rel] = _parse(Path(dirpath) / METADATA)
        if nodes[rel][0] and nodes[rel][0]["node_type"] == "array":
            dirnames[:] = []  # its chunks are listed per array
    for rel, chunky in bare:
        if chunky or any(n.startswith(rel + "/") for n in nodes if nodes[n][0]):
            nodes[rel] = (None, "missing (what it held is unreachable)")
    return dict(sorted(nodes.items()))


def _walk_keys(root: Location) -> dict[str, tuple[dict | None, str | None]]:
    """:func:`walk_nodes` of an object store, from one listing of its keys."""
    keys = root.find()
    nodes = {}
    for key in keys:
        if key == METADATA or key.endswith("/" + METADATA):
            rel = key[: -len(METADATA)].rstrip("/")
            nodes[rel] = _parse(lambda key=key: root.read_bytes(key))
    arrays = [rel + "/" for rel, (meta, _) in nodes.items() if meta and meta["node_type"] == "array"]
    prefixes = set()
    for key in keys:
        if not any(key.startswith(a) for a in arrays):
            parts = key.split("/")[:-1]
            prefixes.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    for rel in sorted(prefixes - set(nodes)):
        chunky = any(k.startswith(rel + "/c/") for k in keys)
        if chunky or any(n.startswith(rel + "/") for n in nodes if nodes[n][0]):
            nodes[rel] = (None, "missing (what it held is unreachable)")
    return {rel: v for rel, v in sorted(nodes.items()) if not any(rel.startswith(a) for a in arrays)}


def _parse(path) -> tuple[dict | None, str | None]:
    """``path``: a ``zarr.json`` file, or a function that returns its bytes."""
    try:
        meta = json.loads(path() if callable(path) else path.read_bytes())
    except (OSError, ValueError) as exc:
        return None, f"not valid JSON (truncated or garbled?): {str(exc).splitlines()[0][:80]}"
    if not isinstance(meta, dict) or meta.get("node_type") not in ("array", "group"):
        return None, "not zarr v3 metadata (no node_type array or group)"
    return meta, None


def check_chunks(store, group: str | None = None, names=None) -> None:
    """Raise :class:`StoreError` unless every ``zarr.json`` under the group parses, its manifest
    is well formed, every chunk of every finished unit of its block-written arrays is a file,
    and so is every chunk of its other arrays that carry a checksum (written whole); ``names``
    restricts the check to those arrays. Lists files only: cheap even for thousands of chunks."""
    for rel, (_, why) in walk_nodes(_root(store).child(group or "") if store.remote
                                    else store.path / (group or "")).items():
        if why:
            raise damaged(store.path, f"{_file('/'.join(filter(None, [group, rel])))} is {why}")
    attrs = store.attrs(group)
    done = store.blocks_done(group)
    unknown = sorted(done - (expected_units(attrs) or set()), key=str)
    if unknown:
        raise damaged(store.path, f"the manifest of group {group or '/'} lists {_unit_name(unknown[0])}, "
                                  "which the group does not have")
    with warnings.catch_warnings():  # a stray folder in the store is no business of this check
        warnings.filterwarnings("ignore", message=".*not recognized as a component")
        arrays = dict(store.group(group).arrays())
    blockwise = block_variables(attrs, arrays)
    problems = []
    for name in names or [*blockwise, *(a for a in arrays if a not in blockwise)]:
        if name not in arrays:
            problems.append(f"{(group + '/') if group else ''}{name} has no array (zarr.json missing)")
            continue
        arr = arrays[name]
        if name not in blockwise and not has_checksum(arr):
            continue  # written before every chunk was kept: an absent chunk may be the fill value
        for coords, key, state in chunk_states(_root(store), arr):
            if state != "file" and (name not in blockwise or chunk_unit(arr, coords) in done):
                what = describe_chunk(arr, coords) if name in blockwise else arr.path
                problems.append(f"{what} is {'a directory' if state == 'directory' else state} "
                                f"(chunk {arr.path}/{key})")
    if problems:
        more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise damaged(store.path, problems[0] + more)


# -- probekit verify: the fsck of a store -------------------------------------------------------


def verify_store(path, on_progress: Callable[[int, int, str], None] | None = None,
                 storage_options: dict | None = None) -> dict:
    """Check a store throughout; returns ``{"store", "status", "chunks", "problems",
    "incomplete", "rows"}`` where status is ``intact``, ``incomplete`` or ``damaged`` and each row
    is ``{"group", "variable", "chunks", "status", "detail"}``.

    Raises :class:`StoreError` only for a path that is not a probekit store at all.
    """
    where = Location(path, storage_options)
    root = where if where.remote else where.path
    nodes = _nodes(root)
    report = _Report(root)
    for rel, (meta, why) in nodes.items():
        if why:
            report.add(*_split(rel), 0, DAMAGED, f"{_file(rel)} is {why}", [f"{_file(rel)} is {why}"])
    arrays = {}
    for rel, (meta, why) in nodes.items():
        if meta and meta["node_type"] == "array":
            arrays[rel] = _open_array(root, rel, report)
    arrays = {rel: a for rel, a in arrays.items() if a is not None and not _is_marker_array(rel)}
    groups = {rel: meta for rel, (meta, why) in nodes.items() if meta and meta["node_type"] == "group"}
    blockwise = {}
    for rel, meta in groups.items():
        blockwise.update(_manifest(root, rel, meta.get("attributes", {}), arrays, nodes, report))
    total = sum(math.prod(a.cdata_shape) for a in arrays.values())
    done = 0
    for rel, arr in arrays.items():
        done = _verify_array(root, rel, arr, blockwise.get(rel), report, done, total, on_progress)
    return report.result(total)


class _Report:
    """Rows and problems gathered by :func:`verify_store`."""

    def __init__(self, root: Path):
        self.root, self.rows, self.problems, self.incomplete = root, [], [], []

    def add(self, group: str, variable: str, chunks: int, status: str, detail: str,
            problems: list[str] | None = None) -> None:
        """One row; a damaged one also counts as ``problems`` (default: the row, in words)."""
        self.rows.append({"group": group, "variable": variable, "chunks": chunks, "status": status,
                          "detail": detail})
        where = (f"the manifest of {'the root' if group == '/' else group}" if variable == "manifest"
                 else variable if group == "/" else f"{group}/{variable}")
        if status == DAMAGED:
            self.problems += problems or [f"{where}: {detail}"]
        elif status == INCOMPLETE:
            self.incomplete.append(f"{where}: {detail}")

    def result(self, total: int) -> dict:
        status = DAMAGED if self.problems else INCOMPLETE if self.incomplete else "intact"
        order = {"/": ""}
        rows = sorted(self.rows, key=lambda r: (order.get(r["group"], r["group"]), r["variable"] != "manifest"))
        return {"store": str(self.root), "status": status, "chunks": total, "problems": self.problems,
                "incomplete": self.incomplete, "rows": rows}


def _root(store):
    """A store's folder, or the :class:`Location` of a remote one (what the listings take)."""
    return store.location if store.remote else store.path


def _target(root) -> str:
    """What zarr opens for ``root``: the folder's path, or the remote store's ``FsspecStore``."""
    return root.zarr_store() if isinstance(root, Location) else str(root)


def _split(rel: str) -> tuple[str, str]:
    """``random_init/resid`` -> ``("random_init", "resid")``, ``resid`` -> ``("/", "resid")``;
    the root's own row is ``("/", "(root)")``."""
    group, _, name = rel.rpartition("/")
    return (group or "/", name) if rel else ("/", "(root)")


def _file(rel: str) -> str:
    return f"{rel}/{METADATA}" if rel else METADATA


def _nodes(root) -> dict:
    """:func:`walk_nodes` of a probekit store (:class:`StoreError` if ``root`` is not one)."""
    where = root if isinstance(root, Location) else Location(root)
    if not where.exists():
        raise StoreError(f"no store at {root}")
    if not where.isfile(METADATA):
        raise StoreError(f"{root} is not a probekit store (no {METADATA})")
    # unreadable: a damaged store, reported with the rest
    meta, _ = _parse(lambda: where.read_bytes(METADATA)) if where.remote else _parse(root / METADATA)
    if meta is not None and (meta["node_type"] != "group" or "probekit_format" not in meta.get("attributes", {})):
        raise StoreError(f"{root} is a zarr {meta['node_type']} but not a probekit store "
                         "(no probekit_format attribute)")
    return walk_nodes(root)


def _open_array(root: Path, rel: str, report: _Report):
    import zarr

    try:
        return zarr.open_array(store=_target(root), path=rel, mode="r", zarr_format=3)
    except Exception as exc:  # noqa: BLE001 - valid JSON that zarr rejects
        report.add(*_split(rel), 0, DAMAGED, f"{_file(rel)} is not valid array metadata ({reason(exc)})")
        return None


def _is_marker_array(rel: str) -> bool:
    """Whether ``rel`` is a manifest's marker array (checked by the manifest row, not read)."""
    from probekit.store import manifest

    key = f"{manifest.GROUP}/{manifest.ARRAY}"
    return rel == key or rel.endswith("/" + key)


def _manifest(root, rel: str, attrs: dict, arrays: dict, nodes: dict, report: _Report) -> dict:
    """Check a block-written group's manifest (a row of its own); returns ``{array: finished
    units}`` for its block-written arrays (groups without a manifest: ``{}``)."""
    if schema.BLOCK_ATTR not in attrs:
        return {}
    group = rel or "/"
    expected = expected_units(attrs)
    try:
        import zarr

        from probekit.store import manifest

        done = manifest.units(zarr.open_group(_target(root), path=rel, mode="r", use_consolidated=False), attrs)
    except ValueError as exc:
        report.add(group, "manifest", 0, DAMAGED, f"{exc}")
        done = set()
    else:
        if expected is None:
            report.add(group, "manifest", 0, DAMAGED, f"n_samples / {schema.BLOCK_ATTR} attributes are malformed")
        elif done - expected:
            report.add(group, "manifest", 0, DAMAGED, f"lists {_unit_name(sorted(done - expected, key=str)[0])}, "
                                                      "which the group does not have")
        elif done != expected:
            report.add(group, "manifest", 0, INCOMPLETE, f"{len(done)} of {len(expected)} sample blocks cached: "
                                                         "rerun the cache command to resume")
        else:
            report.add(group, "manifest", 0, OK, f"all {len(expected)} sample blocks cached")
    names = {f"{rel}/{n}" if rel else n for n in block_variables(attrs, {a.rpartition('/')[2] for a in arrays
                                                                        if a.rpartition('/')[0] == rel})}
    for name in sorted(names - set(nodes)):  # (a node that is there but unreadable has its own row)
        report.add(group, name.rpartition("/")[2], 0, DAMAGED, "listed in the group's sites but has no array")
    return {name: done for name in names if name in arrays}


def _verify_array(root: Path, rel: str, arr, done: set | None, report: _Report, count: int, total: int,
                  on_progress) -> int:
    """Read every chunk of one array; one row. ``done``: the finished units of a block-written
    array (None for any other array). Returns the running chunk count."""
    problems, pending, absent, n = [], 0, 0, 0
    for coords, key, state in chunk_states(root, arr):
        finished = done is None or chunk_unit(arr, coords) in done
        where = f"chunk {key}" + (f" ({describe_chunk(arr, coords)})" if done is not None else "")
        if state == "directory":
            problems.append(f"{where} is a directory, not a chunk file")
        elif state == "missing":
            if done is not None and not finished:
                pending += 1
            elif done is not None or has_checksum(arr):
                problems.append(f"{where} is missing")
            else:
                absent += 1  # an array written before every chunk was kept: reads as the fill value
        else:
            n += 1
            why = read_chunk(arr, coords)
            if why and finished:
                problems.append(f"{where} is unreadable: {why}")
            elif why:
                pending += 1  # a block the cache had not finished: rewritten when it resumes
        count += 1
        if on_progress:
            on_progress(count, total, rel)
    group, name = _split(rel)
    notes = [f"{absent} chunks absent (read as the fill value)"] if absent else []
    crc = "crc32c ok" if has_checksum(arr) else "no checksum"
    if problems:
        shown = problems[:3] + ([f"{len(problems) - 3} more"] if len(problems) > 3 else [])
        report.add(group, name, n, DAMAGED, "; ".join(shown), [f"{rel}: {p}" for p in problems])
    elif pending:
        report.add(group, name, n, INCOMPLETE, f"{pending} chunks of unfinished blocks not written yet")
    else:
        report.add(group, name, n, OK, ", ".join([crc, *notes]))
    return count

