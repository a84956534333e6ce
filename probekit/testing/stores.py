"""Conformance checks of a store (``docs/store-spec.md``).

Each check of :func:`yield_store_checks` lists the problems it finds; :func:`assert_store_valid`
runs them all and raises one ``AssertionError`` listing every problem, each with its check's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from probekit.errors import StoreError
from probekit.store import schema
from probekit.testing.base import Check, named

if TYPE_CHECKING:
    import xarray as xr

RESULT_DIMS = ("condition", "site", "layer", "target")
Finder = Callable[[object], list]


def _groups(store) -> list[str | None]:
    """The root and, when present, the random_init group."""
    return [None, *([schema.RANDOM_INIT_GROUP] if store.has_group(schema.RANDOM_INIT_GROUP) else [])]


def _attributes(store) -> list[str]:
    problems = []
    for group in _groups(store):
        attrs = store.attrs(group)
        needed = ("model_hash", "sites", "dtype", schema.BLOCK_ATTR)
        problems += [f"{group + ': ' if group else ''}missing attribute {a!r}" for a in needed
                     if a not in attrs and (group or a not in schema.REQUIRED_ATTRS)]  # (schema reports the root's)
    return problems


def _site_arrays(store):
    """``(prefix, attrs, site, array)`` of every cached site array, root and random_init."""
    for group in _groups(store):
        attrs, g = store.attrs(group), store.group(group)
        for site in attrs.get("sites", []) if attrs.get(schema.BLOCK_ATTR) else []:
            if site in g.array_keys():  # (validate_store reports a missing one for the root)
                yield f"{group}: " if group else "", attrs, site, g[site]


def _chunking(store) -> list[str]:
    problems = []
    for where, attrs, site, arr in _site_arrays(store):
        dims = tuple(arr.metadata.dimension_names or ())
        lead = 1 if dims[:1] == (schema.CHECKPOINT,) else 0
        expected = (*(1,) * lead, min(attrs[schema.BLOCK_ATTR], arr.shape[lead]), 1, *arr.shape[lead + 2:])
        if tuple(arr.chunks) != expected:
            problems.append(f"{where}site {site!r} is chunked {tuple(arr.chunks)}; the spec asks for one layer of one "
                            f"sample block, {expected}")
    return problems


def _dtypes(store) -> list[str]:
    return [f"{where}site {site!r} is {arr.dtype} but attrs say dtype {attrs.get('dtype')!r}"
            for where, attrs, site, arr in _site_arrays(store) if str(arr.dtype) != attrs.get("dtype")]


def _outputs_layout(store) -> list[str]:
    problems, out = [], schema.OUTPUT_VAR
    for group in _groups(store):
        g = store.group(group)
        if out in g.array_keys():
            dims = schema.site_dims(g[out].metadata.dimension_names or ())
            if dims != (schema.SAMPLE, schema.POS, schema.OUTPUT_FEATURE):
                problems.append(f"{group + ': ' if group else ''}{out!r} has dims {dims}, expected "
                                "(sample, pos, out_feature)")
    return problems


def _complete(store) -> list[str]:
    return [f"{group + ': ' if group else ''}incomplete: {len(store.blocks_done(group))} units in the manifest "
            "(probekit_manifest); rerun the cache command to finish it"
            for group in _groups(store) if not store.is_complete(group)]


def _random_init_group(store) -> list[str]:
    if not store.has_group(schema.RANDOM_INIT_GROUP):
        return []
    problems, root, rand = [], store.dataset(), store.dataset(schema.RANDOM_INIT_GROUP)
    for site in store.attrs().get("sites", []):
        if site not in rand:
            problems.append(f"random_init: no site {site!r}")
        elif site in root and rand[site].shape != root[site].shape:
            problems.append(f"random_init: site {site!r} has shape {rand[site].shape}, root {root[site].shape}")
    return problems


def _probe_results(store) -> list[str]:
    problems = []
    for key in store.results():
        res = store.dataset(key)
        if "r2" not in res:
            problems.append(f"{key}: no 'r2' variable")
            continue
        if schema.site_dims(res["r2"].dims) != RESULT_DIMS:
            problems.append(f"{key}: r2 has dims {res['r2'].dims}, expected {RESULT_DIMS} (after an optional "
                            "checkpoint)")
        hyp = key.split("/")[1]
        if res.attrs.get("hypothesis") != hyp:
            problems.append(f"{key}: attrs['hypothesis'] is {res.attrs.get('hypothesis')!r}, the group says {hyp!r}")
        problems += [f"{key}: missing attribute {a!r}" for a in ("settings", "probekit_version", "created")
                     if a not in res.attrs]
    return problems


#: the checks that only the files show, in order: name -> problems(store)
FILE_CHECKS: dict[str, Finder] = {
    "group_attributes": _attributes, "chunking": _chunking, "dtypes": _dtypes, "outputs_layout": _outputs_layout,
    "complete": _complete, "random_init_group": _random_init_group, "probe_results": _probe_results,
}


def _open(store):
    from probekit.store.zarr_store import Store

    try:
        return Store.open(store)
    except StoreError as exc:
        raise AssertionError(str(exc)) from None


def _finders(store: "str | Path | xr.Dataset", complete: bool) -> Iterator[tuple[str, Callable[[], list[str]]]]:
    """``(check name, problems())`` for each store check: ``schema``
    (:func:`probekit.store.schema.validate_store`) and, for a path, the :data:`FILE_CHECKS`
    (``complete`` only when asked for); the store is opened once, on first use."""
    import xarray as xr

    if isinstance(store, xr.Dataset):
        yield "schema", lambda: schema.validate_store(store)
        return
    opened: list = []

    def get():
        if not opened:
            opened.append(_open(store))
        return opened[0]

    yield "schema", lambda: schema.validate_store(get().dataset())
    for name, find in FILE_CHECKS.items():
        if name != "complete" or complete:
            yield name, lambda find=find: find(get())


def yield_store_checks(store: "str | Path | xr.Dataset", *, complete: bool = True) -> Iterator[tuple[str, Check]]:
    """The named checks of a store, ``(name, check)``: ``schema`` and, for a path, the :data:`FILE_CHECKS`."""
    import xarray as xr

    subject = "dataset" if isinstance(store, xr.Dataset) else str(store)
    label = "dataset" if isinstance(store, xr.Dataset) else Path(store).name
    for name, problems in _finders(store, complete):
        def run(problems=problems) -> None:
            found = problems()
            if found:
                raise AssertionError("\n  ".join(found))

        yield name, named(name, subject, label, run)


def assert_store_valid(store: "str | Path | xr.Dataset", *, complete: bool = True) -> None:
    """Assert that ``store`` (a path, or a store's root Dataset) follows ``docs/store-spec.md``.

    Runs :func:`probekit.store.schema.validate_store` and, for a path, also checks what only the
    files show: activation chunks of one layer of one sample block, dtypes as recorded,
    the manifest (``complete``: every sample block written), the ``random_init`` group and
    every ``probes/<hypothesis>/<id>`` results group. Raises ``AssertionError`` listing every
    problem found, each with the name of the check that found it.
    """
    problems = [f"{p} (check {name!r})" for name, found in _finders(store, complete) for p in found()]
    if problems:
        import xarray as xr

        raise AssertionError(f"{store if not isinstance(store, xr.Dataset) else 'dataset'} is not a valid probekit "
                             "store:\n  " + "\n  ".join(problems))
