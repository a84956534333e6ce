"""The task protocol: a task generates model inputs and ground truth as an xarray Dataset.

Concrete tasks live in plugins (e.g. ``lds`` in ``plugins/probekit_rls``). A task is
a class with

* ``name``: its registry name;
* ``Params``: a frozen dataclass of its parameters (recorded in the store);
* ``io``: a :class:`ModelIO` saying which variables a model reads and predicts;
* ``generate(n, seed) -> xr.Dataset`` with dims ``(sample, pos, ...)``.

Subclass :class:`Task` to get parameter parsing, validation and provenance for free.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from probekit.errors import UsageError

if TYPE_CHECKING:
    import xarray as xr

INPUT_KINDS = ("continuous", "tokens")


@dataclass(frozen=True)
class ModelIO:
    """How a model consumes a task's Dataset.

    :param input_var: variable fed to the model, dims ``(sample, pos, <features>)``
        for continuous inputs or ``(sample, pos)`` of int token ids.
    :param target_var: what the model is trained to predict at each position.
    :param kind: ``"continuous"`` (MSE loss) or ``"tokens"`` (cross-entropy).
    :param d_in: input features (or vocabulary size for tokens).
    :param d_out: output features (or vocabulary size).
    :param seq_len: number of positions.
    :param loss_mask_var: optional boolean variable ``(sample, pos)``: the positions where the
        model is trained and compared (e.g. only the query of a regression prompt); None: all.
    :param sensitivity_features: optional ``(start, stop)``: the input features whose
        gradient ``d output / d input`` at the compared positions the behavioural comparison
        reports (e.g. the ``x_q`` part of a query token ``(x_q, 0)``); None: all features.
    """

    input_var: str
    target_var: str
    kind: str
    d_in: int
    d_out: int
    seq_len: int
    loss_mask_var: str | None = None
    sensitivity_features: tuple[int, int] | None = None


class Task:
    """Base class for tasks. Subclasses set ``name``, ``Params`` and implement ``io`` and ``generate``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type]

    def __init__(self, **params: Any):
        fields = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(params) - fields)
        if unknown:
            raise UsageError(
                f"task {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"choose from: {', '.join(sorted(fields))}"
            )
        self.params = self.Params(**params)

    @property
    def io(self) -> ModelIO:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate(self, n: int, seed: int) -> "xr.Dataset":  # pragma: no cover - abstract
        raise NotImplementedError

    def provenance(self, seed: int) -> dict:
        """Attributes recorded in every Dataset this task generates."""
        return {"task": self.name, "task_params": dataclasses.asdict(self.params), "seed": int(seed)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


def parse_params(params_cls: type, items: list[str] | None) -> dict:
    """Parse ``["dim=5", "sigma=0.01"]`` into typed keyword arguments of a Params dataclass.

    Values are read as JSON when possible (numbers, booleans, lists), else kept as strings;
    NaN and infinities are refused.
    """
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UsageError(f"parameter {item!r} is not of the form key=value")
        if key not in fields:
            raise UsageError(f"unknown parameter {key!r}; choose from: {', '.join(sorted(fields))}")
        value = json_value(raw, f"parameter {key!r}")
        default = fields[key].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UsageError(f"parameter {key!r} must be true or false, got {raw!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not dataclasses.MISSING and not isinstance(default, type(None)):
            if not isinstance(value, type(default)):
                raise UsageError(f"parameter {key!r} must be a {type(default).__name__}, got {raw!r}")
        out[key] = value
    return out


def json_value(raw: str, what: str) -> Any:
    """``raw`` read as JSON when it is JSON (``"3"`` -> 3, ``"[1, 2]"`` -> [1, 2]), else the string
    itself. A non-finite number anywhere in it (JSON's ``NaN``, ``Infinity``, ``1e999``) is a
    :class:`UsageError` naming ``what``, e.g. ``parameter 'sigma'``."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if not _finite(value):
        kind = "be a finite number" if isinstance(value, float) else "hold finite numbers only"
        raise UsageError(f"{what} must {kind}, got {raw!r}")
    return value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True
