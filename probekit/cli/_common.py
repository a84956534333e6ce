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
    """Tables on stdout. In a pipe or a file (not a terminal) lines are never wrapped, so a name
    is never broken mid-word (``COLUMNS`` still sets a width if given)."""
    import os
    import sys

    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS", "0") or 0) or 10_000, soft_wrap=True)


THREADS_HELP = ("torch CPU threads (0 = automatic: OMP_NUM_THREADS if set, else the cores this process may use "
                "that the load average says are idle; shown in the progress line).")


def threads_option():
    """The ``--threads`` option every command that computes takes (0 = :func:`probekit.threads.choose_threads`)."""
    return typer.Option(0, "--threads", min=0, help=THREADS_HELP)


def use_threads(requested: int) -> None:
    """Set torch's threads for this command (see :mod:`probekit.threads`)."""
    from probekit.threads import apply_threads

    apply_threads(requested)


@contextlib.contextmanager
def progress(description: str, total: int, unit: str = "it", *, enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr with rate and ETA; yields ``update(completed, **fields)``.

    The bar appears at the first update, so a command that fails while validating
    its input prints only its one-line error; a disabled bar prints nothing at all.
    """
    if not enabled:
        yield lambda *args, **kwargs: None
        return
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
        info = f"{info} · {_threads_note()}" if info else _threads_note()
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


def _threads_note() -> str:
    """``"2 threads"`` once torch is loaded (the number the work really uses), else ``""``."""
    import sys

    torch = sys.modules.get("torch")
    return f"{torch.get_num_threads()} threads" if torch is not None else ""


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


STORAGE_OPTION_HELP = ("Option of an object-store URL (s3://, gs://, any fsspec URL) as key=value, repeatable: "
                       "endpoint_url=http://127.0.0.1:9000, profile=NAME, anon=true, key=..., secret=...; "
                       "values are JSON where they parse; a dotted key nests (client_kwargs.region_name=eu-west-1).")


def storage_option():
    """The ``--storage-option`` option every command that takes a store path takes."""
    return typer.Option(None, "--storage-option", help=STORAGE_OPTION_HELP)


def parse_storage_options(items: list[str] | None) -> dict | None:
    """``["endpoint_url=http://h:9000", "anon=true", "client_kwargs.region_name=x"]`` ->
    ``{"endpoint_url": "http://h:9000", "anon": True, "client_kwargs": {"region_name": "x"}}``
    (None when none are given). Values are JSON where they parse, else the text itself; keys
    keep their spelling (fsspec's names have underscores)."""
    if not items:
        return None
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"--storage-option {item!r} is not of the form key=value")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--storage-option {item!r}: {part} is already given a value")
        node[last] = value
    return out


def dask_option(what: str):
    return typer.Option(False, "--dask", help=f"{what} on a dask cluster (a local one of --workers processes).")


def scheduler_option():
    return typer.Option(None, help="Address of a running dask scheduler, e.g. tcp://host:8786 (implies --dask).")


def workers_option():
    return typer.Option(2, min=1, help="Worker processes of the local dask cluster (--dask).")


def worker_resources_option():
    return typer.Option(None, "--worker-resources", help="dask resources each block holds on its worker, "
                        "NAME=AMOUNT (repeatable), e.g. GPU=1 for one model per GPU on workers started with "
                        "--resources GPU=1.")


def parse_resources(items: list[str] | None) -> dict | None:
    """``["GPU=1"]`` -> ``{"GPU": 1.0}``: dask resources each job holds on its worker."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        try:
            amount = float(raw)
        except ValueError:
            amount = float("nan")
        if not sep or not key.strip() or not (amount > 0 and amount != float("inf")):
            raise UsageError(f"--worker-resources {item!r} is not of the form NAME=AMOUNT (AMOUNT > 0), "
                             "e.g. GPU=1")
        out[key.strip()] = amount
    return out
