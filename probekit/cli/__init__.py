"""The ``probekit`` command: a typer app with one thin module per command.

Errors raised on purpose (:class:`probekit.errors.ProbekitError`) and click's usage errors
(an unknown or missing option, a bad value, an unknown command) print as one line
``error: ...`` on stderr with exit code 2 (usage) or 1 (failure); any other
exception prints one line too. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from probekit import __version__

app = typer.Typer(
    name="probekit",
    help="Test hypotheses about what transformers compute in context: train, cache, probe.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"probekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """probekit: cache activations to zarr, probe them per layer against pluggable hypotheses."""


from probekit.cli import cache, compare, demo, heads, icl, patch, plugins, probe, train, verify  # noqa: E402  (commands register on `app`)

__all__ = ["app", "main", "run", "cache", "compare", "demo", "icl", "heads", "patch", "plugins", "probe", "train", "verify"]


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return its exit code (errors become one line on stderr)."""
    from probekit.errors import ProbekitError

    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        with warnings.catch_warnings():
            if not debug:  # a warning is one line too, not the source line that raised it
                warnings.showwarning = _one_line_warning
            app(args=argv, prog_name="probekit", standalone_mode=False)
    except ProbekitError as exc:
        if debug:
            raise
        typer.echo("error: " + " ".join(line.strip() for line in str(exc).splitlines() if line.strip()), err=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted (an interrupted cache resumes when you rerun the same command)", err=True)
        return 130
    except Exception as exc:  # click usage errors and anything unexpected
        code = _click_error(exc)
        if code is not None:
            return code
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {_first_line(exc)} (rerun with --debug for the traceback)", err=True)
        return 1
    return 0


def _first_line(exc: BaseException) -> str:
    """An error message as one line (the first line of a multi-line one: --debug shows it all)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    (file or sys.stderr).write(f"warning: {text}\n")


def _click_error(exc: Exception) -> int | None:
    """Show an error of click (a bad or missing option, an unknown command) as one line and return
    its exit code (2 for usage errors); None if ``exc`` is not click's.

    Recent typer ships its own copy of click (``typer._click``), older ones use the click package:
    both are recognised, through the module of ``typer.BadParameter`` and, if it is loaded, click's.
    """
    modules = {sys.modules.get(typer.BadParameter.__module__), sys.modules.get("click.exceptions")} - {None}
    if not isinstance(exc, tuple(m.ClickException for m in modules)):
        return None
    if isinstance(exc, tuple(m.NoArgsIsHelpError for m in modules if hasattr(m, "NoArgsIsHelpError"))):
        exc.show()  # a command run without arguments: its help
    else:
        typer.echo(f"error: {exc.format_message()}", err=True)
    return exc.exit_code


def main() -> None:
    sys.exit(run())
