"""Bad numbers, bad names and bad command lines: refused when the line is read, in one line that
names the option, with exit code 2 for a usage error and 1 for a failure (issue 13, behaviours 6,
8 and 9).

Each ``fails(...)`` case asserts the exit code, one ``error:`` line, no traceback and a work
directory byte-identical afterwards (see ``conftest.py``). Nothing here trains or caches: every
case fails before any work, so the file runs in seconds.
"""

from __future__ import annotations

import sys
import types
from importlib import metadata

import pytest

from probekit.cli import run
from probekit.plugin.hookspecs import hookimpl
from probekit.targets.hypothesis import Hypothesis
from probekit.plugin.host import ENTRY_POINT_GROUP, ENV_PIN

CACHE = ["cache", "--model", "toy:model", "--out", "new.zarr"]
TRAIN = ["train", "--out", "new-model"]
PROBE = ["probe", "store.zarr", "-H", "rls"]
HEADS = ["heads", "--model", "toy:model"]
ICL = ["icl", "--model", "toy:model"]
COMPARE = ["compare", "--model", "toy:model", "-H", "gd"]
PATCH = ["patch", "--model", "toy:model", "--task", "repeated-tokens"]


# -- click's usage errors: exit 2, one line naming the option (they exited 1 with the exception's
#    class name, or printed click's Usage block) -------------------------------------------------

@pytest.mark.parametrize("argv, match", [
    ([*CACHE, "--bogus", "1"], "No such option: --bogus"),
    ([*PROBE, "--fold", "3"], "No such option: --fold"),
    (["cahce", "--model", "toy:model"], "No such command 'cahce'"),
    (["cache", "--model", "toy:model"], "Missing option '--out'"),
    (["probe", "store.zarr"], "Missing option '--hypothesis'"),
    (["probe"], "Missing argument"),
    ([*CACHE, "--batch-size", "x"], "--batch-size"),
    ([*CACHE, "-n", "1.5"], "--n-samples"),
    ([*PROBE, "--folds", "five"], "--folds"),
    ([*TRAIN, "--lr", "fast"], "--lr"),
    ([*CACHE, "--random-init=maybe"], "--random-init"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_command_line_errors_exit_2(fails, argv, match):
    fails(2, *argv, match=match)


# -- numbers out of range, NaN and infinities: refused at parse time, naming the option ----------

@pytest.mark.parametrize("argv, match", [
    # cache (--batch-size 0 was `ValueError: range() arg 3 must not be zero`, after making the store)
    ([*CACHE, "--batch-size", "0"], "--batch-size"),
    ([*CACHE, "-n", "0"], "--n-samples"),
    ([*CACHE, "--block", "0"], "--block"),
    ([*CACHE, "--max-len", "0"], "--max-len"),
    ([*CACHE, "--seed", "-1"], "--seed"),
    # train
    ([*TRAIN, "--steps", "0"], "--steps"),
    ([*TRAIN, "--batch-size", "-4"], "--batch-size"),
    ([*TRAIN, "--layers", "0"], "--layers"),
    ([*TRAIN, "--width", "0"], "--width"),
    ([*TRAIN, "--lr", "nan"], "--lr"),
    ([*TRAIN, "--lr", "0"], "--lr"),
    ([*TRAIN, "--lr", "inf"], "--lr"),
    ([*TRAIN, "--weight-decay", "-1"], "--weight-decay"),
    ([*TRAIN, "--weight-decay", "nan"], "--weight-decay"),
    ([*TRAIN, "--warmup", "1.5"], "--warmup"),
    ([*TRAIN, "--grad-clip", "-1"], "--grad-clip"),
    ([*TRAIN, "--init-std", "0"], "--init-std"),
    ([*TRAIN, "--threads", "-1"], "--threads"),
    ([*TRAIN, "--checkpoint-every", "-1"], "--checkpoint-every"),
    # heads (--threshold nan was accepted)
    ([*HEADS, "--threshold", "nan"], "--threshold"),
    ([*HEADS, "--threshold", "1.5"], "--threshold"),
    ([*HEADS, "--repeats", "1"], "--repeats"),
    ([*HEADS, "-n", "0"], "--n-samples"),
    ([*HEADS, "--early", "-1"], "--early"),
    # icl
    ([*ICL, "--epsilon", "nan"], "--epsilon"),
    ([*ICL, "--epsilon", "1"], "--epsilon"),
    ([*ICL, "--count", "0"], "--count"),
    # compare (--ood nan was accepted)
    ([*COMPARE, "--ood", "1,nan"], "--ood"),
    ([*COMPARE, "--ood", "1,-2"], "--ood"),
    ([*COMPARE, "--fit-samples", "0"], "--fit-samples"),
    # patch
    ([*PATCH, "-n", "0"], "--n-pairs"),
    ([*PATCH, "--batch-size", "0"], "--batch-size"),
    # probe
    ([*PROBE, "--n-boot", "-1"], "--n-boot"),
    ([*PROBE, "--folds", "2"], "folds must be >= 3"),
    ([*PROBE, "--seed", "-3"], "--seed"),
    # demo (never reaches training)
    (["demo", "--out", "demo", "--steps", "0"], "--steps"),
    (["demo", "--out", "demo", "-n", "0"], "--n-samples"),
], ids=lambda v: " ".join(v[-2:]) if isinstance(v, list) else None)
def test_bad_numbers_are_refused_naming_the_option(fails, argv, match):
    fails(2, *argv, match=match)


def test_zero_dask_workers_fail_before_a_cluster_starts(fails, monkeypatch):
    """``probe --dask --workers 0`` hung forever waiting for workers."""

    def no_cluster(*args, **kwargs):
        raise AssertionError("a dask cluster was started")

    monkeypatch.setattr("probekit.executors.dask_executor", no_cluster)
    fails(2, *PROBE, "--dask", "--workers", "0", match="--workers")


# -- task parameters (-p) and hypothesis options (-o) ---------------------------------------------

@pytest.mark.parametrize("argv, match", [
    # NaN was blamed on "the model itself", after the store was made
    ([*CACHE, "-p", "sigma=NaN"], "parameter 'sigma' must be a finite number, got 'NaN'"),
    ([*CACHE, "-p", "clip=Infinity"], "parameter 'clip' must be a finite number"),
    ([*CACHE, "-p", "sigma=1e999"], "parameter 'sigma' must be a finite number"),
    ([*TRAIN, "--steps", "1", "--task", "linreg-ahn", "-p", "scales=[1, NaN, 1, 1, 1]"],
     "parameter 'scales' must hold finite numbers only"),
    # sizes: each task's Params refuses them, naming the parameter
    ([*TRAIN, "-p", "dim=0"], "dim >= 1"),
    ([*TRAIN, "--task", "coin", "-p", "length=0"], "length >= 1"),
    ([*TRAIN, "--task", "repeated-segments", "-p", "vocab=0"], "vocab >= 3"),
    ([*TRAIN, "--task", "markov", "-p", "states=1"], "states >= 2"),
    # malformed
    ([*TRAIN, "-p", "dim"], "parameter 'dim' is not of the form key=value"),
    ([*TRAIN, "-p", "dim=2.5"], "parameter 'dim' must be a int"),
    ([*TRAIN, "-p", "dimm=3"], "unknown parameter 'dimm'"),
    ([*PROBE, "-o", "lam=NaN"], "option 'lam' must be a finite number, got 'NaN'"),
    ([*PROBE, "-o", "lam=-Infinity"], "option 'lam' must be a finite number"),
    ([*PROBE, "-o", "lam"], "option 'lam' is not of the form key=value"),
    ([*PROBE, "-o", "lamda=1"], "hypothesis 'rls' has no option 'lamda'"),
], ids=lambda v: " ".join(v[-2:]) if isinstance(v, list) else None)
def test_bad_task_parameters_and_options(fails, argv, match):
    fails(2, *argv, match=match)


# -- unknown names: exit 2, listing the choices ---------------------------------------------------

@pytest.mark.parametrize("argv, match", [
    (["train", "--task", "lsd", "--out", "new-model"], "unknown task 'lsd'; choose from:"),
    (["train", "--model", "big", "--out", "new-model"], "unknown model preset 'big'"),
    (["cache", "--model", "gpt:foo", "--out", "new.zarr"], "unknown model scheme 'gpt'"),
    (["probe", "store.zarr", "-H", "rsl"], "unknown hypothesis 'rsl'"),
    ([*PROBE, "--site", "mlp_out"], "unknown site 'mlp_out'"),
    ([*PROBE, "-t", "nope"], "unknown target 'nope'"),
], ids=lambda v: " ".join(v[:2]) + " " + v[-1] if isinstance(v, list) else None)
def test_unknown_names_exit_2(fails, argv, match):
    fails(2, *argv, match=match)


# -- broken plugins: the rest works; the broken one is named -----------------------------------------

def _install(monkeypatch, name: str, module: types.ModuleType) -> None:
    """Make ``module`` an installed plugin entry point called ``name``, loaded with the built-ins."""
    real = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    ep = metadata.EntryPoint(name=name, value=module.__name__, group=ENTRY_POINT_GROUP)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr("probekit.plugin.host.metadata.entry_points", lambda group: real + [ep])
    monkeypatch.setenv(ENV_PIN, f"rls,{name}")


def _plugin(module_name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(module_name)
    for hook, func in hooks.items():
        setattr(mod, hook, hookimpl(func))
    return mod


def test_a_plugin_that_fails_to_import_is_skipped(fails, monkeypatch, capsys):
    real = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    broken = metadata.EntryPoint(name="broken", value="probekit_no_such_module_xyz", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr("probekit.plugin.host.metadata.entry_points", lambda group: real + [broken])
    monkeypatch.setenv(ENV_PIN, "rls,broken")
    fails(2, "probe", "store.zarr", "-H", "broken", match="unknown hypothesis 'broken'; choose from: rls")
    # the warning is one line of its own, naming the plugin
    assert run(["probe", "store.zarr", "-H", "broken"]) == 2
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert len(warned) == 1 and "plugin 'broken'" in warned[0] and "failed to import" in warned[0]


def test_a_plugin_whose_hook_raises_is_named(fails, monkeypatch):
    def boom(register):
        raise RuntimeError("boom")

    _install(monkeypatch, "boom", _plugin("probekit_boom_plugin", probekit_register_tasks=boom))
    fails(1, *PROBE, match="plugin 'boom' failed in probekit_register_tasks: RuntimeError: boom")


def test_a_hypothesis_that_crashes_is_named_and_the_store_kept(fails, monkeypatch):
    class Crashing(Hypothesis):
        name = "crashing"
        requires = ("x",)

        def compute(self, ds):
            return 1 / 0

    _install(monkeypatch, "crashing", _plugin(
        "probekit_crashing_plugin", probekit_register_hypotheses=lambda register: register("crashing", Crashing)))
    fails(1, "probe", "store.zarr", "-H", "crashing", "--n-boot", "0",
          match="hypothesis 'crashing' failed computing its targets: ZeroDivisionError")


def test_a_pin_that_loads_nothing_leaves_no_hypothesis(fails, monkeypatch):
    monkeypatch.setenv(ENV_PIN, "")
    fails(2, *PROBE, match="unknown hypothesis 'rls'; choose from: (none registered)")
