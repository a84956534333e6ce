"""Conformance checks of a hypothesis class (the ``probekit_register_hypotheses`` contract).

:func:`yield_hypothesis_checks` yields the named checks; :func:`check_hypothesis` runs them all.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from probekit.errors import StoreError
from probekit.store import schema
from probekit.testing.base import (Check, assert_same, ensure, iter_named, json_able, raises_probekit_error,
                                   run_checks)

if TYPE_CHECKING:
    import xarray as xr


class HypothesisCase:
    """The hypothesis under test and its store, built lazily and shared by its checks."""

    def __init__(self, hyp_cls: type, ds, task, options: dict | None, n: int, seed: int, name: str | None,
                 unsupported: Iterable["xr.Dataset"], rtol: float, atol: float):
        self.hyp_cls, self._ds, self.task, self.options = hyp_cls, ds, task, dict(options or {})
        self.n, self.seed, self.name, self.unsupported = n, seed, name, list(unsupported)
        self.rtol, self.atol = rtol, atol

    def fresh(self):
        """A new instance with the options (``probekit probe -o``)."""
        return self.hyp_cls(**self.options)

    @cached_property
    def ds(self) -> "xr.Dataset":
        ds = self._ds
        if ds is None:
            ensure(self.task is not None, "pass a store Dataset (ds=...) or a task to generate one (task=...)")
            return self.task.generate(self.n, self.seed)
        if isinstance(ds, (str, Path)):
            from probekit.store.zarr_store import Store

            return Store.open(ds).dataset()
        return ds

    @cached_property
    def before(self) -> "xr.Dataset":
        return self.ds.copy(deep=True).load()

    @cached_property
    def targets(self) -> "xr.Dataset":
        self.before  # noqa: B018 - the snapshot comes first: store_unchanged compares with it
        return self.fresh().targets(self.ds)

    @property
    def can_predict(self) -> bool:
        """Whether the class implements ``predict`` and a task gives its inputs (yields the predict checks)."""
        from probekit.targets.hypothesis import Hypothesis

        predict = getattr(self.hyp_cls, "predict", None)
        return self.task is not None and predict is not None and predict is not Hypothesis.predict

    @cached_property
    def predicts(self) -> bool:
        """Whether an instance says it predicts (``can_predict``; options may turn it off)."""
        return bool(getattr(self.fresh(), "can_predict", False))

    @cached_property
    def fitted(self):
        hyp = self.fresh()
        ensure(hyp.fit(self.ds) is hyp, "fit(ds) must return self")
        return hyp

    @cached_property
    def inputs(self):
        import torch

        io = self.task.io
        inputs = torch.as_tensor(np.asarray(self.ds[io.input_var].values[:4]))
        return inputs.double() if io.kind == "continuous" else inputs.long()


def _name(case: HypothesisCase) -> None:
    cls = case.hyp_cls
    ensure(isinstance(getattr(cls, "name", None), str) and cls.name, "set a non-empty class attribute `name`")
    if case.name is not None:
        ensure(cls.name == case.name, f"registered as {case.name!r} but its `name` is {cls.name!r}")


def _requires(case: HypothesisCase) -> None:
    requires = getattr(case.hyp_cls, "requires", None)
    ensure(isinstance(requires, tuple) and all(isinstance(r, str) for r in requires),
           f"`requires` must be a tuple of variable names, got {requires!r}")


def _options_json(case: HypothesisCase) -> None:
    json_able(case.options, "options")


def _fitted_before_fit(case: HypothesisCase) -> None:
    try:
        fitted = case.fresh().fitted()
    except Exception as exc:  # noqa: BLE001 - reported with what to do
        raise AssertionError(f"fitted() raised {type(exc).__name__}: {exc} before fit() was called; targets() records "
                             "fitted() with every result, so return {} (or the defaults) until fit() has run, "
                             "e.g. initialise the fitted state in __init__") from None
    ensure(isinstance(fitted, dict), f"fitted() must return a dict, got {type(fitted).__name__}")
    json_able(fitted, "fitted() before fit()")


def _targets_dataset(case: HypothesisCase) -> None:
    import xarray as xr

    out = case.targets
    ensure(isinstance(out, xr.Dataset), f"targets() must return an xarray Dataset, got {type(out).__name__}")


def _store_unchanged(case: HypothesisCase) -> None:
    import xarray as xr

    case.targets  # noqa: B018
    xr.testing.assert_identical(case.ds, case.before)  # a hypothesis reads the store, never changes it


def _each_target(case: HypothesisCase):
    """``(name, variable, mask name, mask or None)`` of every target."""
    from probekit.targets.hypothesis import MASK_SUFFIX, target_names

    out = case.targets
    names = target_names(out)
    ensure(names, "targets() returned no targets")
    for t in names:
        mask_name = out[t].attrs.get("mask", t + MASK_SUFFIX)
        yield t, out[t], mask_name, (out[mask_name] if mask_name in out else None)


def _targets_aligned(case: HypothesisCase) -> None:
    n_samples, n_pos = case.ds.sizes[schema.SAMPLE], case.ds.sizes[schema.POS]
    for t, var, mask_name, mask in _each_target(case):
        label = f"target {t!r}"
        ensure(var.dims == (schema.SAMPLE, schema.POS, f"{t}_dim"), f"{label} has dims {var.dims}, "
               f"expected (sample, pos, {t}_dim)")
        ensure(var.shape[:2] == (n_samples, n_pos), f"{label} has shape {var.shape}, store has "
               f"({n_samples}, {n_pos}, ...)")
        ensure(mask is not None, f"{label} has no mask variable {mask_name!r}")
        ensure(mask.dims == (schema.SAMPLE, schema.POS) and mask.dtype == bool,
               f"mask of {label} must be bool (sample, pos), got {mask.dtype} {mask.dims}")


def _targets_defined(case: HypothesisCase) -> None:
    for t, var, mask_name, mask in _each_target(case):
        label = f"target {t!r}"
        ensure(mask is not None, f"{label} has no mask variable {mask_name!r}")
        ensure(bool(mask.values.any()), f"{label} is defined at no position")
        ensure(np.isfinite(var.values[mask.values]).all(), f"{label} has NaN or inf where its mask says defined")


def _target_attributes(case: HypothesisCase) -> None:
    from probekit.targets.hypothesis import TARGET_KINDS

    for t, var, _mask_name, _mask in _each_target(case):
        label = f"target {t!r}"
        ensure(var.attrs.get("kind") in TARGET_KINDS, f"{label} has kind {var.attrs.get('kind')!r}; "
               f"choose from {TARGET_KINDS}")
        ensure(isinstance(var.attrs.get("description"), str) and var.attrs["description"],
               f"{label} needs a description")
        if "expected_layer" in var.attrs:
            layer = var.attrs["expected_layer"]
            ensure(isinstance(layer, (int, np.integer)) and layer >= 0,
                   f"{label}: expected_layer must be an int >= 0, got {layer!r}")


def _targets_recorded(case: HypothesisCase) -> None:
    out = case.targets
    ensure(out.attrs.get("hypothesis") == case.hyp_cls.name, "targets() must come from Hypothesis.targets "
           "(which records the hypothesis name, options and fitted hyperparameters)")
    json_able(out.attrs.get("fitted"), "fitted()")


def _deterministic(case: HypothesisCase) -> None:
    out, again = case.targets, case.fresh().targets(case.ds)  # a fresh instance, the same store
    for v in out.data_vars:
        assert_same(out[v].values, again[v].values, f"determinism ({v!r} from two fresh instances)",
                    case.rtol, case.atol)


def _fewer_samples(case: HypothesisCase) -> None:
    n_samples = case.ds.sizes[schema.SAMPLE]
    half = max(2, n_samples // 2)  # the sample count is the store's, not a constant
    sub = case.fresh().targets(case.ds.isel({schema.SAMPLE: slice(0, half)}))
    ensure(sub.sizes[schema.SAMPLE] == min(half, n_samples),
           "targets of a store with fewer samples have the wrong number of samples")


def _refuses_missing_variables(case: HypothesisCase) -> None:
    for var_name in case.hyp_cls.requires:
        if var_name in case.ds.data_vars:
            stripped = case.ds.drop_vars(var_name)
            err = raises_probekit_error(lambda s=stripped: case.fresh().targets(s),
                                        f"a store without required variable {var_name!r}")
            ensure(isinstance(err, StoreError), f"a store without {var_name!r} must raise StoreError "
                   f"(Hypothesis.check does this from `requires`), got {type(err).__name__}")


def _refuses_unsupported(case: HypothesisCase) -> None:
    for i, bad in enumerate(case.unsupported):
        raises_probekit_error(lambda b=bad: case.fresh().targets(b), f"unsupported store #{i}")


def _fit_returns_self(case: HypothesisCase) -> None:
    if not case.predicts:
        return
    json_able(case.fitted.fitted(), "fitted()")


def _predict_shape(case: HypothesisCase) -> None:
    import torch

    if not case.predicts:
        return
    io, inputs = case.task.io, case.inputs
    pred = case.fitted.predict(inputs)
    ensure(isinstance(pred, torch.Tensor), f"predict() must return a torch tensor, got {type(pred).__name__}")
    expected = (inputs.shape[0], io.seq_len, io.d_out)
    ensure(tuple(pred.shape) == expected, f"predict() must return [batch, pos, d_out] = {expected}, "
                                          f"got {tuple(pred.shape)}")
    ensure(bool(torch.isfinite(pred).all()), "predict() returned NaN or inf")


def _predict_deterministic(case: HypothesisCase) -> None:
    if not case.predicts:
        return
    hyp, inputs = case.fitted, case.inputs
    assert_same(hyp.predict(inputs).detach().numpy(), hyp.predict(inputs).detach().numpy(), "predict() twice",
                case.rtol, case.atol)


CLASS = (("name", _name), ("requires", _requires), ("options_json", _options_json),
         ("fitted_before_fit", _fitted_before_fit))
TARGETS = (("targets_dataset", _targets_dataset), ("store_unchanged", _store_unchanged),
           ("targets_aligned", _targets_aligned), ("targets_defined", _targets_defined),
           ("target_attributes", _target_attributes), ("targets_recorded", _targets_recorded),
           ("deterministic", _deterministic), ("fewer_samples", _fewer_samples),
           ("refuses_missing_variables", _refuses_missing_variables))
PREDICT = (("fit_returns_self", _fit_returns_self), ("predict_shape", _predict_shape),
           ("predict_deterministic", _predict_deterministic))


def _case_checks(case: HypothesisCase):
    chosen = [*CLASS, *TARGETS]
    if case.unsupported:
        chosen.append(("refuses_unsupported", _refuses_unsupported))
    if case.can_predict:  # the behavioural lens: fit / predict on the task's model inputs
        chosen += PREDICT
    for name, func in chosen:
        yield name, lambda f=func: f(case)


def yield_hypothesis_checks(hyp_cls: type, ds: "xr.Dataset | str | Path | None" = None, *, task=None,
                            options: dict | None = None, n: int = 32, seed: int = 0, name: str | None = None,
                            unsupported: Iterable["xr.Dataset"] = (), rtol: float = 1e-7, atol: float = 1e-10,
                            case: HypothesisCase | None = None) -> Iterator[tuple[str, Check]]:
    """The named checks of a hypothesis class, ``(name, check)`` in order (arguments:
    :func:`check_hypothesis`). ``fit`` / ``predict`` checks come only for a hypothesis with
    ``predict`` and a ``task``; ``refuses_unsupported`` only with ``unsupported`` stores."""
    case = case or HypothesisCase(hyp_cls, ds, task, options, n, seed, name, unsupported, rtol, atol)
    label = str(getattr(hyp_cls, "name", None) or getattr(hyp_cls, "__name__", "hypothesis"))
    yield from iter_named(f"hypothesis {getattr(hyp_cls, 'name', hyp_cls)!r}", label, _case_checks(case))


def check_hypothesis(hyp_cls: type, ds: "xr.Dataset | str | Path | None" = None, *, task=None,
                     options: dict | None = None, n: int = 32, seed: int = 0, name: str | None = None,
                     unsupported: Iterable["xr.Dataset"] = (), rtol: float = 1e-7, atol: float = 1e-10) -> "xr.Dataset":
    """Check a hypothesis class against the hypothesis contract; return its targets Dataset.

    :param hyp_cls: the class registered through ``probekit_register_hypotheses``.
    :param ds: a store's Dataset, or a store's path, with what the hypothesis requires;
        default: ``task.generate(n, seed)`` (a hypothesis reads task variables, which a
        store holds exactly as the task generated them).
    :param task: a task instance: supplies ``ds`` when it is not given, and the model-input
        layout (``task.io``) for checking ``predict`` when the hypothesis has one.
    :param options: hypothesis options (``hyp_cls(**options)``, as ``probekit probe -o``).
    :param name: the name it is registered under, if it must equal ``hyp_cls.name``.
    :param unsupported: Datasets the hypothesis cannot use (e.g. another task's store): each
        must be refused with a one-line probekit error, not a crash.
    :param rtol, atol: tolerance of the determinism check (two fresh instances, same store).

    Runs every check of :func:`yield_hypothesis_checks`; the first that fails raises
    ``AssertionError`` naming it (``check 'targets_aligned' failed: hypothesis 'drift': ...``).
    """
    case = HypothesisCase(hyp_cls, ds, task, options, n, seed, name, unsupported, rtol, atol)
    run_checks(yield_hypothesis_checks(hyp_cls, case=case))
    return case.targets
