"""Shared CLI pieces: consoles, progress bars, option parsing."""

from __future__ import annotations

import contextlib
import json
from typing import Iterator

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


def parse_options(items: list[str] | None) -> dict:
    """``["lam=1e-3", "neumann_orders=6"]`` -> ``{"lam": 0.001, "neumann_orders": 6}`` (JSON values)."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"option {item!r} is not of the form key=value")
        try:
            out[key.strip().replace("-", "_")] = json.loads(raw)
        except ValueError:
            out[key.strip().replace("-", "_")] = raw
    return out


def print_json(obj) -> None:
    import sys

    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
