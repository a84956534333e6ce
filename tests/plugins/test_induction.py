"""The induction plugin: tasks ``repeated-tokens`` / ``repeated-segments``, the hypothesis
``induction``, and its categorical and direction probes through the engine on a store cached
from a hand-built induction model (where the answer is known: ``prev_token`` appears after
block 1, ``induction_next`` after block 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from probekit.errors import UsageError
from probekit.plugin.host import PluginHost

from support import induction_models  # noqa: E402

pytest.importorskip("probekit_induction")
from probekit_induction import InductionHypothesis, previous_occurrence  # noqa: E402

HOST = PluginHost.default()


def test_repeated_tokens_task():
    task = HOST.tasks.get("repeated-tokens")(vocab=10, segment=5, repeats=3)
    ds = task.generate(40, 0)
    tok, nxt = ds.tokens.values, ds.next.values
    assert tok.shape == (40, 16) and task.io.seq_len == 16 and task.io.kind == "tokens"
    assert (tok[:, 0] == 0).all() and (tok[:, 1:] > 0).all() and tok.max() < 10
    np.testing.assert_array_equal(tok[:, 1:6], tok[:, 6:11])
    np.testing.assert_array_equal(tok[:, 1:6], tok[:, 11:16])
    np.testing.assert_array_equal(nxt[:, :-1], tok[:, 1:])
    np.testing.assert_array_equal(nxt[:, -1], tok[:, 1])  # the periodic continuation
    no_bos = HOST.tasks.get("repeated-tokens")(vocab=10, segment=4, bos=False).generate(5, 1).tokens.values
    assert no_bos.shape == (5, 8) and (no_bos >= 0).all()
    with pytest.raises(UsageError):
        HOST.tasks.get("repeated-tokens")(segment=0)


def test_repeated_segments_task_copies_a_segment_at_varying_distances():
    task = HOST.tasks.get("repeated-segments")(vocab=50, length=40, p_repeat=0.5, min_segment=4)
    ds = task.generate(400, 3)
    tok = np.concatenate([ds.tokens.values, ds.next.values[:, -1:]], 1)
    rep = ds.repeated.values
    assert 0.35 < rep.mean() < 0.65 and (tok[:, 0] == 0).all()
    a, b, R = ds.first_copy.values, ds.second_copy.values, ds.segment.values
    for i in np.flatnonzero(rep):
        assert 1 <= a[i] and a[i] + R[i] <= b[i] and b[i] + R[i] <= 40 and 4 <= R[i] <= 19
        np.testing.assert_array_equal(tok[i, a[i]:a[i] + R[i]], tok[i, b[i]:b[i] + R[i]])
    assert len(np.unique((b - a)[rep])) > 10  # no fixed distance to attend by position
    assert (a[~rep] == -1).all()
    fixed = HOST.tasks.get("repeated-segments")(vocab=50, length=40, segment=19, p_repeat=1.0).generate(20, 0)
    assert (fixed.segment.values == 19).all() and fixed.repeated.values.all()
    assert set(fixed.second_copy.values - fixed.first_copy.values) <= {19, 20}
    for bad in ({"segment": 30}, {"p_repeat": 1.5}, {"min_segment": 0}):
        with pytest.raises(UsageError):
            HOST.tasks.get("repeated-segments")(length=40, **bad)


def test_previous_occurrence_matches_brute_force():
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 6, (30, 12))
    got = previous_occurrence(tok)
    for s in range(30):
        for q in range(12):
            earlier = [j for j in range(q) if tok[s, j] == tok[s, q]]
            assert got[s, q] == (earlier[-1] if earlier else -1)


def test_induction_targets_on_hand_made_tokens():
    import xarray as xr

    tok = np.array([[0, 5, 6, 7, 5, 6, 9, 5]])
    ds = xr.Dataset({"tokens": (("sample", "pos"), tok)})
    tds = InductionHypothesis(directions="none").targets(ds)
    assert set(tds.data_vars) >= {"prev_token", "duplicate", "induction_next", "induction_next_mask"}
    np.testing.assert_array_equal(tds.prev_token.values[0, 1:, 0], tok[0, :-1])
    assert not tds.prev_token_mask.values[0, 0]
    np.testing.assert_array_equal(tds.duplicate.values[0, :, 0], [0, 0, 0, 0, 1, 1, 0, 1])
    mask = tds.induction_next_mask.values[0]
    np.testing.assert_array_equal(mask, [False, False, False, False, True, True, False, True])
    np.testing.assert_array_equal(tds.induction_next.values[0, mask, 0], [6, 7, 6])  # last 5 copies after pos 4
    assert tds.induction_next.attrs["kind"] == "categorical" and tds.induction_next.attrs["expected_layer"] == 2
    assert "induction_next_types" in tds and tds.prev_token.attrs["expected_layer"] == 1
    with pytest.raises(UsageError, match="unknown direction"):
        InductionHypothesis(directions="sideways")
    no_repeat = xr.Dataset({"tokens": (("sample", "pos"), np.array([[0, 1, 2, 3]]))})
    with pytest.raises(Exception, match="defined nowhere"):
        InductionHypothesis().targets(no_repeat)


def test_a_large_vocabulary_keeps_token_classes_out_of_the_logistic_probes_by_default():
    """An LLM's vocabulary (ids >= LARGE_VOCAB): by default only ``duplicate`` is categorical and the token
    targets come as directions; ``categorical=all`` keeps them over their max_classes most frequent classes."""
    import xarray as xr

    from probekit_induction.hypothesis import LARGE_VOCAB

    rng = np.random.default_rng(0)
    segment = LARGE_VOCAB + rng.choice(40000, (30, 6), replace=False)  # 30 samples of 6 distinct large ids
    tok = np.concatenate([segment, segment, segment[:, :1]], 1)  # each segment twice, then its first token
    x = rng.normal(size=(30, 1, tok.shape[1], 4))
    ds = xr.Dataset({"tokens": (("sample", "pos"), tok), "resid": (("sample", "layer", "pos", "feature"), x)})
    tds = InductionHypothesis(directions="embed").targets(ds)
    assert "duplicate" in tds and "prev_token" not in tds and "induction_next" not in tds
    assert {"prev_token_embed", "induction_next_embed"} <= set(tds.data_vars)
    # the embed direction of the token to copy: its mean layer-0 vector (position means removed), by brute force
    xc = x[:, 0] - x[:, 0].mean(0)
    s, q = 3, 8  # tok[s, 8] == tok[s, 2]: the token to copy is tok[s, 3]
    want = xc[tok == tok[s, 3]].mean(0)
    np.testing.assert_allclose(tds.induction_next_embed.values[s, q], want, atol=1e-10)

    every = InductionHypothesis(directions="none", categorical="all", max_classes=20).targets(ds)
    labels, mask = every.induction_next.values[..., 0], every.induction_next_mask.values.reshape(30, -1)
    defined = (np.arange(tok.shape[1]) >= 6)[None] & np.ones((30, 1), bool)  # the second copies and the last token
    counts = {}
    for label in labels[defined]:
        counts[label] = counts.get(label, 0) + 1
    top = sorted(counts, key=lambda c: (-counts[c], c))[:20]
    np.testing.assert_array_equal(mask, defined & np.isin(labels, top))
    assert "20 most frequent" in every.induction_next.attrs["description"]
    assert "prev_token" in every and "prev_token" not in InductionHypothesis(categorical="binary",
                                                                             directions="none").targets(ds)
    for bad in ({"categorical": "some"}, {"max_classes": 1}):
        with pytest.raises(UsageError):
            InductionHypothesis(**bad)


@pytest.fixture(scope="module")
def built_store(tmp_path_factory):
    from probekit.cache.run import CacheRequest, run_cache

    root = tmp_path_factory.mktemp("ind")
    ckpt = induction_models.save(root / "model")
    out = root / "built.zarr"
    run_cache(HOST, CacheRequest(model=f"toy:{ckpt}", out=str(out), n_samples=100, seed=4, dtype="float32"))
    return out


def test_probes_find_prev_token_after_block_1_and_the_token_to_copy_after_block_2(built_store):
    from probekit.probes.run import ProbeSettings, run_probe

    settings = ProbeSettings(n_folds=3, baselines=False, n_boot=0,
                             targets=("prev_token", "induction_next", "induction_next_embed",
                                      "induction_next_unembed"))
    res, _ = run_probe(HOST, built_store, "induction", settings)
    m = res.sel(condition="model", site="resid")
    acc = lambda t: m.accuracy.sel(target=t).values  # noqa: E731  [layer 0 = embeddings, 1, 2]
    assert acc("prev_token")[0] < 0.3 and acc("prev_token")[1] > 0.95 and acc("prev_token")[2] > 0.95
    assert acc("induction_next")[1] < 0.4 and acc("induction_next")[2] > 0.8
    sel = m.selectivity.sel(target="induction_next").values
    assert np.isfinite(sel).all() and sel[2] > sel[1]  # the control task (current token -> label) is no help
    r2 = lambda t: m.r2.sel(target=t).values  # noqa: E731
    assert r2("induction_next_unembed")[2] > 0.8 and r2("induction_next_unembed")[1] < 0.4
    assert r2("induction_next_embed")[2] > 0.8


def test_probe_cli_on_the_induction_hypothesis(built_store, capsys):
    from probekit.cli import run

    code = run(["probe", str(built_store), "-H", "induction", "--folds", "3", "--no-baselines", "--n-boot", "0",
                "-t", "duplicate"])
    out = capsys.readouterr().out
    assert code == 0 and "duplicate" in out and "sel " in out and "acc " in out


@pytest.mark.slow
def test_reproduction_meets_the_acceptance_criteria(tmp_path):
    """scripts/reproduce_induction.sh end to end (5-10 minutes on 2 CPU cores); run with -m slow."""
    import json
    import os
    import subprocess

    root = Path(__file__).parents[2]
    out = tmp_path / "induction"
    env = dict(os.environ, PROBEKIT=f"{sys.executable} -m probekit", PYTHON=sys.executable)
    res = subprocess.run(["bash", str(root / "scripts" / "reproduce_induction.sh"), str(out)], cwd=root, env=env,
                         capture_output=True, text=True)
    print(res.stdout)
    assert res.returncode == 0, res.stderr[-2000:]
    load = lambda name: json.loads((out / name).read_text())  # noqa: E731
    heads2, heads1, dyn2, dyn1 = (load(f"{n}.json") for n in ("attn2.heads", "attn1.heads", "attn2.dynamics",
                                                               "attn1.dynamics"))
    block1 = [h for h in heads2["heads"] if h["layer"] == 1]
    induction_heads = [h for h in block1 if h["induction"] >= 0.5]
    assert induction_heads, [h["induction"] for h in block1]
    assert min(h["ov_copying"] for h in induction_heads) >= 0.7
    assert heads2["attrs"]["ablation"]["removed"] >= 0.5
    icl, ind = dyn2["attrs"]["phase_icl"], dyn2["attrs"]["phase_induction"]
    assert abs(icl["knee"] - ind["knee"]) <= 100  # the ICL score and the induction score jump together
    assert max(h["induction"] for h in heads1["heads"]) <= 0.2
    assert abs(dyn1["attrs"]["phase_icl"]["jump"]) < 0.5 * abs(icl["jump"])  # no jump in the 1-layer control
    acc = {(r["target"], r["layer"]): r["accuracy"] for r in load("attn2.probe.json")["records"]
           if r["condition"] == "model" and r["site"] == "resid"}
    assert acc[("prev_token", 1)] > acc[("prev_token", 0)] + 0.3
    assert acc[("induction_next", 2)] > acc[("induction_next", 1)] + 0.3
