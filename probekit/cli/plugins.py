"""``probekit plugins``: what is installed and what each plugin registered."""

from __future__ import annotations

import typer

from probekit.cli import app
from probekit.cli._common import print_json, stdout_console


@app.command("plugins")
def plugins_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List plugins, the hooks they implement, and the tasks, models and hypotheses they registered."""
    from rich.table import Table

    from probekit.plugin.host import ENV_PIN, PluginHost

    rows = PluginHost.default().describe()
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"probekit plugins (pin with {ENV_PIN}=a,b)")
    for col in ("plugin", "distribution", "hooks", "tasks", "models", "hypotheses"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["plugin"], r["distribution"], "\n".join(h.removeprefix("probekit_") for h in r["hooks"]),
                      ", ".join(r["tasks"]), ", ".join(r["models"]), ", ".join(r["hypotheses"]))
    stdout_console().print(table)
