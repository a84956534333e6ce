"""Categorical targets on a token model: grouped-CV logistic probes, control task, selectivity."""

from dataclasses import dataclass

import numpy as np
import pytest

from probekit.plugin.hookspecs import hookimpl
from probekit.targets.hypothesis import Hypothesis, Target
from probekit.plugin.host import PluginHost, get_plugin_manager
from probekit.probes.run import ProbeSettings, run_probe
from probekit.tasks import ModelIO, Task


@dataclass(frozen=True)
class TokParams:
    vocab: int = 12
    length: int = 8


class RandomTokens(Task):
    name = "random-tokens"
    Params = TokParams

    @property
    def io(self):
        p = self.params
        return ModelIO("tokens", "next", "tokens", p.vocab, p.vocab, p.length)

    def generate(self, n, seed):
        import xarray as xr

        rng = np.random.default_rng(seed)
        tok = rng.integers(0, self.params.vocab, (n, self.params.length + 1))
        return xr.Dataset({"tokens": (("sample", "pos"), tok[:, :-1]), "next": (("sample", "pos"), tok[:, 1:])},
                          attrs=self.provenance(seed))


class TokenIds(Hypothesis):
    name = "token-ids"
    requires = ("tokens",)

    def compute(self, ds):
        tok = ds["tokens"].values
        prev = np.zeros_like(tok)
        prev[:, 1:] = tok[:, :-1]
        mask = np.ones(tok.shape, bool)
        later = mask.copy()
        later[:, 0] = False
        return [Target("current", tok, mask, "token at t", kind="categorical", expected_layer=0, control_types=tok),
                Target("previous", prev, later, "token at t-1", kind="categorical", expected_layer=1,
                       control_types=tok)]


class TokenPlugin:
    @hookimpl
    def probekit_register_tasks(self, register):
        register("random-tokens", RandomTokens)

    @hookimpl
    def probekit_register_hypotheses(self, register):
        register("token-ids", TokenIds)


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    from probekit.cache.run import CacheRequest, run_cache
    from probekit.models.toy.train import TrainSettings, train
    from probekit.models.toy.presets import build_config

    host = PluginHost(get_plugin_manager(pin=[], plugins=[TokenPlugin()]))
    task = host.tasks.get("random-tokens")()
    ckpt = train(task, build_config("attn-only", task.io, d_model=16, n_heads=2), TrainSettings(steps=30, batch_size=32),
                 tmp_path_factory.mktemp("tok") / "model")
    out = tmp_path_factory.mktemp("tok") / "tok.zarr"
    run_cache(host, CacheRequest(model=f"toy:{ckpt}", out=str(out), n_samples=150, seed=3, random_init=True))
    return host, out


def test_logistic_probes_control_task_and_selectivity(token_store):
    host, store = token_store
    res, _ = run_probe(host, store, "token-ids", ProbeSettings(n_folds=3, n_boot=0))
    r = res.sel(site="resid", layer=0)
    assert list(res.kind.values) == ["categorical", "categorical"]
    cur, prev = r.sel(target="current"), r.sel(target="previous")
    # the embedding holds the current token, and the control task (a function of it) just as well
    assert float(cur.accuracy.sel(condition="model")) > 0.95
    assert float(cur.control_accuracy.sel(condition="model")) > 0.95
    assert abs(float(cur.selectivity.sel(condition="model"))) < 0.1
    # ...but not the previous token: near chance (1/12), while its control task is easy: negative selectivity
    assert float(prev.accuracy.sel(condition="model")) < 0.3
    assert float(prev.selectivity.sel(condition="model")) < -0.5
    # labels permuted across sequences are unreadable: accuracy near chance, with a band over permutations
    sh = cur.sel(condition="shuffled")
    assert float(sh.accuracy) < 0.3 and float(sh.acc_lo) <= float(sh.accuracy) <= float(sh.acc_hi)
    assert not bool(res.overlaps_baseline.sel(site="resid", layer=0, target="current")) or \
        float(cur.accuracy.sel(condition="random_init")) >= float(cur.accuracy.sel(condition="model"))
    assert np.isnan(r.r2.values).all()  # categorical targets get accuracy, not R²


def test_table_and_plot_show_accuracy(token_store, tmp_path):
    from rich.console import Console

    from probekit.report.probes import plot_r2, results_table

    host, store = token_store
    res, _ = run_probe(host, store, "token-ids", ProbeSettings(n_folds=3, n_boot=0, n_perm_categorical=2))
    console = Console(width=100, record=True)
    console.print(results_table(res))
    text = console.export_text()
    assert "acc " in text and "sel " in text
    assert plot_r2(res, tmp_path / "cat.png").is_file()


def test_categorical_targets_are_validated():
    from probekit.errors import DataError
    from probekit.targets.hypothesis import make_targets

    with pytest.raises(DataError, match="one integer class per position"):
        make_targets([Target("c", np.zeros((2, 3, 1)), np.ones((2, 3), bool), "float labels", kind="categorical")],
                     n_samples=2, n_pos=3)
