"""Conformance checks for plugin authors: run the same checks as probekit's built-ins.

In the spirit of scikit-learn's ``check_estimator``: each ``check_*`` function builds the
object, exercises the contract of ``probekit/hookspecs.py`` and raises ``AssertionError``
saying what is wrong (the first problem found). ::

    from probekit.testing.checks import assert_store_valid, check_hypothesis, check_model_adapter, check_task

    def test_my_task():
        check_task(MyTask, {"dim": 3})

    def test_my_hypothesis():
        check_hypothesis(MyHypothesis, task=MyTask(dim=3))

The checks, in short (docs/plugins.md says more):

* :func:`check_task` — ``name``; a frozen ``Params`` dataclass whose defaults construct;
  unknown parameters refused with :class:`~probekit.errors.UsageError`; ``io`` a
  :class:`~probekit.tasks.ModelIO` matching what ``generate`` returns (dims, sizes,
  dtypes, token ranges, the loss mask); finite values; provenance attributes; the same
  seed gives the same Dataset, another seed another one.
* :func:`check_hypothesis` — ``name`` and ``requires``; a targets Dataset aligned on
  ``(sample, pos)`` with a boolean mask per target, ``kind``, ``description`` and
  ``expected_layer`` attributes and finite values where defined; deterministic; the
  store left unchanged; a store lacking a required variable (or any store passed as
  ``unsupported``) refused with a one-line probekit error, not a crash; ``fit`` /
  ``predict`` shapes when it predicts.
* :func:`check_model_adapter` — ``load``; ``sites``, ``d_model``, ``d_out``; every site's
  shape in its store layout; outputs ``[batch, pos, d_out]``; finite; deterministic; the
  same numbers for any subset of sites or of the batch; padding masks (``valid``) zero the
  padded positions and leave the rest unchanged; unknown sites and bad specs refused with
  probekit errors; JSON provenance with the attributes every store needs; random
  initialisation reproducible under its seed.
* :func:`assert_store_valid` — ``probekit.store.schema.validate_store`` plus the layout rules of
  ``docs/store-spec.md`` (chunking, dtypes, manifest, the ``random_init`` group, probe results).

Importing this module is light (numpy and probekit's own light modules); torch, zarr and
xarray load inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from probekit.store import schema
from probekit.errors import PluginError, ProbekitError, StoreError, UsageError

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["assert_store_valid", "check_hypothesis", "check_model_adapter", "check_task", "feeds_models"]


def _fail(what: str, message: str) -> None:
    raise AssertionError(f"{what}: {message}")


def _check(cond: Any, what: str, message: str) -> None:
    if not cond:
        _fail(what, message)


def _json_able(obj: Any, what: str, label: str) -> None:
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as exc:
        _fail(what, f"{label} must be JSON-serialisable (it is recorded in the store): {exc}")


def _raises_probekit_error(func, what: str, action: str, *, allow_plugin_error: bool = False) -> ProbekitError:
    """Call ``func``; it must raise a one-line :class:`ProbekitError` (a crash or silence fails)."""
    try:
        func()
    except ProbekitError as exc:
        if isinstance(exc, PluginError) and not allow_plugin_error:
            _fail(what, f"{action} crashed instead of refusing clearly: {exc}")
        message = str(exc)
        _check(message and "\n" not in message.strip(), what, f"{action}: the error must be one line, got {message!r}")
        return exc
    except Exception as exc:  # noqa: BLE001 - the point is to report it
        _fail(what, f"{action} must raise a probekit error (probekit.errors), got {type(exc).__name__}: {exc}")
    _fail(what, f"{action} must raise a probekit error, but nothing was raised")
    raise AssertionError  # unreachable; keeps type checkers quiet


def _assert_same(a: np.ndarray, b: np.ndarray, what: str, label: str, rtol: float, atol: float) -> None:
    a, b = np.asarray(a), np.asarray(b)
    _check(a.shape == b.shape, what, f"{label}: shapes differ, {a.shape} vs {b.shape}")
    if a.dtype.kind in "biuUSO" or b.dtype.kind in "biuUSO":
        _check(np.array_equal(a, b), what, f"{label}: values differ")
    elif not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        worst = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        _fail(what, f"{label}: values differ (max abs difference {worst:.3g}; rtol={rtol}, atol={atol})")


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


def check_task(task_cls: type, params: dict | None = None, *, n: int = 8, seed: int = 0,
               name: str | None = None) -> "xr.Dataset":
    """Check a task class against the task contract; return ``task_cls(**params).generate(n, seed)``.

    :param task_cls: the class registered through ``probekit_register_tasks``.
    :param params: parameters for the checked instance (small settings); default: the defaults.
    :param n: samples to generate. :param seed: their seed.
    :param name: the name it is registered under, if it must equal ``task_cls.name``.

    A text task, whose ``io`` refuses with a one-line probekit error because a model's
    tokenizer makes its inputs (see :func:`feeds_models`), is checked up to that refusal and
    returns None.
    """
    import xarray as xr

    from probekit.tasks import INPUT_KINDS, ModelIO

    what = f"task {getattr(task_cls, 'name', task_cls)!r}"
    _check(isinstance(getattr(task_cls, "name", None), str) and task_cls.name, what, "set a non-empty class attribute `name`")
    if name is not None:
        _check(task_cls.name == name, what, f"registered as {name!r} but its `name` is {task_cls.name!r}")
    params_cls = getattr(task_cls, "Params", None)
    _check(params_cls is not None and dataclasses.is_dataclass(params_cls), what, "`Params` must be a dataclass")
    _check(params_cls.__dataclass_params__.frozen, what, "`Params` must be a frozen dataclass (@dataclass(frozen=True))")
    missing = [f.name for f in dataclasses.fields(params_cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _check(not missing, what, f"every parameter needs a default (`probekit train --task` uses them); no default: {missing}")
    task_cls()  # the defaults construct
    err = _raises_probekit_error(lambda: task_cls(no_such_parameter_=1), what, "an unknown parameter")
    _check(isinstance(err, UsageError), what, f"an unknown parameter must raise UsageError, got {type(err).__name__}")

    task = task_cls(**(params or {}))
    _check(isinstance(task.params, params_cls), what, "`self.params` must be an instance of `Params`")
    if not feeds_models(task):  # a text task: a model's tokenizer makes its inputs
        _raises_probekit_error(lambda: task.io, what, "`io` of a task without model inputs")
        return None
    io = task.io
    _check(isinstance(io, ModelIO), what, f"`io` must be a probekit.tasks.ModelIO, got {type(io).__name__}")
    _check(io.kind in INPUT_KINDS, what, f"io.kind {io.kind!r} is not one of {INPUT_KINDS}")
    for field in ("d_in", "d_out", "seq_len"):
        value = getattr(io, field)
        _check(isinstance(value, (int, np.integer)) and value >= 1, what, f"io.{field} must be an int >= 1, got {value!r}")

    ds = task.generate(n, seed)
    _check(isinstance(ds, xr.Dataset), what, f"generate() must return an xarray Dataset, got {type(ds).__name__}")
    _check(ds.sizes.get(schema.SAMPLE) == n, what, f"generate({n}, seed) must have {n} samples, got {dict(ds.sizes)}")
    _check(ds.sizes.get(schema.POS) == io.seq_len, what, f"the pos dim must have io.seq_len = {io.seq_len} positions, "
                                                         f"got {dict(ds.sizes)}")
    _check_io_variables(ds, io, what)
    for var_name, var in ds.variables.items():
        _check(var.dtype != object or var_name in ds.coords or var.dtype.kind == "U", what,
               f"variable {var_name!r} has dtype object (a store cannot hold pickles)")
        if var.dtype.kind == "f":
            _check(np.isfinite(var.values).all(), what, f"variable {var_name!r} has NaN or inf")

    attrs = ds.attrs
    _check(attrs.get("task") == task_cls.name, what, f"attrs['task'] must be {task_cls.name!r} (use self.provenance(seed))")
    _check(attrs.get("seed") == seed, what, f"attrs['seed'] must be the seed, {seed}; got {attrs.get('seed')!r}")
    recorded = attrs.get("task_params")
    _json_able(recorded, what, "attrs['task_params']")
    _check(json.loads(json.dumps(recorded)) == json.loads(json.dumps(dataclasses.asdict(task.params))), what,
           "attrs['task_params'] must be the full parameters, dataclasses.asdict(self.params)")
    _json_able(dict(attrs), what, "the Dataset's attrs")

    xr.testing.assert_identical(task.generate(n, seed), ds)  # same seed, same data
    other = task.generate(n, seed + 1)
    _check(not np.array_equal(other[io.input_var].values, ds[io.input_var].values), what,
           f"generate(n, {seed + 1}) gave the same {io.input_var!r} as generate(n, {seed}): samples must depend on the seed")
    one = task.generate(1, seed)  # probekit cache asks for one sample to learn sizes
    _check(one.sizes.get(schema.SAMPLE) == 1, what, "generate(1, seed) must give one sample")
    return ds


def feeds_models(task) -> bool:
    """Whether ``task`` generates model inputs itself: False for a text task, whose ``io`` refuses
    with a probekit error because a model's tokenizer makes its inputs (e.g. prompts for ``hf:``)."""
    try:
        task.io
    except ProbekitError:
        return False
    return True


def _check_io_variables(ds: "xr.Dataset", io, what: str) -> None:
    for role, var_name in (("input_var", io.input_var), ("target_var", io.target_var)):
        _check(var_name in ds, what, f"io.{role} {var_name!r} is not a variable of the generated Dataset "
                                     f"(has: {', '.join(map(str, ds.data_vars))})")
        var = ds[var_name]
        _check(tuple(var.dims[:2]) == (schema.SAMPLE, schema.POS), what,
               f"{var_name!r} must have dims (sample, pos, ...), got {var.dims}")
    x, y = ds[io.input_var], ds[io.target_var]
    if io.kind == "continuous":
        _check(x.ndim == 3 and x.shape[-1] == io.d_in, what,
               f"continuous input {io.input_var!r} must be (sample, pos, d_in={io.d_in}), got {x.shape}")
        _check(x.dtype.kind == "f", what, f"continuous input {io.input_var!r} must be float, got {x.dtype}")
        _check(y.ndim == 3 and y.shape[-1] == io.d_out, what,
               f"target {io.target_var!r} must be (sample, pos, d_out={io.d_out}), got {y.shape}")
    else:
        for var, bound, label in ((x, io.d_in, "d_in"), (y, io.d_out, "d_out")):
            _check(var.ndim == 2 and var.dtype.kind in "iu", what,
                   f"token variable {var.name!r} must hold integer ids (sample, pos), got {var.dtype} {var.shape}")
            values = var.values
            _check(values.min() >= 0 and values.max() < bound, what,
                   f"token ids of {var.name!r} must lie in [0, io.{label}={bound}), got {values.min()}..{values.max()}")
    if io.loss_mask_var is not None:
        _check(io.loss_mask_var in ds, what, f"io.loss_mask_var {io.loss_mask_var!r} is not in the Dataset")
        mask = ds[io.loss_mask_var]
        _check(mask.dims == (schema.SAMPLE, schema.POS) and mask.dtype == bool, what,
               f"loss mask {io.loss_mask_var!r} must be bool (sample, pos), got {mask.dtype} {mask.dims}")
        _check(bool(mask.values.any()), what, f"loss mask {io.loss_mask_var!r} marks no position")
    if io.sensitivity_features is not None:
        start, stop = io.sensitivity_features
        _check(0 <= start < stop <= io.d_in, what, f"io.sensitivity_features {io.sensitivity_features} must lie in "
                                                   f"[0, d_in={io.d_in}]")


# ---------------------------------------------------------------------------
# Hypotheses
# ---------------------------------------------------------------------------


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
    """
    import xarray as xr

    from probekit.targets.hypothesis import MASK_SUFFIX, TARGET_KINDS, target_names

    what = f"hypothesis {getattr(hyp_cls, 'name', hyp_cls)!r}"
    options = dict(options or {})
    _check(isinstance(getattr(hyp_cls, "name", None), str) and hyp_cls.name, what, "set a non-empty class attribute `name`")
    if name is not None:
        _check(hyp_cls.name == name, what, f"registered as {name!r} but its `name` is {hyp_cls.name!r}")
    requires = getattr(hyp_cls, "requires", None)
    _check(isinstance(requires, tuple) and all(isinstance(r, str) for r in requires), what,
           f"`requires` must be a tuple of variable names, got {requires!r}")
    _json_able(options, what, "options")
    if ds is None:
        _check(task is not None, what, "pass a store Dataset (ds=...) or a task to generate one (task=...)")
        ds = task.generate(n, seed)
    elif isinstance(ds, (str, Path)):
        from probekit.store.zarr_store import Store

        ds = Store.open(ds).dataset()
    before = ds.copy(deep=True).load()

    hyp = hyp_cls(**options)
    out = hyp.targets(ds)
    _check(isinstance(out, xr.Dataset), what, f"targets() must return an xarray Dataset, got {type(out).__name__}")
    xr.testing.assert_identical(ds, before)  # a hypothesis reads the store, never changes it
    n_samples, n_pos = ds.sizes[schema.SAMPLE], ds.sizes[schema.POS]
    names = target_names(out)
    _check(names, what, "targets() returned no targets")
    for t in names:
        var = out[t]
        label = f"target {t!r}"
        _check(var.dims == (schema.SAMPLE, schema.POS, f"{t}_dim"), what, f"{label} has dims {var.dims}, "
               f"expected (sample, pos, {t}_dim)")
        _check(var.shape[:2] == (n_samples, n_pos), what, f"{label} has shape {var.shape}, store has "
               f"({n_samples}, {n_pos}, ...)")
        mask_name = var.attrs.get("mask", t + MASK_SUFFIX)
        _check(mask_name in out, what, f"{label} has no mask variable {mask_name!r}")
        mask = out[mask_name]
        _check(mask.dims == (schema.SAMPLE, schema.POS) and mask.dtype == bool, what,
               f"mask of {label} must be bool (sample, pos), got {mask.dtype} {mask.dims}")
        _check(bool(mask.values.any()), what, f"{label} is defined at no position")
        _check(np.isfinite(var.values[mask.values]).all(), what, f"{label} has NaN or inf where its mask says defined")
        _check(var.attrs.get("kind") in TARGET_KINDS, what, f"{label} has kind {var.attrs.get('kind')!r}; "
               f"choose from {TARGET_KINDS}")
        _check(isinstance(var.attrs.get("description"), str) and var.attrs["description"], what,
               f"{label} needs a description")
        if "expected_layer" in var.attrs:
            layer = var.attrs["expected_layer"]
            _check(isinstance(layer, (int, np.integer)) and layer >= 0, what,
                   f"{label}: expected_layer must be an int >= 0, got {layer!r}")
    _check(out.attrs.get("hypothesis") == hyp_cls.name, what, "targets() must come from Hypothesis.targets "
           "(which records the hypothesis name, options and fitted hyperparameters)")
    _json_able(out.attrs.get("fitted"), what, "fitted()")

    again = hyp_cls(**options).targets(ds)  # determinism: a fresh instance, the same store
    for v in out.data_vars:
        _assert_same(out[v].values, again[v].values, what, f"determinism ({v!r} from two fresh instances)", rtol, atol)

    half = max(2, n_samples // 2)  # the sample count is the store's, not a constant
    sub = hyp_cls(**options).targets(ds.isel({schema.SAMPLE: slice(0, half)}))
    _check(sub.sizes[schema.SAMPLE] == min(half, n_samples), what, "targets of a store with fewer samples have the "
           "wrong number of samples")

    for var_name in requires:
        if var_name in ds.data_vars:
            stripped = ds.drop_vars(var_name)
            err = _raises_probekit_error(lambda s=stripped: hyp_cls(**options).targets(s), what,
                                         f"a store without required variable {var_name!r}")
            _check(isinstance(err, StoreError), what, f"a store without {var_name!r} must raise StoreError "
                   f"(Hypothesis.check does this from `requires`), got {type(err).__name__}")
    for i, bad in enumerate(unsupported):
        _raises_probekit_error(lambda b=bad: hyp_cls(**options).targets(b), what, f"unsupported store #{i}")

    if getattr(hyp, "can_predict", False) and task is not None:
        _check_predict(hyp_cls, options, ds, task, what, rtol, atol)
    return out


def _check_predict(hyp_cls, options, ds, task, what, rtol, atol) -> None:
    import torch

    io = task.io
    fitted = hyp_cls(**options)
    _check(fitted.fit(ds) is fitted, what, "fit(ds) must return self")
    _json_able(fitted.fitted(), what, "fitted()")
    inputs = torch.as_tensor(np.asarray(ds[io.input_var].values[:4]))
    inputs = inputs.double() if io.kind == "continuous" else inputs.long()
    pred = fitted.predict(inputs)
    _check(isinstance(pred, torch.Tensor), what, f"predict() must return a torch tensor, got {type(pred).__name__}")
    expected = (inputs.shape[0], io.seq_len, io.d_out)
    _check(tuple(pred.shape) == expected, what, f"predict() must return [batch, pos, d_out] = {expected}, "
                                                f"got {tuple(pred.shape)}")
    _check(bool(torch.isfinite(pred).all()), what, "predict() returned NaN or inf")
    _assert_same(pred.detach().numpy(), fitted.predict(inputs).detach().numpy(), what, "predict() twice", rtol, atol)


# ---------------------------------------------------------------------------
# Model adapters
# ---------------------------------------------------------------------------

PROVENANCE_KEYS = ("model_spec", "model_hash", "device", "torch_version", "random_init")


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
    """
    from probekit.models.adapters import adapter_site_layout

    what = f"model adapter {adapter_cls.__name__}"
    inputs = np.asarray(inputs)
    _check(inputs.ndim >= 2 and inputs.shape[0] >= 2, what, "pass inputs [batch >= 2, pos, ...]")
    _check(callable(getattr(adapter_cls, "load", None)), what, "needs a classmethod load(rest, *, random_init, device)")
    params = inspect.signature(adapter_cls.load).parameters
    for kw in ("random_init", "device"):
        _check(kw in params, what, f"load() must accept the keyword {kw!r}")
    adapter = adapter_cls.load(rest, random_init=False, device=device)
    if hasattr(adapter, "prepare"):  # adapters of plain modules learn their sizes from one sample
        adapter.prepare(inputs[:1])
    _check(isinstance(getattr(adapter, "spec", None), str) and adapter.spec.endswith(rest), what,
           f"`spec` must be the full model spec '<scheme>:{rest}', got {getattr(adapter, 'spec', None)!r}")
    sites = adapter.sites
    _check(isinstance(sites, dict) and sites, what, f"`sites` must be a non-empty dict, got {sites!r}")
    for site, n_layers in sites.items():
        _check(isinstance(site, str) and isinstance(n_layers, (int, np.integer)) and n_layers >= 1, what,
               f"`sites` maps names to layer counts >= 1; got {site!r}: {n_layers!r}")
    for attr in ("d_model", "d_out"):
        value = getattr(adapter, attr)
        _check(isinstance(value, (int, np.integer)) and value >= 1, what, f"`{attr}` must be an int >= 1, got {value!r}")

    batch, seq_len = inputs.shape[:2]
    names = list(sites)
    acts, out = adapter.run(inputs, names)
    _check(isinstance(acts, dict) and set(acts) == set(names), what,
           f"run(inputs, sites) must return activations for exactly {names}, got {list(acts)}")
    for site in names:
        dims, shape = adapter_site_layout(adapter, site, seq_len)
        _check(tuple(dims) in schema.SITE_DIMS, what, f"site {site!r} has store dims {dims}; choose from {schema.SITE_DIMS}")
        _check(shape[0] == sites[site], what, f"site {site!r} has {shape[0]} layers in its layout but "
                                              f"`sites` says {sites[site]}")
        a = np.asarray(acts[site])
        _check(a.shape == (batch, *shape), what, f"site {site!r}: activations {a.shape}, expected {(batch, *shape)} "
                                                 f"({', '.join(dims)})")
        _check(a.dtype.kind == "f" and np.isfinite(a).all(), what, f"site {site!r}: activations must be finite floats")
    out = np.asarray(out)
    _check(out.shape == (batch, seq_len, adapter.d_out), what,
           f"outputs must be [batch, pos, d_out] = {(batch, seq_len, adapter.d_out)}, got {out.shape}")
    _check(out.dtype.kind == "f" and np.isfinite(out).all(), what, "outputs must be finite floats")

    acts2, out2 = adapter.run(inputs, names)
    for site in names:
        _assert_same(acts[site], acts2[site], what, f"determinism (site {site!r}, two runs)", rtol, atol)
    _assert_same(out, out2, what, "determinism (outputs, two runs)", rtol, atol)
    for site in names:
        alone, _ = adapter.run(inputs, [site])
        _check(set(alone) == {site}, what, f"run(inputs, [{site!r}]) must return only that site")
        _assert_same(alone[site], acts[site], what, f"site {site!r} run alone vs with every site", rtol, atol)
    first, first_out = adapter.run(inputs[:1], names)
    for site in names:
        _assert_same(first[site], acts[site][:1], what, f"site {site!r}: sample 0 alone vs in a batch", rtol, atol)
    _assert_same(first_out, out[:1], what, "outputs: sample 0 alone vs in a batch", rtol, atol)
    _raises_probekit_error(lambda: adapter.run(inputs, ["no_such_site_"]), what, "an unknown site")

    if valid is not None:
        _check_padding(adapter, inputs, np.asarray(valid, bool), names, acts, out, what, rtol, atol)

    prov = adapter.provenance()
    _check(isinstance(prov, dict), what, "provenance() must return a dict")
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    _check(not missing, what, f"provenance() lacks {missing} (every store records them)")
    _check(prov["model_spec"] == adapter.spec, what, "provenance()['model_spec'] must be `spec`")
    _check(prov["random_init"] is False, what, "provenance()['random_init'] must be False for trained weights")
    _json_able(prov, what, "provenance()")

    if random_init:
        rand = [adapter_cls.load(rest, random_init=True, device=device) for _ in range(2)]
        for r in rand:
            if hasattr(r, "prepare"):
                r.prepare(inputs[:1])
        p0, p1 = rand[0].provenance(), rand[1].provenance()
        _check(p0.get("random_init") is True, what, "load(random_init=True): provenance()['random_init'] must be True")
        _check(p0["model_hash"] == p1["model_hash"], what, "load(random_init=True) twice gave different weights: "
                                                           "seed the initialisation")
        _check(p0["model_hash"] != prov["model_hash"], what, "load(random_init=True) gave the trained weights")
        _check(rand[0].sites == sites, what, "the random-init model must expose the same sites")
    if bad_rest is not None:
        _raises_probekit_error(lambda: adapter_cls.load(bad_rest, random_init=False, device=device), what,
                               f"load({bad_rest!r})")
    return adapter


def _check_padding(adapter, inputs, valid, names, acts, out, what, rtol, atol) -> None:
    _check("valid" in inspect.signature(adapter.run).parameters, what, "valid= given, but run() takes no `valid` mask")
    _check(valid.shape == inputs.shape[:2] and not valid.all() and valid[:, 0].all(), what,
           "valid must be bool [batch, pos], True at position 0 and False somewhere")
    padded, padded_out = adapter.run(inputs, names, valid=valid)
    for site in names:
        a = np.asarray(padded[site])
        if a.ndim == 4:  # (batch, layer, pos, feature): padding is zero, the rest unchanged
            _check(not np.any(a.transpose(0, 2, 1, 3)[~valid]), what, f"site {site!r}: padded positions must be 0")
            keep = valid[:, None, :, None] & np.ones(a.shape, bool)
            _assert_same(a[keep], np.asarray(acts[site])[keep], what, f"site {site!r}: valid positions with padding "
                         "vs without", rtol, atol)
    _check(not np.any(np.asarray(padded_out)[~valid]), what, "outputs at padded positions must be 0")
    _assert_same(np.asarray(padded_out)[valid], out[valid], what, "outputs: valid positions with padding vs without",
                 rtol, atol)


# ---------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------


def assert_store_valid(store: "str | Path | xr.Dataset", *, complete: bool = True) -> None:
    """Assert that ``store`` (a path, or a store's root Dataset) follows ``docs/store-spec.md``.

    Runs :func:`probekit.store.schema.validate_store` and, for a path, also checks what only the
    files show: activation chunks of one layer of one sample block, dtypes as recorded,
    the manifest (``complete``: every sample block written), the ``random_init`` group and
    every ``probes/<hypothesis>/<id>`` results group. Raises ``AssertionError`` listing every
    problem found.
    """
    import xarray as xr

    if isinstance(store, xr.Dataset):
        problems = schema.validate_store(store)
    else:
        from probekit.store.zarr_store import Store

        try:
            opened = Store.open(store)
        except StoreError as exc:
            raise AssertionError(str(exc)) from None
        problems = schema.validate_store(opened.dataset()) + _file_problems(opened, complete)
    if problems:
        raise AssertionError(f"{store if not isinstance(store, xr.Dataset) else 'dataset'} is not a valid probekit "
                             "store:\n  " + "\n  ".join(problems))


def _file_problems(store, complete: bool) -> list[str]:
    problems = _group_problems(store, None, complete)
    root = store.dataset()
    if store.has_group(schema.RANDOM_INIT_GROUP):
        problems += _group_problems(store, schema.RANDOM_INIT_GROUP, complete)
        rand = store.dataset(schema.RANDOM_INIT_GROUP)
        for site in store.attrs().get("sites", []):
            if site not in rand:
                problems.append(f"random_init: no site {site!r}")
            elif site in root and rand[site].shape != root[site].shape:
                problems.append(f"random_init: site {site!r} has shape {rand[site].shape}, root {root[site].shape}")
    for key in store.results():
        problems += _results_problems(store, key)
    return problems


def _group_problems(store, group: str | None, complete: bool) -> list[str]:
    where = f"{group}: " if group else ""
    attrs = store.attrs(group)
    needed = ("model_hash", "sites", "dtype", schema.BLOCK_ATTR, schema.MANIFEST_ATTR)
    problems = [f"{where}missing attribute {a!r}" for a in needed  # (validate_store reports the root's own)
                if a not in attrs and (group or a not in schema.REQUIRED_ATTRS)]
    g = store.group(group)
    block = attrs.get(schema.BLOCK_ATTR)
    for site in attrs.get("sites", []) if block else []:
        if site not in g.array_keys():
            continue  # validate_store reports it for the root
        arr = g[site]
        dims = tuple(arr.metadata.dimension_names or ())
        lead = 1 if dims[:1] == (schema.CHECKPOINT,) else 0
        expected = (*(1,) * lead, min(block, arr.shape[lead]), 1, *arr.shape[lead + 2:])
        if tuple(arr.chunks) != expected:
            problems.append(f"{where}site {site!r} is chunked {tuple(arr.chunks)}; the spec asks for one layer of one "
                            f"sample block, {expected}")
        if str(arr.dtype) != attrs.get("dtype"):
            problems.append(f"{where}site {site!r} is {arr.dtype} but attrs say dtype {attrs.get('dtype')!r}")
    out = schema.OUTPUT_VAR
    if out in g.array_keys():
        dims = schema.site_dims(g[out].metadata.dimension_names or ())
        if dims != (schema.SAMPLE, schema.POS, schema.OUTPUT_FEATURE):
            problems.append(f"{where}{out!r} has dims {dims}, expected (sample, pos, out_feature)")
    if complete and not store.is_complete(group):
        problems.append(f"{where}incomplete: {len(store.blocks_done(group))} units in the manifest "
                        f"({schema.MANIFEST_ATTR}); rerun the cache command to finish it")
    return problems


RESULT_DIMS = ("condition", "site", "layer", "target")


def _results_problems(store, key: str) -> list[str]:
    res = store.dataset(key)
    problems = []
    if "r2" not in res:
        return [f"{key}: no 'r2' variable"]
    dims = schema.site_dims(res["r2"].dims)
    if dims != RESULT_DIMS:
        problems.append(f"{key}: r2 has dims {res['r2'].dims}, expected {RESULT_DIMS} (after an optional checkpoint)")
    hyp = key.split("/")[1]
    if res.attrs.get("hypothesis") != hyp:
        problems.append(f"{key}: attrs['hypothesis'] is {res.attrs.get('hypothesis')!r}, the group says {hyp!r}")
    for attr in ("settings", "probekit_version", "created"):
        if attr not in res.attrs:
            problems.append(f"{key}: missing attribute {attr!r}")
    return problems
