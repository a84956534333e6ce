"""``probekit verify``: the fsck of a store (every chunk read, checksums and manifests checked)."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from probekit.cli import app
from probekit.cli._common import parse_storage_options, print_json, progress, stdout_console, storage_option

STYLE = {"ok": "green", "incomplete": "yellow", "damaged": "bold red"}


@app.command()
def verify(
    store: str = typer.Argument(..., help="Store to check (written by `probekit cache`): a folder or an "
                                "object-store URL."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    storage: Optional[List[str]] = storage_option(),
) -> None:
    """Read every chunk of every group of STORE, checking crc32c checksums, that every zarr.json
    parses and that every block the manifest lists is on disk. Exit 0 if intact (or incomplete:
    resumable), 1 if damaged. Example: `probekit verify store/demo/demo.zarr --json`."""
    from probekit.errors import StoreError
    from probekit.store.integrity import verify_store
    from probekit.store.location import Location

    where = Location(store, parse_storage_options(storage))
    store = where.url if where.remote else where.path
    # the bar only on a terminal: a damaged store's report ends with exactly one error line
    with progress(f"verify {where.name}", 1, "chunks", enabled=not as_json and sys.stderr.isatty()) as update:
        report = verify_store(store, storage_options=where.options,
                              on_progress=lambda done, total, info: update(done, info=info, total=total))
    if as_json:
        print_json(report)
    else:
        _print_table(report)
    if report["status"] == "damaged":
        problems = report["problems"]
        more = f" (and {len(problems) - 1} more: see the report)" if len(problems) > 1 else ""
        raise StoreError(f"{store}: {len(problems)} problem{'s' * (len(problems) > 1)}: {problems[0]}{more}")


def _print_table(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"probekit verify {report['store']}")
    for col in ("group", "variable", "chunks", "status", "detail"):
        table.add_column(col, overflow="fold", justify="right" if col == "chunks" else "left")
    for r in report["rows"]:
        table.add_row(r["group"], r["variable"], str(r["chunks"]) if r["chunks"] else "",
                      f"[{STYLE[r['status']]}]{r['status']}[/]", r["detail"])
    out = stdout_console()
    out.print(table)
    if report["status"] == "intact":
        out.print(f"{report['store']}: intact ({report['chunks']} chunks read, checksums and manifests agree)")
    elif report["status"] == "incomplete":
        out.print(f"{report['store']}: incomplete (not damaged): rerun the cache command to resume")
