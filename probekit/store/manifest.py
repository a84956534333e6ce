"""The manifest of a block-written group: which units (sample blocks, or ``(checkpoint, block)``
pairs) are finished, at O(1) per unit.

Each finished unit is one small object, the chunk of a tiny zarr array
``<group>/probekit_manifest/done`` (one ``uint8`` element per unit, one chunk per element):
marking unit ``b`` writes the single object ``probekit_manifest/done/c/<b>`` (``c/<ckpt>/<b>``
in a checkpoint store), never rewrites what is there, and goes through zarr's store API, so it
works the same on a local folder and on an object store. The finished units are read back by
listing that prefix (one listing, no data read). Stores written before this layout keep their
units in the group attribute ``blocks_done`` (a JSON list); both are read, their union counts.
"""

from __future__ import annotations

import threading

import numpy as np

from probekit.store import schema

GROUP = "probekit_manifest"  # a sub-group of the block-written group (zarr readers skip it)
ARRAY = "done"
_CREATING = threading.Lock()


PART_SUFFIX = ".partial"  # zarr (>= 3.1.3) writes each key to <key>.<uuid>.partial, then renames it into place

def grid(attrs: dict) -> tuple[int, ...] | None:
    """The shape of the units grid: ``(n_blocks,)`` or ``(n_checkpoints, n_blocks)``."""
    n, block = attrs.get("n_samples"), attrs.get(schema.BLOCK_ATTR)
    if not (isinstance(n, int) and isinstance(block, int) and block > 0):
        return None
    blocks = -(-n // block)
    ckpts = attrs.get(schema.N_CHECKPOINTS_ATTR)
    return (int(ckpts), blocks) if ckpts is not None else (blocks,)


def _prefix(node) -> str:
    return "/".join(filter(None, [node.path, GROUP, ARRAY, "c"])) + "/"


def mark(node, attrs: dict, unit) -> None:
    """Record ``unit`` as finished in the group ``node`` (a writable zarr group): one object."""
    from probekit.errors import StoreError

    shape = grid(attrs)
    if shape is None:
        raise StoreError(f"group {node.path or '/'} lacks n_samples / {schema.BLOCK_ATTR}: it has no manifest")
    index = unit if isinstance(unit, tuple) else (unit,)
    if len(index) != len(shape):
        raise StoreError(f"unit {unit} does not fit the manifest of group {node.path or '/'} (shape {shape})")
    ensure(node, attrs)[index] = np.uint8(1)


def ensure(node, attrs: dict):
    """The manifest array of the group ``node``, created if absent. A cluster's client calls it
    before its workers mark blocks; should two writers still race to create it, the loser opens
    what the winner made (the same metadata)."""
    from zarr.errors import ContainsArrayError, ContainsGroupError

    shape = grid(attrs)
    with _CREATING:  # the writer threads of one process
        try:
            return node[f"{GROUP}/{ARRAY}"]
        except KeyError:
            pass
        try:
            return node.require_group(GROUP).create_array(
                ARRAY, shape=shape, chunks=(1,) * len(shape), dtype="uint8", fill_value=0, compressors=None,
                dimension_names=("checkpoint", "unit")[2 - len(shape):],
                attributes={"description": "one object per finished sample block (probekit's resume manifest)"})
        except (ContainsArrayError, ContainsGroupError):  # another process made it meanwhile
            import zarr  # (opened by its own metadata: ``node`` may list what was consolidated before)

            return zarr.open_array(node.store, path="/".join(filter(None, [node.path, GROUP, ARRAY])), mode="r+")


def marked(node) -> set:
    """The units marked finished in the group ``node`` (raises ``ValueError`` for a marker whose
    key is not a unit: the manifest is garbled)."""
    from zarr.core.sync import sync

    prefix = _prefix(node)

    async def listing():
        return [key async for key in node.store.list_prefix(prefix)]

    units = set()
    for key in sync(listing()):
        if key.endswith(PART_SUFFIX):  # a marker write a kill interrupted: that unit is not finished
            continue
        parts = key[len(prefix):].split("/")
        if not all(p.isdigit() for p in parts) or len(parts) not in (1, 2):
            raise ValueError(f"{GROUP} holds the object {key[len(prefix):][:40]!r}, not a sample block "
                             "or a checkpoint/block pair")
        units.add(int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1])))
    return units


def units(node, attrs: dict) -> set:
    """Every finished unit of the group: its markers and, for older stores, the ``blocks_done`` list."""
    from probekit.store.integrity import manifest_units

    legacy = manifest_units(attrs[schema.MANIFEST_ATTR]) if schema.MANIFEST_ATTR in attrs else set()
    return legacy | marked(node)
