"""Head scores (probekit.lenses.heads.circuits), ICL score, ablation and phase change (probekit.lenses.heads.dynamics), and
``probekit heads`` on a hand-built induction model, through fake training runs and on a tiny
``hf:`` GPT-2 built here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from probekit.lenses.heads import circuits

from probekit.lenses.heads import dynamics
from probekit.cli import run
from probekit.errors import UsageError
from probekit.models.hooks import parse_heads
from probekit.plugin.host import PluginHost

from support import induction_models  # noqa: E402

HOST = PluginHost.default()


# ----------------------------------------------------------------------------- pattern scores
def _random_patterns(rng, shape):
    """Causal attention patterns: softmax of random scores over keys <= query."""
    *lead, T = shape[:-1]
    scores = rng.standard_normal((*shape[:-1], T)) * 2
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("prefix", [0, 1])
def test_pattern_scores_equal_their_definitions(prefix):
    rng = np.random.default_rng(0)
    R, n = 5, 3
    T = prefix + 2 * R
    A = _random_patterns(rng, (n, 2, 3, T, T))
    got = circuits.pattern_scores(A, R, prefix)
    want = {k: np.zeros((2, 3)) for k in circuits.PATTERN_SCORES}
    count = 0
    for b in range(n):
        for q in range(prefix + R, T):  # queries in the second copy
            count += 1
            for l in range(2):
                for h in range(3):
                    want["prev_token"][l, h] += A[b, l, h, q, q - 1]
                    want["duplicate"][l, h] += A[b, l, h, q, q - R]
                    want["induction"][l, h] += A[b, l, h, q, q - R + 1]
    for k in circuits.PATTERN_SCORES:
        np.testing.assert_allclose(got[k], want[k] / count, rtol=1e-12)


def test_pure_heads_score_one_on_their_own_pattern_and_zero_on_the_others():
    R, prefix = 4, 1
    T = prefix + 3 * R  # three copies: every query from the second copy on counts
    A = np.zeros((1, 1, 3, T, T))
    for q in range(T):
        A[0, 0, :, q, 0] = 1.0  # default: BOS
        for h, off in enumerate((1, R, R - 1)):
            if q >= prefix + R:
                A[0, 0, h, q, 0] = 0.0
                A[0, 0, h, q, q - off] = 1.0
    s = circuits.pattern_scores(A, R, prefix)
    np.testing.assert_allclose(np.stack([s["prev_token"][0], s["duplicate"][0], s["induction"][0]]), np.eye(3))
    # a head that splits its attention between BOS and the token to copy scores one half
    A[0, 0, 2, prefix + R:, 0] = 0.5
    A[0, 0, 2, prefix + R:] *= np.where(np.arange(T) == 0, 1.0, 0.5)
    assert circuits.pattern_scores(A, R, prefix)["induction"][0, 2] == pytest.approx(0.5)


def test_pattern_scores_refuse_a_pattern_without_a_second_copy():
    with pytest.raises(Exception, match="no second copy"):
        circuits.pattern_scores(np.zeros((1, 1, 1, 5, 5)), 5, 1)


# ----------------------------------------------------------------------------- OV / QK eigen-scores
def _weights(rng, V=30, d=16, dh=4, L=2, H=2, ov=None):
    W = circuits.HeadWeights(rng.standard_normal((V, d)), rng.standard_normal((d, V)),
                             rng.standard_normal((L, H, d, dh)), rng.standard_normal((L, H, d, dh)),
                             rng.standard_normal((L, H, d, dh)), rng.standard_normal((L, H, dh, d)))
    return W


@pytest.mark.parametrize("sign, expected", [(1.0, 1.0), (-1.0, -1.0)])
def test_ov_copying_score_of_a_pure_copy_and_anti_copy_circuit(sign, expected):
    rng = np.random.default_rng(1)
    W = _weights(rng)
    d, dh = 16, 4
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :dh]  # an orthonormal d_head subspace
    W.W_V[0, 0], W.W_O[0, 0] = basis, sign * basis.T * 3.0
    W.W_U = W.W_E.T  # read out what the embedding wrote: W_E P W_E^T is PSD, its negative NSD
    lam = circuits.ov_eigenvalues(W, 0, 0)
    assert circuits.eigen_score(lam) == pytest.approx(expected, abs=1e-9)
    assert np.all(sign * lam.real > 0) and np.allclose(lam.imag, 0, atol=1e-9)
    # the full vocab x vocab circuit: diagonal dominant of that sign
    full = circuits.ov_full(W, 0, 0)
    assert np.all(sign * np.diag(full) >= 0)
    # a random head is neither
    assert abs(circuits.eigen_score(circuits.ov_eigenvalues(W, 1, 1))) < 0.9


def test_d_head_eigenvalues_equal_the_vocab_space_ones():
    rng = np.random.default_rng(2)
    W = _weights(rng)
    for layer, head in [(0, 0), (1, 1)]:
        small = circuits.ov_eigenvalues(W, layer, head)
        big = np.linalg.eigvals(circuits.ov_full(W, layer, head))
        big = big[np.argsort(-np.abs(big))][: len(small)]  # the rest are zero (rank <= d_head)
        np.testing.assert_allclose(np.sort_complex(small), np.sort_complex(big), rtol=1e-7, atol=1e-7)
        assert circuits.eigen_score(small) == pytest.approx(circuits.eigen_score(big), abs=1e-7)
    small = circuits.qk_prefix_eigenvalues(W, 1, 0, prev_head=1)
    big = np.linalg.eigvals(circuits.qk_prefix_full(W, 1, 0, prev_head=1))
    big = big[np.argsort(-np.abs(big))][: len(small)]
    np.testing.assert_allclose(np.sort_complex(small), np.sort_complex(big), rtol=1e-7, atol=1e-7)
    with pytest.raises(UsageError):
        circuits.qk_prefix_eigenvalues(W, 0, 0, prev_head=0)


def test_toy_weights_fold_layernorm_and_split_heads_like_the_forward_pass():
    import torch

    from probekit.models.toy.model import ToyConfig, ToyTransformer

    torch.manual_seed(0)
    cfg = ToyConfig(d_in=11, d_out=11, input_kind="tokens", n_layers=2, d_model=12, n_heads=3, mlp=False)
    model = ToyTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # non-trivial LayerNorm gains and biases
    W = circuits.toy_weights(model)
    torch.set_grad_enabled(False)
    x = torch.randn(5, 12, dtype=torch.float64)
    attn = model.blocks[1].attn
    ln = model.blocks[1].ln1.double()
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    lin = (ln(x) - ln.bias) * sigma  # the LayerNorm's linear part: P diag(gamma) x
    qkv = torch.nn.functional.linear(lin, attn.W_qkv.weight.double())  # no bias
    for h in range(3):
        q = qkv[:, h * 4: (h + 1) * 4].numpy()
        np.testing.assert_allclose(x.numpy() @ W.W_Q[1, h], q, atol=1e-10)
        v = qkv[:, 24 + h * 4: 24 + (h + 1) * 4].numpy()
        np.testing.assert_allclose(x.numpy() @ W.W_V[1, h], v, atol=1e-10)
    z = torch.randn(5, 12, dtype=torch.float64)
    out = torch.nn.functional.linear(z, attn.W_o.weight.double()).numpy()
    np.testing.assert_allclose(sum(z[:, h * 4:(h + 1) * 4].numpy() @ W.W_O[1, h] for h in range(3)), out, atol=1e-10)
    model.double()
    np.testing.assert_allclose(W.W_E, model.embed.weight.detach().numpy())
    torch.set_grad_enabled(True)


# ----------------------------------------------------------------------------- ICL score, phase change
def test_icl_positions_and_score():
    assert dynamics.icl_positions(1000)[:2] == (500, 50)
    late, early, label = dynamics.icl_positions(64)
    assert (late, early) == (51, 5) and "scaled" in label
    with pytest.raises(UsageError):
        dynamics.icl_positions(64, late=3, early=5)
    losses = np.full((3, 10), 2.0)
    losses[:, 8] = [0.5, 1.0, np.nan]
    assert dynamics.icl_score(losses, 8, 1) == pytest.approx(0.75 - 2.0)


def test_phase_change_finds_the_knee_and_the_steepest_interval():
    steps = np.arange(0, 1100, 100)
    values = np.where(steps < 500, 0.1, 0.9) + 0.01 * np.sin(steps)  # jumps between 400 and 500
    p = dynamics.phase_change(steps, values)
    assert p["knee"] == 400 and (p["jump_from"], p["jump_to"]) == (400, 500) and p["total"] > 0.7
    falling = dynamics.phase_change(steps, -2.0 / (1 + np.exp(-(steps - 650) / 30.0)))
    assert falling["knee"] in (500, 600) and falling["jump_from"] == 600 and falling["total"] < -1.9


# ----------------------------------------------------------------------------- the hand-built model
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return induction_models.save(tmp_path_factory.mktemp("built") / "model")


def test_heads_of_a_constructed_induction_model(built):
    settings = dynamics.HeadsSettings(n_samples=60, icl_samples=200, ablate="induction")
    ds = dynamics.run_heads(HOST, f"toy:{built}", settings)
    assert ds.prev_token.values[0, 0] > 0.99 and ds.induction.values[1, 0] > 0.8
    others = [ds.induction.values[0, 0], ds.induction.values[0, 1], ds.induction.values[1, 1]]
    assert max(others) < 0.2
    assert ds.ov_copying.values[1, 0] == pytest.approx(1.0)
    assert ds.qk_prefix.values[1, 0] == pytest.approx(1.0)
    assert json.loads(ds.attrs["qk_prev_head"]) == [None, 0]
    icl, ab = json.loads(ds.attrs["icl"]), json.loads(ds.attrs["ablation"])
    assert icl["score"] < -3  # it copies in the second copy
    assert ab["heads"] == ["1.0"] and ab["removed"] > 0.95
    # mean-ablating the previous-token head blurs the induction head's keys; an idle head does nothing
    mean = dynamics.run_heads(HOST, f"toy:{built}", dynamics.HeadsSettings(n_samples=20, icl_samples=200,
                                                                           ablate="0.0", ablation="mean"))
    assert json.loads(mean.attrs["ablation"])["removed"] > 0.3
    idle = dynamics.run_heads(HOST, f"toy:{built}", dynamics.HeadsSettings(n_samples=20, icl_samples=200,
                                                                           ablate="0.1,1.1"))
    assert abs(json.loads(idle.attrs["ablation"])["removed"]) < 1e-6


def test_zero_ablation_also_rescores_the_patterns_so_backup_heads_show(built):
    """With --ablation zero the pattern scores are measured again with the heads gone: zeroing the
    previous-token head 0.0 leaves the induction head 1.0 without the keys it matches, while zeroing
    1.0 itself leaves every pattern (which block 1's output does not feed) as it was."""
    prev = dynamics.run_heads(HOST, f"toy:{built}", dynamics.HeadsSettings(n_samples=20, icl_samples=50,
                                                                           ablate="0.0"))
    assert prev.induction.values[1, 0] > 0.8 and prev.induction_ablated.values[1, 0] < 0.3
    own = dynamics.run_heads(HOST, f"toy:{built}", dynamics.HeadsSettings(n_samples=20, icl_samples=50,
                                                                          ablate="1.0"))
    np.testing.assert_allclose(own.induction_ablated.values, own.induction.values, atol=1e-6)
    mean = dynamics.run_heads(HOST, f"toy:{built}", dynamics.HeadsSettings(n_samples=20, icl_samples=50,
                                                                           ablate="0.0", ablation="mean"))
    assert "induction_ablated" not in mean  # only the zero ablation is rescored


def test_zero_ablation_equals_zeroing_the_heads_output_weights(built):
    import torch

    from probekit.models.adapters import load_adapter

    adapter = load_adapter(HOST, f"toy:{built}")
    x = circuits.repeated_tokens(4, 6, 24, bos_id=0, low=1, seed=3)
    with dynamics.ablated(adapter, [(1, 0)]):
        _, out = adapter.run(x, [])
    dh = adapter.ckpt.config.d_model // 2
    with torch.no_grad():
        adapter.model.blocks[1].attn.W_o.weight[:, :dh] = 0
    _, want = adapter.run(x, [])
    np.testing.assert_allclose(out, want, atol=1e-5)
    with pytest.raises(UsageError, match="does not exist"):
        parse_heads("2.0", 2, 2)


def test_heads_cli_table_json_and_plots(built, tmp_path, capsys):
    png = tmp_path / "h.png"
    code = run(["heads", "--model", f"toy:{built}", "-n", "20", "--icl-samples", "100", "--ablate", "1.0",
                "--plot", str(png), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out)
    heads = {r["head"]: r for r in payload["heads"]}
    assert heads["1.0"]["induction"] > 0.8 and heads["0.0"]["qk_prefix"] is None
    assert len(heads["1.0"]["ov_eigenvalues"]) == 44
    for p in payload["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {Path(p).name for p in payload["plots"]} == {"h.png", "h.eig.png", "h.loss.png"}
    code = run(["heads", "--model", f"toy:{built}", "-n", "20", "--icl-samples", "50", "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0 and "1.0" in out and "induction" in out and "ICL score" in out
    code = run(["heads", "--model", f"toy:{built}", "--ablate", "induction", "--threshold", "0.99", "-n", "10",
                "--icl-samples", "20", "--plot", str(png)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no head has induction score >= 0.99") and err.count("\n") == 1


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """Checkpoints whose induction circuit switches on between steps 300 and 400."""
    root = tmp_path_factory.mktemp("run")
    for step, scale in [(0, 0.0), (100, 0.0), (200, 0.01), (300, 0.02), (400, 1.0), (500, 1.0)]:
        induction_models.save(root / "checkpoints" / f"step-{step:07d}", scale, step)
    return root


def test_dynamics_locate_the_phase_change_of_both_curves(fake_run, tmp_path, capsys):
    ds = dynamics.run_dynamics(HOST, str(fake_run / "checkpoints"),
                               dynamics.HeadsSettings(n_samples=20, icl_samples=100))
    assert list(ds.checkpoint.values) == [0, 100, 200, 300, 400, 500]
    icl, ind = json.loads(ds.attrs["phase_icl"]), json.loads(ds.attrs["phase_induction"])
    assert icl["knee"] == ind["knee"] == 300 and icl["jump_to"] == ind["jump_to"] == 400
    assert ds.icl_score.values[-1] < -3 and abs(ds.icl_score.values[0]) < 0.05
    png = tmp_path / "dyn.png"
    code = run(["heads", "--checkpoints", str(fake_run / "checkpoints"), "-n", "10", "--icl-samples", "50",
                "--plot", str(png)])
    captured = capsys.readouterr()
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG" and "knee" in captured.out
    code = run(["heads", "--checkpoints", str(fake_run), "-n", "10", "--icl-samples", "50", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["attrs"]["phase_icl"]["knee"] == 300 and len(payload["checkpoints"]) == 6
    assert Path(payload["plots"][0]) == fake_run / "dynamics.png"


def test_heads_usage_errors(capsys, tmp_path):
    for args, msg in [
        ([], "error: pass either --model or --checkpoints"),
        (["--model", "toy:/nonexistent"], "error: /nonexistent is not a probekit toy checkpoint"),
        (["--model", "toy:x", "--ablation", "half"], "error: unknown ablation 'half'; choose from: mean, zero"),
    ]:
        code = run(["heads", *args])
        err = capsys.readouterr().err
        assert code in (1, 2) and err.startswith(msg), err


# ----------------------------------------------------------------------------- a tiny hf GPT-2
@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = ["the cat sat on the mat", "a dog ran over the hill", "hello world, hello cat"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(fast), n_positions=48,
                     bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    out = tmp_path_factory.mktemp("hf") / "gpt2"
    GPT2LMHeadModel(cfg).eval().save_pretrained(out)
    fast.save_pretrained(out)
    (out.parent / "prompts.txt").write_text("\n".join(corpus * 2) + "\n")
    return out


def test_heads_on_a_tiny_hf_gpt2(tiny_gpt2, tmp_path, capsys):
    png = tmp_path / "gpt2.png"
    code = run(["heads", "--model", f"hf:{tiny_gpt2}", "-n", "8", "--icl-samples", "8", "--ablate", "1.0,1.3",
                "--ablation", "mean", "--plot", str(png), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["attrs"]["weights"] == "gpt2" and payload["attrs"]["segment"] == 23 and payload["attrs"]["bos"] == 1
    assert len(payload["heads"]) == 8
    for rec in payload["heads"]:
        assert all(0 <= rec[k] <= 1 for k in ("prev_token", "duplicate", "induction"))
        assert -1 <= rec["ov_copying"] <= 1
        assert (rec["qk_prefix"] is None) == (rec["layer"] == 0)
    assert payload["attrs"]["ablation"]["heads"] == ["1.0", "1.3"]
    assert all(Path(p).is_file() for p in payload["plots"])
    code = run(["heads", "--model", f"hf:{tiny_gpt2}", "-n", "4", "--text", str(tiny_gpt2.parent / "prompts.txt"),
                "--late", "4", "--early", "1", "--plot", str(png)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "text" in captured.out and "0.0" in captured.out


def test_gpt2_weights_match_the_attention_forward(tiny_gpt2):
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_gpt2).eval().double()
    W = circuits.gpt2_weights(model)
    block = model.transformer.h[1]
    x = torch.randn(3, 32, dtype=torch.float64)
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + block.ln_1.eps)
    lin = (block.ln_1(x) - block.ln_1.bias) * sigma
    qkv = lin @ block.attn.c_attn.weight
    np.testing.assert_allclose(x.numpy() @ W.W_K[1, 2], qkv[:, 32 + 16: 32 + 24].detach().numpy(), atol=1e-10)
    # the vocab-space OV circuit and its d_head form agree on a real model's weights too
    small = circuits.ov_eigenvalues(W, 1, 2)
    big = np.linalg.eigvals(circuits.ov_full(W, 1, 2))
    big = big[np.argsort(-np.abs(big))][: len(small)]
    np.testing.assert_allclose(np.sort_complex(small), np.sort_complex(big), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- a tiny tlens model
@pytest.fixture(scope="module")
def tiny_tlens(tmp_path_factory):
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from transformer_lens import HookedTransformer, HookedTransformerConfig
        except ImportError:
            pytest.skip("needs transformer_lens < 4 (the tlens extra)")
        from probekit.models.tlens import save_tlens

        cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_vocab=40, n_ctx=24,
                                      attn_only=True, normalization_type="LN", device="cpu", seed=None)
        torch.manual_seed(0)
        model = HookedTransformer(cfg).eval()
    with torch.no_grad():  # LayerNorm gains, biases and a mean over features for the processing to change
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.uniform_(0.5, 1.5)
            elif name.rsplit(".", 1)[-1].startswith("b"):
                p.normal_(0.0, 0.2)
            elif name.endswith(("W_E", "W_pos")):
                p.add_(0.3)
    path = tmp_path_factory.mktemp("tlens") / "tiny"
    save_tlens(model, path)
    return path


def test_heads_on_a_tlens_model_do_not_depend_on_its_weight_processing(tiny_tlens):
    settings = dynamics.HeadsSettings(n_samples=16, icl_samples=16, ablate="1.1", ablation="mean")
    raw = dynamics.run_heads(HOST, f"tlens:{tiny_tlens}?processing=none", settings)
    processed = dynamics.run_heads(HOST, f"tlens:{tiny_tlens}", settings)  # fold_ln, centring: TL's defaults
    assert raw.attrs["weights"] == "tlens" and raw.attrs["segment"] == 12 and raw.attrs["bos"] == 0  # no tokenizer: no BOS
    for k in ("prev_token", "induction", "ov_copying"):
        np.testing.assert_allclose(processed[k].values, raw[k].values, atol=1e-5)
    np.testing.assert_allclose(processed.qk_prefix.values[1], raw.qk_prefix.values[1], atol=1e-5)
    assert np.isnan(raw.qk_prefix.values[0]).all() and np.isfinite(raw.ov_copying.values).all()
    ab_raw, ab_proc = (json.loads(d.attrs["ablation"]) for d in (raw, processed))
    assert ab_raw["heads"] == ["1.1"] and ab_raw["icl_ablated"] == pytest.approx(ab_proc["icl_ablated"], abs=1e-4)
    assert ab_raw["icl_ablated"] != pytest.approx(ab_raw["icl_clean"], abs=1e-6)  # the hook took effect


def test_heads_on_a_tiny_hf_llama_give_pattern_scores_and_ablation_but_no_weight_scores(hf_models):
    ds = dynamics.run_heads(HOST, f"hf:{hf_models['llama'][0]}",
                            dynamics.HeadsSettings(n_samples=4, icl_samples=8, segment=10, ablate="1.0,1.1"))
    assert np.isfinite(ds.induction.values).all() and np.isnan(ds.ov_copying.values).all()
    assert "implemented for toy, GPT-2 and TransformerLens" in ds.attrs["weights"]
    ab = json.loads(ds.attrs["ablation"])
    assert ab["icl_ablated"] != pytest.approx(ab["icl_clean"], abs=1e-6)  # the o_proj hook took effect
