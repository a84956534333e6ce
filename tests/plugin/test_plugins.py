"""The plugin system: fresh managers, third-party registration, duplicates, broken plugins, pinning."""

import types
import warnings
from importlib import metadata

import numpy as np
import pytest

from probekit.errors import PluginError, ProbekitWarning, UnknownNameError
from probekit.plugin.hookspecs import hookimpl
from probekit.targets.hypothesis import Hypothesis, Target
from probekit.plugin.host import PluginHost, get_plugin_manager


class LastInput(Hypothesis):
    """A third-party hypothesis: the previous position's input (defined from t = 1)."""

    name = "last-input"
    requires = ("x",)

    def compute(self, ds):
        x = ds["x"].values
        prev = np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
        mask = np.ones(x.shape[:2], bool)
        mask[:, 0] = False
        return [Target("prev_x", prev, mask, "x_{t-1}", expected_layer=1)]


def make_plugin(name, **hooks):
    """A plugin module named ``name`` implementing ``hooks`` (hook name -> function)."""
    mod = types.ModuleType(name)
    for hook, func in hooks.items():
        setattr(mod, hook, hookimpl(func))
    return mod


def third_party_plugin():
    return make_plugin("probekit_lastinput",
                       probekit_register_hypotheses=lambda register: register("last-input", LastInput))


def test_third_party_plugin_is_listed_and_usable(tiny_store):
    from probekit.probes.run import ProbeSettings, run_probe

    host = PluginHost(get_plugin_manager(pin=["rls"], plugins=[third_party_plugin()]))
    assert "last-input" in host.hypotheses.names()
    row = next(r for r in host.describe() if r["hypotheses"] == ["last-input"])
    assert row["hooks"] == ["probekit_register_hypotheses"]
    results, key = run_probe(host, tiny_store, "last-input", ProbeSettings(n_folds=3, baselines=True))
    assert key.startswith("probes/last-input/")
    assert list(results.target.values) == ["prev_x"]
    r2 = results.r2.sel(site="resid", target="prev_x")
    # the previous input cannot be read from embeddings of the current one, and attention can fetch it
    assert float(r2.sel(condition="model", layer=0)) < 0.2
    assert float(r2.sel(condition="model").max()) > float(r2.sel(condition="shuffled").max()) + 0.3


def test_managers_are_independent():
    a = PluginHost(get_plugin_manager(pin=["rls"], plugins=[third_party_plugin()]))
    b = PluginHost(get_plugin_manager(pin=["rls"]))
    assert "last-input" in a.hypotheses and "last-input" not in b.hypotheses


def test_duplicate_names_are_rejected_naming_both_plugins():
    clash = make_plugin("clashing_plugin", probekit_register_hypotheses=lambda register: register("rls", LastInput))
    with pytest.raises(PluginError, match=r"'rls' is registered twice: by plugin '.*' and by plugin '.*'"):
        PluginHost(get_plugin_manager(pin=["rls"], plugins=[clash]))


def test_unknown_names_list_the_choices(host):
    with pytest.raises(UnknownNameError, match=r"unknown hypothesis 'rsl'; choose from: rls"):
        host.hypotheses.get("rsl")
    with pytest.raises(UnknownNameError, match=r"unknown task 'lsd'; choose from: lds"):
        host.tasks.get("lsd")
    with pytest.raises(UnknownNameError, match=r"unknown model scheme 'gpt'; choose from: hf, nnsight, tlens, torch, toy"):
        host.models.get("gpt")


def test_a_plugin_that_fails_to_import_warns_and_the_rest_works(monkeypatch):
    monkeypatch.delenv("PROBEKIT_LOAD_PLUGINS", raising=False)  # conftest pins the built-ins; load every one
    real = list(metadata.entry_points(group="probekit"))
    broken = metadata.EntryPoint(name="broken", value="probekit_no_such_module_xyz", group="probekit")
    monkeypatch.setattr("probekit.plugin.host.metadata.entry_points", lambda group: real + [broken])
    with pytest.warns(ProbekitWarning, match="plugin 'broken'.*failed to import"):
        host = PluginHost(get_plugin_manager())
    assert "rls" in host.hypotheses and "lds" in host.tasks


def test_a_plugin_that_raises_in_its_hook_is_a_plugin_error():
    def boom(register):
        raise RuntimeError("boom")

    bad = make_plugin("bad_plugin", probekit_register_tasks=boom)
    with pytest.raises(PluginError, match="failed in probekit_register_tasks: RuntimeError: boom"):
        PluginHost(get_plugin_manager(entry_points=False, plugins=[bad]))


def test_pinning_with_the_environment(monkeypatch):
    monkeypatch.setenv("PROBEKIT_LOAD_PLUGINS", "")
    host = PluginHost(get_plugin_manager())
    assert host.hypotheses.names() == [] and host.models.names() == ["hf", "nnsight", "tlens", "torch", "toy"]  # core defaults always load
    monkeypatch.setenv("PROBEKIT_LOAD_PLUGINS", "rls,nope")
    with pytest.warns(ProbekitWarning, match="names plugin 'nope', which is not installed"):
        host = PluginHost(get_plugin_manager())
    assert host.hypotheses.names() == ["rls"]


def test_builtin_plugins_come_from_entry_points():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="probekit")}
    assert eps.get("rls") == "probekit_rls"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = PluginHost(get_plugin_manager(pin=["rls"])).describe()
    rls = next(r for r in rows if r["plugin"] == "rls")
    assert rls["distribution"].startswith("probekit-lab")
    assert rls["tasks"] == ["lds"] and rls["hypotheses"] == ["rls"]


def test_a_hypothesis_that_crashes_is_a_plugin_error_naming_it(tiny_store):
    from probekit.probes.run import run_probe

    class Broken(Hypothesis):
        name = "broken"
        requires = ("x",)

        def compute(self, ds):
            return 1 / 0

    host = PluginHost(get_plugin_manager(pin=["rls"], plugins=[
        make_plugin("broken_plugin", probekit_register_hypotheses=lambda register: register("broken", Broken))]))
    with pytest.raises(PluginError, match="hypothesis 'broken' failed computing its targets: ZeroDivisionError"):
        run_probe(host, tiny_store, "broken")
