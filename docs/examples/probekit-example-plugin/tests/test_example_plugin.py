"""The example plugin passes probekit's conformance suite, is found through its entry point,
and probes a store end to end through the ``probekit`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from probekit_example import GaussianMean, RunningMean

from probekit import testing
ENV = {k: v for k, v in os.environ.items() if k != "PROBEKIT_LOAD_PLUGINS"}  # every installed plugin loads


def probekit(*args: str, cwd) -> str:
    """Run the installed ``probekit`` command; return its stdout."""
    res = subprocess.run([sys.executable, "-m", "probekit", *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, f"probekit {' '.join(args)}: {res.stderr}"
    return res.stdout


def test_task_conforms():
    testing.check_task(GaussianMean, {"dim": 2, "length": 6}, name="gaussian-mean")


def test_hypothesis_conforms():
    task = GaussianMean(dim=2, length=6, prior_std=2.0)
    targets = testing.check_hypothesis(RunningMean, task=task, name="running-mean")
    # the posterior mean is the running mean shrunk by (t + 1) / (t + 1 + r), r = noise^2 / prior^2 = 1/4
    t = np.arange(1, 7)[None, :, None]
    np.testing.assert_allclose(targets.posterior_mean.values, targets.running_mean.values * t / (t + 0.25))
    testing.check_hypothesis(RunningMean, task=task, options={"ratio": 0.0})


def test_registered_through_the_entry_point():
    from probekit import PluginHost

    host = PluginHost.default(pin=["example"])
    assert host.tasks.get("gaussian-mean") is GaussianMean
    assert host.hypotheses.get("running-mean") is RunningMean
    row = next(r for r in host.describe() if r["plugin"] == "example")
    assert row["distribution"].startswith("probekit-example-plugin")
    assert row["hooks"] == ["probekit_register_hypotheses", "probekit_register_tasks"]


def test_probekit_plugins_lists_it(tmp_path):
    rows = {r["plugin"]: r for r in json.loads(probekit("plugins", "--json", cwd=tmp_path))}
    assert rows["example"]["tasks"] == ["gaussian-mean"] and rows["example"]["hypotheses"] == ["running-mean"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A toy transformer trained on gaussian-mean, cached with a random-init twin."""
    cwd = tmp_path_factory.mktemp("e2e")
    probekit("train", "--task", "gaussian-mean", "--out", "model", "--steps", "200", "--layers", "2", "--width", "16",
             "--heads", "2", "--batch-size", "64", "--json", cwd=cwd)
    probekit("cache", "--model", "toy:model", "--out", "gm.zarr", "-n", "300", "--random-init", "--json", cwd=cwd)
    return cwd / "gm.zarr"


def test_probe_end_to_end(store):
    testing.assert_store_valid(store)
    out = probekit("probe", str(store), "--hypothesis", "running-mean", "--folds", "3", "--n-boot", "100", "--json",
                   cwd=store.parent)
    records = json.loads(out)["records"]
    r2 = {(r["condition"], r["layer"], r["target"]): r["r2"] for r in records}
    last = max(layer for _, layer, _ in r2)
    assert {t for _, _, t in r2} == {"running_mean", "posterior_mean"}
    # the trained model holds its estimate of the hidden mean; shuffled targets do not fit
    assert r2[("model", last, "posterior_mean")] > 0.5
    assert r2[("model", last, "posterior_mean")] > r2[("shuffled", last, "posterior_mean")] + 0.4
    assert (store.parent / "gm.running-mean.png").is_file()
    testing.assert_store_valid(store)  # with its probes/running-mean/<id> group
