"""``probekit icl``: answer log-probabilities by teacher forcing, the ICL curve and its Bayesian reference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from probekit.cli import run  # noqa: E402
from probekit.lenses.icl import ICLSettings, answer_log_probs, icl_curve, line_fit  # noqa: E402
from probekit.plugin.host import PluginHost  # noqa: E402
from probekit_bayes.tasks import AffinePromptsTask  # noqa: E402
from support.hf_models import build  # noqa: E402


@pytest.fixture(scope="module")
def tiny(hf_models):
    return hf_models


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_answer_log_probs_equal_a_direct_forward(tiny, kind):
    path, model = tiny[kind]
    adapter = PluginHost.default().models.get("hf").load(str(path))
    prompts = AffinePromptsTask().prompts(2, 3, seed=0)
    got = answer_log_probs(adapter, [p["text"] for p in prompts], [p["answer"] for p in prompts], batch_size=2)
    tok = adapter.tokenizer
    for p, value in zip(prompts, got):
        n_prompt = len(tok(p["text"])["input_ids"])
        ids = torch.tensor([tok(p["text"] + p["answer"])["input_ids"]])
        with torch.no_grad():
            logp = model(ids).logits.double().log_softmax(-1)[0]
        expected = sum(float(logp[j - 1, ids[0, j]]) for j in range(n_prompt, ids.shape[1]))
        assert value == pytest.approx(expected, abs=1e-4)


def test_icl_curve_and_cli(tiny, tmp_path, capsys):
    path, _ = tiny["gpt2"]
    adapter = PluginHost.default().models.get("hf").load(str(path))
    task = AffinePromptsTask(max_examples=3)
    res = icl_curve(adapter, task, ICLSettings(count=4, seed=1))
    assert res.log_prob.shape == (4, 4) and (res.log_prob.values < 0).all()
    slope, intercept, r2 = line_fit(res.n_examples.values, res.mean_logit.values)
    assert res.attrs["slope"] == pytest.approx(slope) and res.attrs["r2"] == pytest.approx(r2)
    assert res.attrs["ideal_asymptotic_slope"] == pytest.approx(task.asymptotic_slope(0.05))
    assert np.all(np.diff(res.ideal_mean_logit.values) > 0)  # the ideal observer learns from every example
    png = tmp_path / "icl.png"
    assert run(["icl", "--model", f"hf:{path}", "-p", "max_examples=2", "--count", "3", "--plot", str(png),
                "--out", str(tmp_path / "icl.zarr"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_examples"] == [0, 1, 2] and png.stat().st_size > 5000 and (tmp_path / "icl.zarr").is_dir()
    assert run(["icl", "--model", f"hf:{path}", "--task", "coin"]) == 2
    assert "not a prompt task" in capsys.readouterr().err


def test_line_fit_is_exact_on_a_line():
    assert line_fit(np.arange(5), 2 * np.arange(5) + 1) == pytest.approx((2.0, 1.0, 1.0))
