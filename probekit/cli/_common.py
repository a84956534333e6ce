"""Shared CLI pieces: consoles, progress bars, option parsing, checks of numeric options."""

from __future__ import annotations

import contextlib
import json
import math
import operator
from typing import Callable, Iterator

import typer

from probekit.errors import UsageError


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def stdout_console():
    from rich.console import Console

    return Console()


@contextlib.contextmanager
def progress(description: str, total: int, unit: str = "it", *, enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr with rate and ETA; yields ``update(completed, **fields)``.

    The bar appears at the first update, so a command that fails while validating
    its input prints only its one-line error.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    ]
    bar = Progress(*columns, console=stderr_console(), disable=not enabled)
    task = bar.add_task(description, total=total, rate="", info="")
    started = False

    def update(completed: int, info: str = "", description: str | None = None, total: int | None = None):
        nonlocal started
        if not started:
            bar.start()
            started = True
        speed = bar.tasks[task].speed
        kw = {"description": description} if description else {}
        if total is not None:
            kw["total"] = total
        bar.update(task, completed=completed, rate=f"{speed:,.1f} {unit}/s" if speed else "", info=info, **kw)

    try:
        yield update
    finally:
        if started:
            bar.stop()


# Numeric options. An integer option declares its range with typer's ``min=`` (``--help`` shows
# it as ``x>=1``); a float option takes one of the callbacks below, since float parsing accepts
# nan and inf and ``min=`` has no strict bound. Either way a bad value is a click usage error
# that names the option: ``error: Invalid value for '--lr': must be > 0, got 0`` (exit 2).

_BOUNDS = {"gt": (">", operator.gt), "ge": (">=", operator.ge), "lt": ("<", operator.lt), "le": ("<=", operator.le)}


def _within(bounds: dict[str, float]) -> tuple[Callable[[float], bool], str]:
    """A test that a number is finite and within ``bounds``, and the bounds in words (" > 0")."""
    checks = [(*_BOUNDS[name], bound) for name, bound in bounds.items()]
    rule = "".join(f"{' and' if i else ''} {sign} {bound:g}" for i, (sign, _, bound) in enumerate(checks))
    return (lambda x: math.isfinite(x) and all(holds(x, bound) for _, holds, bound in checks)), rule


def finite_float(**bounds: float) -> Callable[[float | None], float | None]:
    """A typer callback: the option's value is a finite number within ``bounds`` (``gt``, ``ge``,
    ``lt``, ``le``, as in ``finite_float(ge=0, le=1)``); an unset optional value (None) passes."""
    ok, rule = _within(bounds)

    def check(value: float | None) -> float | None:
        if value is not None and not ok(value):
            raise typer.BadParameter(f"must be a finite number{rule}, got {value:g}")
        return value

    return check


def finite_floats(**bounds: float) -> Callable[[str | None], str | None]:
    """:func:`finite_float` for a comma-separated list (``"0.5,1,2"``; ``""`` for none); the
    option keeps its text."""
    ok, rule = _within(bounds)

    def number_ok(item: str) -> bool:
        try:
            return ok(float(item))
        except ValueError:
            return False

    def check(text: str | None) -> str | None:
        if not all(number_ok(item) for item in (text or "").split(",") if item.strip()):
            raise typer.BadParameter(f"must be comma-separated finite numbers{rule}, got {text!r}")
        return text

    return check


positive = finite_float(gt=0)  # learning rates, standard deviations
non_negative = finite_float(ge=0)  # penalties, clipping norms (0: none)
fraction = finite_float(ge=0, le=1)  # shares and scores in [0, 1]
open_fraction = finite_float(gt=0, lt=1)  # probabilities that must leave room on both sides


def parse_options(items: list[str] | None) -> dict:
    """``["lam=1e-3", "neumann_orders=6"]`` -> ``{"lam": 0.001, "neumann_orders": 6}`` (JSON values;
    NaN and infinities are refused)."""
    from probekit.tasks import json_value

    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"option {item!r} is not of the form key=value")
        key = key.strip().replace("-", "_")
        out[key] = json_value(raw, f"option {key!r}")
    return out


def print_json(obj) -> None:
    import sys

    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
