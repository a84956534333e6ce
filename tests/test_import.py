"""``import probekit`` (and the CLI's --help) stay light: no torch, zarr or scikit-learn."""

import subprocess
import sys

HEAVY = ("torch", "zarr", "sklearn", "xarray", "matplotlib")


def loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "; import sys; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return {m.split(".")[0] for m in out} & set(HEAVY)


def test_import_probekit_is_light():
    assert loaded_after("import probekit, probekit.plugin.host, probekit.plugin.hookspecs, probekit.errors") == set()


def test_cli_help_is_light():
    code = ("import sys; sys.argv=['probekit','--help']\n"
            "from probekit.cli import run\n"
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()): run(['--help'])")
    assert loaded_after(code) == set()
