"""The hypothesis protocol: an algorithm whose intermediate quantities are probe targets.

A hypothesis reads a store's Dataset (never the model) and returns a *targets
Dataset*: one variable per target with dims ``(sample, pos, <target>_dim)``, a
boolean ``<target>_mask (sample, pos)`` marking where it is defined, and attributes
``kind`` (``continuous`` or ``categorical``), ``description`` and optionally
``expected_layer``. Build it with :func:`make_targets` from :class:`Target` objects.

Two optional methods serve the behavioural lens (``probekit compare``):
``fit(ds)`` fits the algorithm's own hyperparameters to task data (never to a model)
and returns ``self``; ``predict(inputs)`` maps a torch tensor of model inputs
``[batch, pos, features]`` to the algorithm's outputs in the model's output layout
``[batch, pos, d_out]``, differentiably, so sensitivities ``d output / d input`` of
model and algorithm can be compared. A third, ``rivals()``, names other algorithms the
model should be measured against too (wrong priors, other step sizes, a converged solver), so
that a match is shown to discriminate: ``compare`` fits each rival on the same tasks and reports
the model's distance to it beside its distance to the hypothesis, with paired CIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np

from probekit.store import schema
from probekit.errors import DataError, PluginError, ProbekitError, StoreError

if TYPE_CHECKING:
    import xarray as xr

TARGET_KINDS = ("continuous", "categorical")
MASK_SUFFIX = "_mask"
TYPES_SUFFIX = "_types"


@dataclass
class Target:
    """One probe target: ``values[sample, pos, k]`` defined where ``mask[sample, pos]``."""

    name: str
    values: np.ndarray
    mask: np.ndarray
    description: str
    kind: str = "continuous"
    expected_layer: int | None = None
    #: for categorical targets: the "type" at each position (e.g. its input token id), which
    #: defines the Hewitt-Liang control task; None means no control task
    control_types: np.ndarray | None = None


class Hypothesis:
    """Base class for hypotheses. Subclasses set ``name``, ``requires`` and implement ``compute``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: variables the store must hold, each with dims starting ``(sample, pos)``
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options):
        self.options = options

    def check(self, ds: "xr.Dataset") -> None:
        """Raise :class:`StoreError` if ``ds`` lacks what this hypothesis needs."""
        missing = [v for v in self.requires if v not in ds.variables]
        if missing:
            task = ds.attrs.get("task", "?")
            raise StoreError(
                f"hypothesis {self.name!r} needs variables {missing} which this store (task {task!r}) does not have"
            )
        for v in self.requires:
            if tuple(ds[v].dims[:2]) != (schema.SAMPLE, schema.POS):
                raise StoreError(f"hypothesis {self.name!r} needs {v!r} with dims (sample, pos, ...), got {ds[v].dims}")

    def targets(self, ds: "xr.Dataset") -> "xr.Dataset":
        """Check the store and return the validated targets Dataset."""
        self.check(ds)
        try:
            computed = self.compute(ds)
        except ProbekitError:
            raise
        except Exception as exc:  # a plugin's bug: name it, keep it one line
            raise PluginError(f"hypothesis {self.name!r} failed computing its targets: "
                              f"{type(exc).__name__}: {exc}") from exc
        out = make_targets(computed, n_samples=ds.sizes[schema.SAMPLE], n_pos=ds.sizes[schema.POS])
        try:
            fitted = self.fitted()
        except Exception as exc:
            raise PluginError(f"hypothesis {self.name!r}: fitted() raised {type(exc).__name__}: {exc}; it is recorded "
                              "with every result, fitted or not, so it must work before fit(): return {} until "
                              "then") from exc
        out.attrs.update({"hypothesis": self.name, "options": dict(self.options), "fitted": fitted})
        return out

    def compute(self, ds: "xr.Dataset") -> Sequence[Target]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, ds: "xr.Dataset") -> "Hypothesis":
        """Fit the algorithm's hyperparameters to task data; the default has none to fit."""
        return self

    def fitted(self) -> dict:
        """The fitted hyperparameters (JSON-able), recorded with results; {} if none."""
        return {}

    @property
    def can_predict(self) -> bool:
        """Whether this hypothesis implements :meth:`predict` (the behavioural lens)."""
        return type(self).predict is not Hypothesis.predict

    def predict(self, inputs):
        """The algorithm's outputs ``[batch, pos, d_out]`` for model inputs (a torch tensor)."""
        raise NotImplementedError

    def rivals(self) -> dict[str, "Hypothesis"]:
        """Rival algorithms for the behavioural lens, called after :meth:`fit`: display name ->
        a new, unfitted hypothesis that can predict. ``compare`` fits each on the same tasks as
        this one and runs it on the same held-out tasks. The default: none."""
        return {}


def make_targets(targets: Sequence[Target], *, n_samples: int, n_pos: int) -> "xr.Dataset":
    """Assemble :class:`Target` objects into a validated targets Dataset."""
    import xarray as xr

    data = {}
    for t in targets:
        values = np.asarray(t.values)
        if values.ndim == 2:
            values = values[..., None]
        mask = np.asarray(t.mask)
        if t.kind not in TARGET_KINDS:
            raise DataError(f"target {t.name!r} has kind {t.kind!r}; choose from: {', '.join(TARGET_KINDS)}")
        if values.shape[:2] != (n_samples, n_pos) or values.ndim != 3:
            raise DataError(f"target {t.name!r} has shape {values.shape}, expected ({n_samples}, {n_pos}, k)")
        if mask.shape != (n_samples, n_pos) or mask.dtype != bool:
            raise DataError(f"mask of target {t.name!r} must be bool ({n_samples}, {n_pos}), got {mask.dtype} {mask.shape}")
        if not mask.any():
            raise DataError(f"target {t.name!r} is defined at no position")
        if not np.isfinite(values[mask]).all():
            raise DataError(f"target {t.name!r} has NaN or inf at positions its mask marks defined")
        if t.kind == "categorical":
            if values.shape[-1] != 1 or not np.issubdtype(values.dtype, np.integer):
                raise DataError(f"categorical target {t.name!r} must hold one integer class per position, "
                                f"got {values.dtype} with {values.shape[-1]} dims")
            if t.control_types is not None:
                types = np.asarray(t.control_types)
                if types.shape != (n_samples, n_pos) or not np.issubdtype(types.dtype, np.integer):
                    raise DataError(f"control types of {t.name!r} must be integers of shape ({n_samples}, {n_pos})")
                data[t.name + TYPES_SUFFIX] = ((schema.SAMPLE, schema.POS), types)
        attrs = {"kind": t.kind, "description": t.description, "mask": t.name + MASK_SUFFIX}
        if t.expected_layer is not None:
            attrs["expected_layer"] = int(t.expected_layer)
        data[t.name] = ((schema.SAMPLE, schema.POS, f"{t.name}_dim"), values, attrs)
        data[t.name + MASK_SUFFIX] = ((schema.SAMPLE, schema.POS), mask)
    return xr.Dataset(data)


def target_names(targets: "xr.Dataset") -> list[str]:
    """Names of the targets (not masks) in a targets Dataset, in order."""
    return [n for n in targets.data_vars if not n.endswith((MASK_SUFFIX, TYPES_SUFFIX))]
