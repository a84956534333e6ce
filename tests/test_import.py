"""``import probekit`` (and the CLI's --help) stay light: no torch, zarr, scikit-learn, xarray or matplotlib;
the public API resolves lazily (PEP 562), each name to the object in its home module."""

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


def test_import_probekit_alone_loads_not_even_numpy():
    out = subprocess.run([sys.executable, "-c", "import sys, probekit; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert not {m.split(".")[0] for m in out} & {*HEAVY, "numpy", "pluggy"}


def test_what_a_plugin_imports_is_light():
    """A plugin module is imported whenever a host is built (``probekit plugins``, every command)."""
    names = "hookimpl, Task, ModelIO, Hypothesis, Target, ModelAdapter, require, UsageError, PluginHost"
    assert loaded_after(f"from probekit import {names}") == set()


def test_every_public_name_resolves_to_its_home():
    import importlib

    import probekit

    assert len(set(probekit.__all__)) == len(probekit.__all__)
    for name in probekit.__all__:
        if name == "__version__":
            continue
        home = importlib.import_module(probekit._HOMES[name])
        assert getattr(probekit, name) is getattr(home, name), name
    assert set(probekit.__all__) <= set(dir(probekit))


def test_testing_is_a_lazy_subpackage_and_unknown_names_fail():
    import pytest

    import probekit
    from probekit import testing

    assert probekit.testing is testing and callable(testing.check_hypothesis)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        probekit.no_such_name  # noqa: B018


def test_cli_help_is_light():
    code = ("import sys; sys.argv=['probekit','--help']\n"
            "from probekit.cli import run\n"
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()): run(['--help'])")
    assert loaded_after(code) == set()
