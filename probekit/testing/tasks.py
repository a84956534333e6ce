"""Conformance checks of a task class (the ``probekit_register_tasks`` contract).

:func:`yield_task_checks` yields the named checks; :func:`check_task` runs them all.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from typing import TYPE_CHECKING, Iterator

import numpy as np

from probekit.errors import ProbekitError, UsageError
from probekit.store import schema
from probekit.testing.base import Check, ensure, iter_named, json_able, raises_probekit_error, run_checks

if TYPE_CHECKING:
    import xarray as xr


def feeds_models(task) -> bool:
    """Whether ``task`` generates model inputs itself: False for a text task, whose ``io`` refuses
    with a probekit error because a model's tokenizer makes its inputs (e.g. prompts for ``hf:``)."""
    try:
        task.io
    except ProbekitError:
        return False
    return True


class TaskCase:
    """The task under test, built lazily and shared by its checks."""

    def __init__(self, task_cls: type, params: dict | None, n: int, seed: int, name: str | None):
        self.task_cls, self.params, self.n, self.seed, self.name = task_cls, dict(params or {}), n, seed, name

    @cached_property
    def task(self):
        return self.task_cls(**self.params)

    @cached_property
    def feeds_models(self) -> bool:
        try:
            return feeds_models(self.task)
        except Exception:  # noqa: BLE001 - it does not even construct: let the checks say so
            return True

    @cached_property
    def ds(self) -> "xr.Dataset":
        return self.task.generate(self.n, self.seed)


def _name(case: TaskCase) -> None:
    cls = case.task_cls
    ensure(isinstance(getattr(cls, "name", None), str) and cls.name, "set a non-empty class attribute `name`")
    if case.name is not None:
        ensure(cls.name == case.name, f"registered as {case.name!r} but its `name` is {cls.name!r}")


def _params_dataclass(case: TaskCase) -> None:
    params_cls = getattr(case.task_cls, "Params", None)
    ensure(params_cls is not None and dataclasses.is_dataclass(params_cls), "`Params` must be a dataclass")
    ensure(params_cls.__dataclass_params__.frozen, "`Params` must be a frozen dataclass (@dataclass(frozen=True))")
    missing = [f.name for f in dataclasses.fields(params_cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    ensure(not missing, f"every parameter needs a default (`probekit train --task` uses them); no default: {missing}")


def _defaults_construct(case: TaskCase) -> None:
    case.task_cls()


def _refuses_unknown_parameter(case: TaskCase) -> None:
    err = raises_probekit_error(lambda: case.task_cls(no_such_parameter_=1), "an unknown parameter")
    ensure(isinstance(err, UsageError), f"an unknown parameter must raise UsageError, got {type(err).__name__}")


def _params_instance(case: TaskCase) -> None:
    ensure(isinstance(case.task.params, case.task_cls.Params), "`self.params` must be an instance of `Params`")


def _text_io_refuses(case: TaskCase) -> None:
    raises_probekit_error(lambda: case.task.io, "`io` of a task without model inputs")


def _io(case: TaskCase) -> None:
    from probekit.tasks import INPUT_KINDS, ModelIO

    io = case.task.io
    ensure(isinstance(io, ModelIO), f"`io` must be a probekit.tasks.ModelIO, got {type(io).__name__}")
    ensure(io.kind in INPUT_KINDS, f"io.kind {io.kind!r} is not one of {INPUT_KINDS}")
    for field in ("d_in", "d_out", "seq_len"):
        value = getattr(io, field)
        ensure(isinstance(value, (int, np.integer)) and value >= 1, f"io.{field} must be an int >= 1, got {value!r}")


def _generate_sizes(case: TaskCase) -> None:
    import xarray as xr

    ds, n, io = case.ds, case.n, case.task.io
    ensure(isinstance(ds, xr.Dataset), f"generate() must return an xarray Dataset, got {type(ds).__name__}")
    ensure(ds.sizes.get(schema.SAMPLE) == n, f"generate({n}, seed) must have {n} samples, got {dict(ds.sizes)}")
    ensure(ds.sizes.get(schema.POS) == io.seq_len, f"the pos dim must have io.seq_len = {io.seq_len} positions, "
                                                   f"got {dict(ds.sizes)}")


def _io_variables(case: TaskCase) -> None:
    ds, io = case.ds, case.task.io
    for role, var_name in (("input_var", io.input_var), ("target_var", io.target_var)):
        ensure(var_name in ds, f"io.{role} {var_name!r} is not a variable of the generated Dataset "
                               f"(has: {', '.join(map(str, ds.data_vars))})")
        ensure(tuple(ds[var_name].dims[:2]) == (schema.SAMPLE, schema.POS),
               f"{var_name!r} must have dims (sample, pos, ...), got {ds[var_name].dims}")
    x, y = ds[io.input_var], ds[io.target_var]
    if io.kind == "continuous":
        ensure(x.ndim == 3 and x.shape[-1] == io.d_in,
               f"continuous input {io.input_var!r} must be (sample, pos, d_in={io.d_in}), got {x.shape}")
        ensure(x.dtype.kind == "f", f"continuous input {io.input_var!r} must be float, got {x.dtype}")
        ensure(y.ndim == 3 and y.shape[-1] == io.d_out,
               f"target {io.target_var!r} must be (sample, pos, d_out={io.d_out}), got {y.shape}")
    else:
        for var, bound, label in ((x, io.d_in, "d_in"), (y, io.d_out, "d_out")):
            ensure(var.ndim == 2 and var.dtype.kind in "iu",
                   f"token variable {var.name!r} must hold integer ids (sample, pos), got {var.dtype} {var.shape}")
            values = var.values
            ensure(values.min() >= 0 and values.max() < bound,
                   f"token ids of {var.name!r} must lie in [0, io.{label}={bound}), got {values.min()}..{values.max()}")


def _loss_mask(case: TaskCase) -> None:
    ds, io = case.ds, case.task.io
    if io.loss_mask_var is not None:
        ensure(io.loss_mask_var in ds, f"io.loss_mask_var {io.loss_mask_var!r} is not in the Dataset")
        mask = ds[io.loss_mask_var]
        ensure(mask.dims == (schema.SAMPLE, schema.POS) and mask.dtype == bool,
               f"loss mask {io.loss_mask_var!r} must be bool (sample, pos), got {mask.dtype} {mask.dims}")
        ensure(bool(mask.values.any()), f"loss mask {io.loss_mask_var!r} marks no position")
    if io.sensitivity_features is not None:
        start, stop = io.sensitivity_features
        ensure(0 <= start < stop <= io.d_in, f"io.sensitivity_features {io.sensitivity_features} must lie in "
                                             f"[0, d_in={io.d_in}]")


def _storable_values(case: TaskCase) -> None:
    ds = case.ds
    for var_name, var in ds.variables.items():
        ensure(var.dtype != object or var_name in ds.coords or var.dtype.kind == "U",
               f"variable {var_name!r} has dtype object (a store cannot hold pickles)")
        if var.dtype.kind == "f":
            ensure(np.isfinite(var.values).all(), f"variable {var_name!r} has NaN or inf")


def _provenance(case: TaskCase) -> None:
    attrs, name, seed = case.ds.attrs, case.task_cls.name, case.seed
    ensure(attrs.get("task") == name, f"attrs['task'] must be {name!r} (use self.provenance(seed))")
    ensure(attrs.get("seed") == seed, f"attrs['seed'] must be the seed, {seed}; got {attrs.get('seed')!r}")
    recorded = attrs.get("task_params")
    json_able(recorded, "attrs['task_params']")
    ensure(json.loads(json.dumps(recorded)) == json.loads(json.dumps(dataclasses.asdict(case.task.params))),
           "attrs['task_params'] must be the full parameters, dataclasses.asdict(self.params)")
    json_able(dict(attrs), "the Dataset's attrs")


def _same_seed_same_data(case: TaskCase) -> None:
    import xarray as xr

    xr.testing.assert_identical(case.task.generate(case.n, case.seed), case.ds)


def _seed_changes_samples(case: TaskCase) -> None:
    var, seed = case.task.io.input_var, case.seed
    other = case.task.generate(case.n, seed + 1)
    ensure(not np.array_equal(other[var].values, case.ds[var].values),
           f"generate(n, {seed + 1}) gave the same {var!r} as generate(n, {seed}): samples must depend on the seed")


def _one_sample(case: TaskCase) -> None:
    one = case.task.generate(1, case.seed)  # probekit cache asks for one sample to learn sizes
    ensure(one.sizes.get(schema.SAMPLE) == 1, "generate(1, seed) must give one sample")


CONSTRUCTION = (("name", _name), ("params_dataclass", _params_dataclass), ("defaults_construct", _defaults_construct),
                ("refuses_unknown_parameter", _refuses_unknown_parameter), ("params_instance", _params_instance))
GENERATION = (("io", _io), ("generate_sizes", _generate_sizes), ("io_variables", _io_variables),
              ("loss_mask", _loss_mask), ("storable_values", _storable_values), ("provenance", _provenance),
              ("same_seed_same_data", _same_seed_same_data), ("seed_changes_samples", _seed_changes_samples),
              ("one_sample", _one_sample))


def _case_checks(case: TaskCase) -> Iterator[tuple[str, object]]:
    for name, func in CONSTRUCTION:
        yield name, lambda f=func: f(case)
    # a text task (its io refuses: a model's tokenizer makes its inputs) is checked up to that refusal
    for name, func in GENERATION if case.feeds_models else (("text_io_refuses", _text_io_refuses),):
        yield name, lambda f=func: f(case)


def yield_task_checks(task_cls: type, params: dict | None = None, *, n: int = 8, seed: int = 0,
                      name: str | None = None, case: TaskCase | None = None) -> Iterator[tuple[str, Check]]:
    """The named checks of a task class, ``(name, check)`` in order (arguments: :func:`check_task`)."""
    case = case or TaskCase(task_cls, params, n, seed, name)
    label = str(getattr(task_cls, "name", None) or getattr(task_cls, "__name__", "task"))
    yield from iter_named(f"task {getattr(task_cls, 'name', task_cls)!r}", label, _case_checks(case))


def check_task(task_cls: type, params: dict | None = None, *, n: int = 8, seed: int = 0,
               name: str | None = None) -> "xr.Dataset":
    """Check a task class against the task contract; return ``task_cls(**params).generate(n, seed)``.

    :param task_cls: the class registered through ``probekit_register_tasks``.
    :param params: parameters for the checked instance (small settings); default: the defaults.
    :param n: samples to generate. :param seed: their seed.
    :param name: the name it is registered under, if it must equal ``task_cls.name``.

    Runs every check of :func:`yield_task_checks`; the first that fails raises ``AssertionError``
    naming it (``check 'seed_changes_samples' failed: task 'walk': ...``). A text task, whose
    ``io`` refuses with a one-line probekit error because a model's tokenizer makes its inputs
    (see :func:`feeds_models`), is checked up to that refusal and returns None.
    """
    case = TaskCase(task_cls, params, n, seed, name)
    run_checks(yield_task_checks(task_cls, case=case))
    return case.ds if case.feeds_models else None
