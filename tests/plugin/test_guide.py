"""The plugin guide's four answers (docs/plugins.md), each checked on the guide's own plugin:

1. ``fitted()`` is called on every probe, fitted or not; one that raises before ``fit`` is named;
2. ``compute(ds)`` receives the whole store, per-sequence ``(sample, ...)`` variables included;
3. the targets Dataset's layout (``<name>_dim`` of size 1 for scalar targets, ``<name>_mask``);
4. ``compare`` says in one line when a task declares no ``ood_param`` and skips the sweep.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from probekit import PluginError, PluginHost, Target, testing
from probekit.cli import run
from test_docs import GUIDE, write_guide_files


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    """The guide's plugin module (``my_plugin.py``, written from the guide's code blocks)."""
    out = tmp_path_factory.mktemp("guide")
    write_guide_files(GUIDE.read_text(), out)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("my_plugin")
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("my_plugin", None)


@pytest.fixture(scope="module")
def walks(guide):
    """A store-like Dataset of the guide's task: what ``compute(ds)`` receives."""
    return guide.RandomWalk(dim=2, length=6).generate(16, seed=3)


def test_1_fitted_is_recorded_with_every_result_without_fit(guide, walks):
    tds = guide.Drift(prior=2.0).targets(walks)  # what `probe` calls; fit() never is
    assert tds.attrs["fitted"] == {} and tds.attrs["options"] == {"prior": 2.0}


def test_1_a_fitted_that_raises_before_fit_is_named(guide, walks):
    class Fragile(guide.Drift):
        name = "fragile"

        def fitted(self):
            return {"prior": self.learned}  # `learned` exists only after fit()

    with pytest.raises(PluginError, match=r"fitted\(\) raised AttributeError.*must work before fit\(\)"):
        Fragile().targets(walks)
    with pytest.raises(AssertionError, match=r"fitted_before_fit.*return \{\}"):
        testing.check_hypothesis(Fragile, walks)


def test_2_compute_sees_per_sequence_variables(guide, walks):
    class TrueDrift(guide.Drift):
        name = "true-drift"

        def compute(self, ds):
            drift = np.asarray(ds["drift"].values)  # (sample, x_dim): not in `requires`, still there
            T = ds.sizes["pos"]
            return [Target("drift", np.repeat(drift[:, None, :], T, axis=1), np.ones((len(drift), T), bool),
                           "the walk's true drift")]

    assert walks["drift"].dims == ("sample", "x_dim")
    tds = TrueDrift().targets(walks)
    np.testing.assert_array_equal(tds["drift"].values[:, 3], walks["drift"].values)


def test_3_the_targets_layout(guide, walks):
    class Scalar(guide.Drift):
        name = "scalar"

        def compute(self, ds):
            x = np.asarray(ds["x"].values)
            return [Target("norm", np.linalg.norm(x, axis=-1), np.ones(x.shape[:2], bool), "|x_t|", expected_layer=1),
                    *super().compute(ds)]

    tds = Scalar().targets(walks)
    assert tds["norm"].dims == ("sample", "pos", "norm_dim") and tds.sizes["norm_dim"] == 1  # scalar: size 1
    assert tds["last_step"].dims == ("sample", "pos", "last_step_dim") and tds.sizes["last_step_dim"] == 2
    assert tds["norm_mask"].dtype == bool and tds["norm_mask"].dims == ("sample", "pos")
    assert not tds["last_step_mask"].values[:, 0].any() and tds["last_step_mask"].values[:, 1:].all()
    assert tds["norm"].attrs["kind"] == "continuous" and tds["norm"].attrs["expected_layer"] == 1
    assert "expected_layer" not in tds["drift_pred"].attrs and tds["drift_pred"].attrs["description"]
    assert {"hypothesis", "options", "fitted"} <= set(tds.attrs)


def test_4_compare_says_when_a_task_has_no_ood_param(tmp_path, capsys):
    """``coin`` declares no ood_param: compare runs, skips the sweep, and says why in one line."""
    host = PluginHost.default()
    assert getattr(host.tasks.get("coin"), "ood_param", None) is None
    model = tmp_path / "coin"
    assert run(["train", "--task", "coin", "-p", "length=12", "--steps", "5", "--layers", "1", "--width", "16",
                "--heads", "1", "--batch-size", "8", "--out", str(model), "--json"]) == 0
    capsys.readouterr()
    code = run(["compare", "--model", f"toy:{model}", "-H", "bayes", "-n", "40", "--fit-samples", "40",
                "--ood", "0.5,2", "--plot", str(tmp_path / "c.png"), "--json"])
    err = capsys.readouterr().err
    assert code == 0, err
    notes = [line for line in err.splitlines() if "out-of-distribution" in line]
    assert len(notes) == 1 and "task 'coin' declares no ood_param" in notes[0], err
