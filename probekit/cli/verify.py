"""``probekit verify``: the fsck of a store (every chunk read, checksums and manifests checked)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from probekit.cli import app
from probekit.cli._common import print_json, progress, stdout_console

STYLE = {"ok": "green", "incomplete": "yellow", "damaged": "bold red"}


@app.command()
def verify(
    store: Path = typer.Argument(..., help="Store to check (written by `probekit cache`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Read every chunk of every group of STORE, checking crc32c checksums, that every zarr.json
    parses and that every block the manifest lists is on disk. Exit 0 if intact (or incomplete:
    resumable), 1 if damaged. Example: `probekit verify store/demo/demo.zarr --json`."""
    from probekit.errors import StoreError
    from probekit.store.integrity import verify_store

    # the bar only on a terminal: a damaged store's report ends with exactly one error line
    with progress(f"verify {store.name}", 1, "chunks", enabled=not as_json and sys.stderr.isatty()) as update:
        report = verify_store(store, on_progress=lambda done, total, info: update(done, info=info, total=total))
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
