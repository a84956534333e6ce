"""The README's plugin example runs as written, and its commands exist."""

import re
import types
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_plugin_example_probes_a_store(tiny_store):
    from probekit.plugin.host import PluginHost, get_plugin_manager
    from probekit.probes.run import ProbeSettings, run_probe

    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "probekit_register_hypotheses" in b)
    mod = types.ModuleType("readme_plugin")
    exec(compile(block, "README.md", "exec"), mod.__dict__)
    host = PluginHost(get_plugin_manager(pin=["rls"], plugins=[mod]))
    results, _ = run_probe(host, tiny_store, "prev-input", ProbeSettings(n_folds=3, baselines=False))
    assert list(results.target.values) == ["prev_x"]
    assert results.r2.sel(condition="model").max() > 0.3


def test_readme_commands_are_real():
    from probekit.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    used = set(re.findall(r"^probekit (\w+)", README, re.M)) | set(re.findall(r"probekit (\w+)\b", README))
    used &= {"train", "cache", "probe", "plugins", "demo", "compare", "patch", "heads"}
    assert used <= commands, used - commands
    assert "bash scripts/setup.sh && .venv/bin/probekit demo" in README
    assert "bash scripts/test.sh" in README
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
