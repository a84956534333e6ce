"""The built-in plugins pass the conformance suite they ship to plugin authors (probekit.testing.checks).

Every task and hypothesis the built-in plugins register is checked, on small settings;
a new built-in is picked up automatically (its hypothesis paired with a task that has the
variables it requires), so it cannot skip the suite. The model adapters toy, torch and hf
are checked on tiny models, and stores written by ``probekit cache`` pass
``assert_store_valid``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from probekit import testing
from probekit.plugin.host import PluginHost

HOST = PluginHost.default()  # the built-in plugins (conftest pins them)

# Small settings per task; a task not listed here is checked with its defaults.
TASK_PARAMS = {
    "lds": {"dim": 3, "length": 10},
    "linreg": {"dim": 3, "n_points": 6},
    "linreg-ahn": {},
}
# The task whose stores a hypothesis is checked on; one not listed gets the first task
# (by name) whose samples hold every variable it requires.
HYPOTHESIS_TASK = {"rls": "lds", "gd": "linreg", "gdpp": "linreg", "pgd": "linreg-ahn"}


def _task(name: str):
    return HOST.tasks.get(name)(**TASK_PARAMS.get(name, {}))


def _variables(task_name: str) -> set[str]:
    """Variables of the task's samples (none for a text task, which a model's tokenizer feeds)."""
    task = _task(task_name)
    return set(task.generate(1, 0).variables) if testing.feeds_models(task) else set()


def _task_for(hyp_name: str) -> str:
    if hyp_name in HYPOTHESIS_TASK:
        return HYPOTHESIS_TASK[hyp_name]
    requires = set(HOST.hypotheses.get(hyp_name).requires)
    for task_name in HOST.tasks.names():
        if requires <= _variables(task_name):
            return task_name
    raise AssertionError(f"no built-in task provides what hypothesis {hyp_name!r} requires: {sorted(requires)}")


def _unsupported(task_name: str):
    """A store no hypothesis should accept silently: the task's variables with (pos, sample) swapped."""
    return _task(task_name).generate(4, 0).transpose("pos", "sample", ...)


@pytest.mark.parametrize("name", HOST.tasks.names())
def test_builtin_task_conforms(name):
    testing.check_task(HOST.tasks.get(name), TASK_PARAMS.get(name), name=name)


@pytest.mark.parametrize("name", HOST.hypotheses.names())
def test_builtin_hypothesis_conforms(name):
    task_name = _task_for(name)
    other = next((t for t in HOST.tasks.names() if _variables(t)
                  and not set(HOST.hypotheses.get(name).requires) <= _variables(t)), None)
    unsupported = [_unsupported(task_name)] + ([_task(other).generate(4, 0)] if other else [])
    testing.check_hypothesis(HOST.hypotheses.get(name), task=_task(task_name), name=name, unsupported=unsupported)


def test_the_builtins_are_all_checked():
    assert {"lds", "linreg", "linreg-ahn"} <= set(HOST.tasks.names())
    assert {"rls", "gd", "gdpp", "pgd"} <= set(HOST.hypotheses.names())


def test_toy_adapter_conforms(tiny_checkpoint):
    inputs = _task("lds").generate(3, 7)["x"].values
    adapter = testing.check_model_adapter(HOST.models.get("toy"), str(tiny_checkpoint), inputs=inputs,
                                          bad_rest="/nonexistent/checkpoint")
    assert set(adapter.sites) >= {"resid", "attn_out", "attn_pattern"}


def test_torch_adapter_conforms():
    inputs = HOST.tasks.get("lds")(dim=5, length=6).generate(3, 7)["x"].values  # the module reads 5 features
    testing.check_model_adapter(HOST.models.get("torch"), "support.custom_models:make_model?resid=blocks.*"
                                "&mlp_out=blocks.*.mlp", inputs=inputs, bad_rest="no_such_module:f?resid=x")


def test_hf_adapter_conforms(hf_models, tmp_path):
    gpt2 = hf_models["gpt2"][0]  # the tiny GPT-2 (and its tokenizer)
    adapter = HOST.models.get("hf").load(str(gpt2))
    ids, valid = adapter.tokenize(["the cat sat on the mat", "a dog ran"])
    assert not valid.all()
    testing.check_model_adapter(HOST.models.get("hf"), str(gpt2), inputs=ids, valid=valid,
                                bad_rest=str(tmp_path / "missing"))


def test_cached_stores_are_valid(tiny_store, tmp_path):
    import shutil

    from probekit.probes.run import ProbeSettings, run_probe
    from probekit.store.zarr_store import Store

    testing.assert_store_valid(tiny_store)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_store, copy)
    run_probe(HOST, copy, "rls", ProbeSettings(n_folds=3, n_boot=0, n_perm=2, targets=("rls_pred",)))
    testing.assert_store_valid(copy)  # with a probes/ group
    testing.assert_store_valid(Store.open(copy).dataset())  # a Dataset: schema.validate_store only


def test_assert_store_valid_names_the_problems(tiny_store, tmp_path):
    import shutil

    import zarr

    broken = tmp_path / "broken.zarr"
    shutil.copytree(tiny_store, broken)
    root = zarr.open_group(broken, mode="a", use_consolidated=False)
    del root.attrs["model_hash"]
    (broken / "probekit_manifest" / "done" / "c" / "0").unlink()  # block 0's marker: the store is incomplete
    with pytest.raises(AssertionError) as err:
        testing.assert_store_valid(broken)
    assert "missing attribute 'model_hash'" in str(err.value) and "incomplete" in str(err.value)
    assert "(check 'schema')" in str(err.value) and "(check 'complete')" in str(err.value)
    checks = dict(testing.yield_store_checks(broken))
    with pytest.raises(AssertionError, match="check 'complete' failed: .*incomplete"):
        checks["complete"]()
    with pytest.raises(AssertionError, match="no store at"):
        testing.assert_store_valid(tmp_path / "none.zarr")


# -- the checks catch what they promise to ------------------------------------------------------


def _lds_task_cls():
    return HOST.tasks.get("lds")


def test_check_task_catches_a_seedless_task():
    base = _lds_task_cls()

    class Seedless(base):
        name = "seedless"

        def generate(self, n, seed):
            return super().generate(n, 0).assign_attrs(seed=seed)

    with pytest.raises(AssertionError, match="samples must depend on the seed"):
        testing.check_task(Seedless, {"dim": 2, "length": 4})


def test_check_task_catches_a_wrong_io():
    base = _lds_task_cls()

    class WrongIO(base):
        name = "wrong-io"

        @property
        def io(self):
            import dataclasses

            return dataclasses.replace(super().io, d_in=self.params.dim + 1)

    with pytest.raises(AssertionError, match=r"must be \(sample, pos, d_in=3\)"):
        testing.check_task(WrongIO, {"dim": 2, "length": 4})


def test_check_hypothesis_catches_crashes_nondeterminism_and_bad_masks():
    from probekit.targets.hypothesis import Hypothesis, Target

    task = _task("lds")

    class Noisy(Hypothesis):
        name = "noisy"
        requires = ("x",)

        def compute(self, ds):
            x = ds["x"].values
            return [Target("noise", np.random.default_rng().normal(size=x.shape), np.ones(x.shape[:2], bool), "noise")]

    with pytest.raises(AssertionError, match="determinism"):
        testing.check_hypothesis(Noisy, task=task)

    class Crashes(Hypothesis):
        name = "crashes"
        requires = ("x",)

        def compute(self, ds):
            n, t, _ = ds["x"].shape  # a store whose x has no feature dim crashes here
            return [Target("x", ds["x"].values, np.ones((n, t), bool), "x")]

    testing.check_hypothesis(Crashes, task=task)
    with pytest.raises(AssertionError, match="crashed instead of refusing clearly"):
        testing.check_hypothesis(Crashes, task=task, unsupported=[task.generate(4, 0).isel(x_dim=0)])


def test_check_model_adapter_catches_batch_dependence(tiny_checkpoint):
    toy = HOST.models.get("toy")

    class Leaky(toy):
        def run(self, inputs, sites):
            acts, out = super().run(inputs, sites)
            return {k: v + inputs.shape[0] for k, v in acts.items()}, out  # depends on the batch

    inputs = _task("lds").generate(3, 7)["x"].values
    with pytest.raises(AssertionError, match="sample 0 alone vs in a batch"):
        testing.check_model_adapter(Leaky, str(tiny_checkpoint), inputs=inputs, random_init=False)


# -- one pytest id per named check (testing.parametrize_with_checks) ---------------------------


@testing.parametrize_with_checks(testing.yield_task_checks(HOST.tasks.get("lds"), TASK_PARAMS["lds"], name="lds"))
def test_lds_task_check(check):
    check()


@testing.parametrize_with_checks(testing.yield_hypothesis_checks(
    HOST.hypotheses.get("rls"), task=_task("lds"), name="rls", unsupported=[_unsupported("lds")]))
def test_rls_hypothesis_check(check):
    check()


@testing.parametrize_with_checks(testing.yield_hypothesis_checks(HOST.hypotheses.get("gd"), task=_task("linreg"),
                                                                 name="gd"))
def test_gd_hypothesis_check(check):  # a hypothesis that predicts: fit / predict checks too
    check()


def _toy_checks(rest: str = "unused"):
    inputs = _task("lds").generate(3, 7)["x"].values
    return testing.yield_model_adapter_checks(HOST.models.get("toy"), rest, inputs=inputs,
                                              bad_rest="/nonexistent/checkpoint")


@pytest.fixture(scope="module")
def toy_checks(tiny_checkpoint):
    return dict(_toy_checks(str(tiny_checkpoint)))  # one shared case: the model loads once


@pytest.mark.parametrize("name", testing.check_names(_toy_checks()))  # building a suite runs nothing
def test_toy_adapter_check(toy_checks, name):
    toy_checks[name]()


def test_the_suites_name_their_checks():
    hyp = testing.check_names(testing.yield_hypothesis_checks(HOST.hypotheses.get("gd"), task=_task("linreg")))
    assert {"targets_aligned", "deterministic", "fitted_before_fit", "predict_shape"} <= set(hyp)
    assert "refuses_unsupported" not in hyp  # only with unsupported stores
    assert "predict_shape" not in testing.check_names(testing.yield_hypothesis_checks(
        HOST.hypotheses.get("induction"), task=_task(_task_for("induction"))))  # induction has no predict()
    toy = testing.check_names(_toy_checks())
    assert {"site_layouts", "batch_independent", "random_init", "refuses_bad_spec"} <= set(toy)
    assert "padding" not in toy  # only with a valid= mask
    assert len(toy) == len(set(toy)) and len(hyp) == len(set(hyp))


def test_adapter_checks_follow_declared_capabilities():
    toy = HOST.models.get("toy")
    inputs = np.zeros((2, 3, 1))

    class Speaks(toy):
        capabilities = frozenset({"tokenizer"})

    class Mute(toy):
        capabilities = frozenset()

    assert "tokenizer" in testing.check_names(testing.yield_model_adapter_checks(Speaks, "x", inputs=inputs))
    assert "tokenizer" not in testing.check_names(testing.yield_model_adapter_checks(Mute, "x", inputs=inputs))

    class Unknown(toy):
        capabilities = frozenset({"telepathy"})

    checks = dict(testing.yield_model_adapter_checks(Unknown, "x", inputs=inputs))
    with pytest.raises(AssertionError, match=r"check 'capabilities_known' failed: .*telepathy"):
        checks["capabilities_known"]()


def test_a_failure_names_its_check():
    base = _lds_task_cls()

    class Seedless(base):
        name = "seedless"

        def generate(self, n, seed):
            return super().generate(n, 0).assign_attrs(seed=seed)

    with pytest.raises(testing.CheckFailed, match="check 'seed_changes_samples' failed: task 'seedless': ") as err:
        testing.check_task(Seedless, {"dim": 2, "length": 4})
    assert err.value.check == "seed_changes_samples"


def test_fitted_before_fit_says_what_to_do():
    from probekit.targets.hypothesis import Hypothesis, Target

    class Unfitted(Hypothesis):
        name = "unfitted"
        requires = ("x",)

        def fit(self, ds):
            self.hparams = {"k": 1}
            return self

        def fitted(self):
            return dict(self.hparams)  # AttributeError before fit

        def compute(self, ds):
            x = ds["x"].values
            return [Target("x", x, np.ones(x.shape[:2], bool), "x")]

    with pytest.raises(AssertionError, match=r"check 'fitted_before_fit' failed: .*before fit\(\) was called; .*"
                       r"return \{\}"):
        testing.check_hypothesis(Unfitted, task=_task("lds"))


def test_store_checks_are_named(tiny_store, tmp_path):
    names = testing.check_names(testing.yield_store_checks(tiny_store))
    assert names[0] == "schema" and {"chunking", "dtypes", "complete", "probe_results"} <= set(names)
    for _name, check in testing.yield_store_checks(tiny_store):
        check()
    assert testing.check_names(testing.yield_store_checks(tiny_store, complete=False)).count("complete") == 0


def test_testing_is_importable_without_heavy_modules():
    import subprocess

    code = "import probekit.testing, probekit.testing.checks, sys; print(' '.join(sorted(m for m in ('torch', 'zarr', 'sklearn') if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
