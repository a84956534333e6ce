"""Full-size reproduction (issue #6): a toy model trained on `coin` predicts like the exact posterior.

Run with `bash scripts/test.sh -m slow` (about 2 minutes on 2 idle cores).
"""

import json

import pytest

from probekit.cli import run


@pytest.mark.slow
def test_coin_model_log_odds_match_the_exact_posterior(tmp_path, capsys):
    out = tmp_path / "coin"
    assert run(["train", "--task", "coin", "--model", "softmax", "--layers", "2", "--steps", "1500",
                "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert run(["compare", "--model", f"toy:{out}", "-H", "bayes", "--ood", "", "-n", "2000", "--json"]) == 0
    bayes = json.loads(capsys.readouterr().out)["hypotheses"][0]
    assert bayes["logit_r2"][1] >= 0.95  # the lower end of its CI
    assert bayes["loss_model"][0] <= bayes["loss_alg"][0] + 0.01
