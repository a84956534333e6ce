"""Conformance checks of a model adapter class (the ``probekit_register_models`` contract).

:func:`yield_model_adapter_checks` yields the named checks, filtered by what the adapter
declares in ``capabilities`` (:mod:`probekit.models.capabilities`) and by the arguments
(``valid``, ``bad_rest``, ``random_init``); :func:`check_model_adapter` runs them all.
"""

from __future__ import annotations

import inspect
from functools import cached_property
from typing import Iterator

import numpy as np

from probekit.store import schema
from probekit.testing.base import (Check, assert_same, ensure, iter_named, json_able, raises_probekit_error,
                                   run_checks)

PROVENANCE_KEYS = ("model_spec", "model_hash", "device", "torch_version", "random_init")


def declared(adapter, capability: str) -> bool:
    """Whether ``adapter`` (class or instance) declares ``capability``. An adapter written before
    capabilities were declared (no ``capabilities`` attribute at all) declares none, except that
    its ``prepare`` method is still called, as it was then."""
    from probekit.models.capabilities import has

    cls = adapter if isinstance(adapter, type) else type(adapter)
    if hasattr(cls, "capabilities"):
        return has(cls, capability)
    return capability == "prepare" and callable(getattr(cls, "prepare", None))


class AdapterCase:
    """The adapter under test, loaded lazily and shared by its checks, with its first runs."""

    def __init__(self, adapter_cls: type, rest: str, inputs, valid, bad_rest: str | None, device: str,
                 rtol: float, atol: float, random_init: bool):
        self.adapter_cls, self.rest, self.inputs = adapter_cls, rest, np.asarray(inputs)
        self.valid = None if valid is None else np.asarray(valid, bool)
        self.bad_rest, self.device, self.rtol, self.atol, self.random_init = bad_rest, device, rtol, atol, random_init

    def load(self, random_init: bool):
        adapter = self.adapter_cls.load(self.rest, random_init=random_init, device=self.device)
        if declared(adapter, "prepare"):  # adapters of plain modules learn their sizes from one sample
            adapter.prepare(self.inputs[:1])
        return adapter

    @cached_property
    def adapter(self):
        return self.load(random_init=False)

    @cached_property
    def names(self) -> list[str]:
        return list(self.adapter.sites)

    @cached_property
    def first_run(self):
        acts, out = self.adapter.run(self.inputs, self.names)
        return acts, np.asarray(out)


def _inputs(case: AdapterCase) -> None:
    ensure(case.inputs.ndim >= 2 and case.inputs.shape[0] >= 2, "pass inputs [batch >= 2, pos, ...]")


def _load_signature(case: AdapterCase) -> None:
    cls = case.adapter_cls
    ensure(callable(getattr(cls, "load", None)), "needs a classmethod load(rest, *, random_init, device)")
    params = inspect.signature(cls.load).parameters
    for kw in ("random_init", "device"):
        ensure(kw in params, f"load() must accept the keyword {kw!r}")


def _capabilities_known(case: AdapterCase) -> None:
    from probekit.models.capabilities import CAPABILITIES, capabilities

    unknown = sorted(capabilities(case.adapter_cls) - set(CAPABILITIES))
    ensure(not unknown, f"declares unknown capabilities {unknown}; choose from {', '.join(CAPABILITIES)}")


def _spec(case: AdapterCase) -> None:
    spec = getattr(case.adapter, "spec", None)
    ensure(isinstance(spec, str) and spec.endswith(case.rest),
           f"`spec` must be the full model spec '<scheme>:{case.rest}', got {spec!r}")


def _sites(case: AdapterCase) -> None:
    sites = case.adapter.sites
    ensure(isinstance(sites, dict) and sites, f"`sites` must be a non-empty dict, got {sites!r}")
    for site, n_layers in sites.items():
        ensure(isinstance(site, str) and isinstance(n_layers, (int, np.integer)) and n_layers >= 1,
               f"`sites` maps names to layer counts >= 1; got {site!r}: {n_layers!r}")


def _sizes(case: AdapterCase) -> None:
    for attr in ("d_model", "d_out"):
        value = getattr(case.adapter, attr)
        ensure(isinstance(value, (int, np.integer)) and value >= 1, f"`{attr}` must be an int >= 1, got {value!r}")


def _site_layouts(case: AdapterCase) -> None:
    from probekit.models.adapters import adapter_site_layout

    adapter, names, (acts, _) = case.adapter, case.names, case.first_run
    batch, seq_len = case.inputs.shape[:2]
    ensure(isinstance(acts, dict) and set(acts) == set(names),
           f"run(inputs, sites) must return activations for exactly {names}, got {list(acts)}")
    for site in names:
        dims, shape = adapter_site_layout(adapter, site, seq_len)
        ensure(tuple(dims) in schema.SITE_DIMS, f"site {site!r} has store dims {dims}; choose from {schema.SITE_DIMS}")
        ensure(shape[0] == adapter.sites[site], f"site {site!r} has {shape[0]} layers in its layout but "
                                                f"`sites` says {adapter.sites[site]}")
        a = np.asarray(acts[site])
        ensure(a.shape == (batch, *shape), f"site {site!r}: activations {a.shape}, expected {(batch, *shape)} "
                                           f"({', '.join(dims)})")
        ensure(a.dtype.kind == "f" and np.isfinite(a).all(), f"site {site!r}: activations must be finite floats")


def _outputs(case: AdapterCase) -> None:
    out = case.first_run[1]
    batch, seq_len = case.inputs.shape[:2]
    expected = (batch, seq_len, case.adapter.d_out)
    ensure(out.shape == expected, f"outputs must be [batch, pos, d_out] = {expected}, got {out.shape}")
    ensure(out.dtype.kind == "f" and np.isfinite(out).all(), "outputs must be finite floats")


def _deterministic(case: AdapterCase) -> None:
    (acts, out), tol = case.first_run, (case.rtol, case.atol)
    acts2, out2 = case.adapter.run(case.inputs, case.names)
    for site in case.names:
        assert_same(acts[site], acts2[site], f"determinism (site {site!r}, two runs)", *tol)
    assert_same(out, out2, "determinism (outputs, two runs)", *tol)


def _sites_alone(case: AdapterCase) -> None:
    acts, tol = case.first_run[0], (case.rtol, case.atol)
    for site in case.names:
        alone, _ = case.adapter.run(case.inputs, [site])
        ensure(set(alone) == {site}, f"run(inputs, [{site!r}]) must return only that site")
        assert_same(alone[site], acts[site], f"site {site!r} run alone vs with every site", *tol)


def _batch_independent(case: AdapterCase) -> None:
    (acts, out), tol = case.first_run, (case.rtol, case.atol)
    first, first_out = case.adapter.run(case.inputs[:1], case.names)
    for site in case.names:
        assert_same(first[site], acts[site][:1], f"site {site!r}: sample 0 alone vs in a batch", *tol)
    assert_same(first_out, out[:1], "outputs: sample 0 alone vs in a batch", *tol)


def _refuses_unknown_site(case: AdapterCase) -> None:
    raises_probekit_error(lambda: case.adapter.run(case.inputs, ["no_such_site_"]), "an unknown site")


def _padding(case: AdapterCase) -> None:
    adapter, valid, inputs, tol = case.adapter, case.valid, case.inputs, (case.rtol, case.atol)
    ensure("valid" in inspect.signature(adapter.run).parameters, "valid= given, but run() takes no `valid` mask")
    ensure(valid.shape == inputs.shape[:2] and not valid.all() and valid[:, 0].all(),
           "valid must be bool [batch, pos], True at position 0 and False somewhere")
    acts, out = case.first_run
    padded, padded_out = adapter.run(inputs, case.names, valid=valid)
    for site in case.names:
        a = np.asarray(padded[site])
        if a.ndim == 4:  # (batch, layer, pos, feature): padding is zero, the rest unchanged
            ensure(not np.any(a.transpose(0, 2, 1, 3)[~valid]), f"site {site!r}: padded positions must be 0")
            keep = valid[:, None, :, None] & np.ones(a.shape, bool)
            assert_same(a[keep], np.asarray(acts[site])[keep], f"site {site!r}: valid positions with padding "
                        "vs without", *tol)
    ensure(not np.any(np.asarray(padded_out)[~valid]), "outputs at padded positions must be 0")
    assert_same(np.asarray(padded_out)[valid], out[valid], "outputs: valid positions with padding vs without", *tol)


def _provenance(case: AdapterCase) -> None:
    adapter = case.adapter
    prov = adapter.provenance()
    ensure(isinstance(prov, dict), "provenance() must return a dict")
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    ensure(not missing, f"provenance() lacks {missing} (every store records them)")
    ensure(prov["model_spec"] == adapter.spec, "provenance()['model_spec'] must be `spec`")
    ensure(prov["random_init"] is False, "provenance()['random_init'] must be False for trained weights")
    json_able(prov, "provenance()")


def _random_init(case: AdapterCase) -> None:
    rand = [case.load(random_init=True) for _ in range(2)]
    p0, p1 = rand[0].provenance(), rand[1].provenance()
    ensure(p0.get("random_init") is True, "load(random_init=True): provenance()['random_init'] must be True")
    ensure(p0["model_hash"] == p1["model_hash"], "load(random_init=True) twice gave different weights: "
                                                 "seed the initialisation")
    ensure(p0["model_hash"] != case.adapter.provenance()["model_hash"], "load(random_init=True) gave the trained weights")
    ensure(rand[0].sites == case.adapter.sites, "the random-init model must expose the same sites")


def _refuses_bad_spec(case: AdapterCase) -> None:
    raises_probekit_error(lambda: case.adapter_cls.load(case.bad_rest, random_init=False, device=case.device),
                          f"load({case.bad_rest!r})")


def _tokenizer(case: AdapterCase) -> None:
    ids, valid = case.adapter.tokenize(["the cat sat on the mat", "a dog"])
    ids, valid = np.asarray(ids), np.asarray(valid)
    ensure(ids.ndim == 2 and ids.shape[0] == 2 and ids.dtype.kind in "iu",
           f"tokenize(texts) must return integer ids [batch, pos], got {ids.dtype} {ids.shape}")
    ensure(valid.shape == ids.shape and valid.dtype == bool and valid[:, 0].all() and not valid.all(),
           "tokenize(texts) must return a bool valid mask [batch, pos], True at position 0 and False at the "
           "padding of the shorter text")


def _tensors(case: AdapterCase) -> None:
    import torch

    (acts, out), tol = case.first_run, (case.rtol, case.atol)
    t_acts, t_out = case.adapter.run(case.inputs, case.names, as_tensors=True)
    ensure(isinstance(t_out, torch.Tensor) and all(isinstance(t_acts[s], torch.Tensor) for s in case.names),
           "run(..., as_tensors=True) must return torch tensors (declared 'tensors')")
    for site in case.names:
        assert_same(t_acts[site].float().cpu().numpy(), acts[site], f"site {site!r}: as_tensors=True vs numpy", *tol)
    assert_same(t_out.float().cpu().numpy(), out, "outputs: as_tensors=True vs numpy", *tol)


BASIC = (("inputs", _inputs), ("load_signature", _load_signature), ("capabilities_known", _capabilities_known),
         ("spec", _spec), ("sites", _sites), ("sizes", _sizes), ("site_layouts", _site_layouts),
         ("outputs", _outputs), ("deterministic", _deterministic), ("sites_alone", _sites_alone),
         ("batch_independent", _batch_independent), ("refuses_unknown_site", _refuses_unknown_site))
#: checks of a declared capability: capability -> (name, check)
BY_CAPABILITY = {"tokenizer": ("tokenizer", _tokenizer), "tensors": ("tensors", _tensors)}


def _case_checks(case: AdapterCase):
    chosen = list(BASIC)
    if case.valid is not None:
        chosen.append(("padding", _padding))
    chosen.append(("provenance", _provenance))
    if case.random_init:
        chosen.append(("random_init", _random_init))
    if case.bad_rest is not None:
        chosen.append(("refuses_bad_spec", _refuses_bad_spec))
    chosen += [check for cap, check in BY_CAPABILITY.items() if declared(case.adapter_cls, cap)]
    for name, func in chosen:
        yield name, lambda f=func: f(case)


def yield_model_adapter_checks(adapter_cls: type, rest: str, *, inputs: np.ndarray, valid: np.ndarray | None = None,
                               bad_rest: str | None = None, device: str = "cpu", rtol: float = 1e-4,
                               atol: float = 1e-5, random_init: bool = True,
                               case: AdapterCase | None = None) -> Iterator[tuple[str, Check]]:
    """The named checks of a model adapter class, ``(name, check)`` in order (arguments:
    :func:`check_model_adapter`): ``padding`` with ``valid``, ``random_init`` unless turned off,
    ``refuses_bad_spec`` with ``bad_rest``, and one check per declared capability that has one
    (:data:`BY_CAPABILITY`)."""
    case = case or AdapterCase(adapter_cls, rest, inputs, valid, bad_rest, device, rtol, atol, random_init)
    yield from iter_named(f"model adapter {adapter_cls.__name__}", adapter_cls.__name__, _case_checks(case))


def check_model_adapter(adapter_cls: type, rest: str, *, inputs: np.ndarray, valid: np.ndarray | None = None,
                        bad_rest: str | None = None, device: str = "cpu", rtol: float = 1e-4,
                        atol: float = 1e-5, random_init: bool = True):
    """Check a model adapter class against the adapter contract; return the loaded adapter.

    :param adapter_cls: the class registered through ``probekit_register_models``.
    :param rest: the part of a spec after ``<scheme>:`` (e.g. a checkpoint directory).
    :param inputs: a batch of model inputs ``[batch, pos, ...]`` (at least 2 samples), e.g.
        ``task.generate(4, 0)[task.io.input_var].values``.
    :param valid: for adapters whose ``run`` takes a padding mask: ``bool [batch, pos]``
        with some padding (False) at the end of some rows; checked for zeros there and for
        unchanged values elsewhere (a causal model's valid positions do not see the padding).
    :param bad_rest: a spec rest that cannot load (e.g. a missing path): must raise a probekit error.
    :param rtol, atol: tolerance for comparing two runs (batching may reorder float sums).
    :param random_init: also check ``load(rest, random_init=True)`` (reproducible, not the trained weights).

    Runs every check of :func:`yield_model_adapter_checks`; the first that fails raises
    ``AssertionError`` naming it (``check 'batch_independent' failed: model adapter Leaky: ...``).
    """
    case = AdapterCase(adapter_cls, rest, inputs, valid, bad_rest, device, rtol, atol, random_init)
    run_checks(yield_model_adapter_checks(adapter_cls, rest, inputs=inputs, case=case))
    return case.adapter
