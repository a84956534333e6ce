"""Activation patching and ablation (probekit.lenses.interventions.patching, probekit patch) on toy, torch and tiny HF models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit.lenses.interventions.patching import (Ablation, Patch, TokenPair, ablate, answer_logprobs, component_means,
                                    hooked_model, parse_blocks, parse_heads, patch_residual, run_hooked)


VOCAB = 20
KINDS = ["toy", "gpt2", "llama"]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    from probekit.models.toy.checkpoint import Checkpoint, save
    from probekit.models.toy.model import ToyConfig, ToyTransformer

    cfg = ToyConfig(d_in=VOCAB, d_out=VOCAB, input_kind="tokens", n_layers=3, d_model=32, n_heads=4, max_len=32,
                    init_std=0.2)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("toy") / "tok"
    save(ToyTransformer(cfg), Checkpoint(cfg, "none", {}), out)
    return out


@pytest.fixture(scope="module")
def hf_dirs(hf_models):
    return {kind: path for kind, (path, _) in hf_models.items()}


@pytest.fixture(scope="module")
def adapters(toy_dir, hf_dirs):
    from probekit.plugin.host import PluginHost

    host = PluginHost.default(entry_points=False)
    out = {"toy": host.models.get("toy").load(str(toy_dir))}
    for kind, path in hf_dirs.items():
        out[kind] = host.models.get("hf").load(str(path))
    return out


def _rand(rng, n, lo=4, hi=VOCAB):
    return tuple(int(t) for t in rng.integers(lo, hi, n))


def _pairs(rng, n=4, answer_len=(1, 2, 3)):
    """A longer than B (with different lengths across pairs), multi-token answers."""
    return [TokenPair(_rand(rng, 7 + i), _rand(rng, 3 + i % 2), _rand(rng, answer_len[i % len(answer_len)]))
            for i in range(n)]


def _logp(adapter, prompt, answer) -> float:
    """log p(answer | prompt) from the adapter's own forward pass (float64 log-softmax in numpy)."""
    seq = np.array([list(prompt) + list(answer)])
    _, out = adapter.run(seq, ["resid"])
    logits = out[0].astype(np.float64)
    lsm = logits - logits.max(-1, keepdims=True)
    lsm = lsm - np.log(np.exp(lsm).sum(-1, keepdims=True))
    return float(sum(lsm[len(prompt) - 1 + j, t] for j, t in enumerate(answer)))


# --------------------------------------------------------------------------- patching


@pytest.mark.parametrize("kind", KINDS)
def test_patching_a_run_into_itself_changes_nothing(kind, adapters):
    rng = np.random.default_rng(1)
    pairs = [TokenPair(p.a, p.a, p.answer) for p in _pairs(rng)]
    ds = patch_residual(adapters[kind], pairs, batch_size=7)
    patched = ds.logp_patched.values
    have = ~np.isnan(patched)
    assert have.sum() == sum(len(p.b) for p in pairs) * ds.sizes["layer"]
    np.testing.assert_allclose(ds.logp_a, ds.logp_b, atol=1e-6)
    np.testing.assert_allclose(patched[have], np.broadcast_to(ds.logp_b.values[:, None, None], patched.shape)[have],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_patching_the_full_residual_reproduces_run_a_exactly(kind, adapters):
    hooked = hooked_model(adapters[kind])
    rng = np.random.default_rng(2)
    a = torch.as_tensor([_rand(rng, 9) for _ in range(3)])
    b = torch.as_tensor([_rand(rng, 9) for _ in range(3)])
    run_a = run_hooked(hooked, a, capture=True)
    assert (run_hooked(hooked, b).logits - run_a.logits).abs().max() > 1e-3  # B really differs
    B, T = a.shape
    rows, pos = torch.arange(B).repeat_interleave(T), torch.arange(T).repeat(B)
    for layer in range(hooked.n_resid):
        full = Patch(layer, rows, pos, run_a.resid[layer][rows, pos])
        logits = run_hooked(hooked, b, patches=[full]).logits
        assert (logits - run_a.logits).abs().max() <= 1e-5, layer
    # patching all but the last position at the last layer leaves the last position's logits B's
    last = hooked.n_resid - 1
    some = pos < T - 1
    part = run_hooked(hooked, b, patches=[Patch(last, rows[some], pos[some], run_a.resid[last][rows[some], pos[some]])])
    assert torch.allclose(part.logits[:, -1], run_hooked(hooked, b).logits[:, -1], atol=1e-6)
    assert torch.allclose(part.logits[:, :-1], run_a.logits[:, :-1], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_log_probs_and_recovered_fraction_match_an_independent_computation(kind, adapters):
    adapter = adapters[kind]
    hooked = hooked_model(adapter)
    rng = np.random.default_rng(3)
    pairs = _pairs(rng) + [TokenPair(_rand(rng, 2), _rand(rng, 4), _rand(rng, 2))]  # B longer than A
    ds = patch_residual(adapter, pairs, batch_size=6)
    for i, p in enumerate(pairs):
        assert ds.logp_a.values[i] == pytest.approx(_logp(adapter, p.a, p.answer), abs=1e-4)
        assert ds.logp_b.values[i] == pytest.approx(_logp(adapter, p.b, p.answer), abs=1e-4)
    gap = (ds.logp_a - ds.logp_b).values[:, None, None]
    np.testing.assert_allclose(ds.recovered_pair, (ds.logp_patched - ds.logp_b).values / gap)
    np.testing.assert_allclose(ds.recovered, np.nanmean(ds.recovered_pair.values, 0))
    assert list(ds.pos.values) == [-4, -3, -2, -1]
    # the last pair's B has 4 tokens and A 2: its first two B positions have no counterpart
    assert np.isnan(ds.logp_patched.values[-1, :, :2]).all() and np.isfinite(ds.logp_patched.values[-1, :, 2:]).all()
    # one (pair, layer, pos) by hand: A's resid (from the adapter's own run) at A's aligned position
    i, layer, p = 1, 1, -2
    pair = pairs[i]
    acts, _ = adapter.run(np.array([list(pair.a)]), ["resid"])
    vec = torch.as_tensor(acts["resid"][0, layer, len(pair.a) + p])
    seq = torch.as_tensor([list(pair.b) + list(pair.answer[:-1])])
    logits = run_hooked(hooked, seq, patches=[Patch(layer, torch.tensor([0]), torch.tensor([len(pair.b) + p]),
                                                    vec[None])]).logits[0].double().log_softmax(-1)
    want = sum(float(logits[len(pair.b) - 1 + j, t]) for j, t in enumerate(pair.answer))
    assert float(ds.logp_patched.sel(pair=i, layer=layer, pos=p)) == pytest.approx(want, abs=1e-4)
    assert ds.token_b.values[0].tolist() == [-1, *pairs[0].b] and ds.token_b.values[i].tolist() == list(pair.b)


@pytest.mark.parametrize("kind", ["toy", "llama"])
def test_last_layer_last_position_recovers_a_one_token_answer_fully(kind, adapters):
    rng = np.random.default_rng(4)
    pairs = _pairs(rng, answer_len=(1,))
    n = adapters[kind].sites["resid"] - 1
    for ablation in (None, Ablation(heads=((0, 1),), blocks=(1,), mode="zero")):
        ds = patch_residual(adapters[kind], pairs, ablation=ablation)
        np.testing.assert_allclose(ds.recovered_pair.sel(layer=n, pos=-1), 1.0, atol=1e-4)
        np.testing.assert_allclose(ds.recovered_pair.sel(layer=n, pos=[-3, -2]), 0.0, atol=1e-4)
        if ablation:
            assert np.abs(ds.logp_a - ds.logp_a_clean).max() > 1e-3
            assert ds.attrs["ablation"] == "zero: heads 0.1; blocks 1"


def test_patching_finds_an_exact_induction_circuit_where_it_is():
    """The hand-built induction model (tests/support/induction_models.py): block 1's head copies the
    token after the previous occurrence of the current one, so only resid layer 2 at the last position
    carries the answer from the repeated sequence A into the bare suffix B."""
    from probekit.models.toy.adapter import ToyAdapter
    from probekit.models.toy.checkpoint import Checkpoint
    from support import induction_models as im

    model, cfg = im.build()
    adapter = ToyAdapter(model, Checkpoint(cfg, "repeated-tokens", {}), "toy:induction", random_init=False,
                         init_seed=0, device="cpu")
    rng = np.random.default_rng(12)
    pairs = []
    for _ in range(6):
        seg = tuple(int(t) for t in rng.choice(np.arange(1, im.VOCAB), im.SEGMENT, replace=False))
        pairs.append(TokenPair((0, *seg, *seg[:-1]), (0, *seg[2:-1]), seg[-1:], prefix=1))  # BOS aligned with BOS
    ds = patch_residual(adapter, pairs)
    assert (ds.logp_a > -0.01).all() and (ds.logp_b < -2).all()  # A knows the answer, B does not
    rec = ds.recovered_pair
    np.testing.assert_allclose(rec.sel(layer=2, pos=-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(rec.sel(layer=2, pos=[-4, -3, -2]), 0.0, atol=1e-4)
    assert (rec.sel(layer=[0, 1]) < 0.05).all()
    induction = ablate(adapter, pairs, Ablation(heads=((1, 0),)))
    np.testing.assert_allclose(induction.logp_a, -np.log(im.VOCAB), atol=1e-4)  # nothing written to `out`
    prev_token = ablate(adapter, pairs, Ablation(heads=((0, 0),)))
    assert (prev_token.delta < -1).all()


def test_patching_only_some_layers_and_bad_layers(adapters):
    from probekit.errors import UsageError

    pairs = _pairs(np.random.default_rng(5), n=2)
    ds = patch_residual(adapters["toy"], pairs, layers=[3, 0])
    assert ds.layer.values.tolist() == [0, 3]
    full = patch_residual(adapters["toy"], pairs)
    np.testing.assert_allclose(ds.logp_patched, full.logp_patched.sel(layer=[0, 3]), atol=1e-6)
    with pytest.raises(UsageError, match="0-3"):
        patch_residual(adapters["toy"], pairs, layers=[4])


# --------------------------------------------------------------------------- ablation


def _ids(rng, n=3, T=8):
    return torch.as_tensor([_rand(rng, T) for _ in range(n)])


@pytest.mark.parametrize("kind", KINDS)
def test_zero_head_ablation_zeroes_that_head_only_and_changes_the_output(kind, adapters):
    hooked = hooked_model(adapters[kind])
    ids = _ids(np.random.default_rng(6))
    block, head, H = 1, 2, hooked.n_heads
    seen = []
    handle = hooked.head_projs[block].register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].clone()))
    try:
        clean = run_hooked(hooked, ids).logits
        ablated = run_hooked(hooked, ids, ablation=Ablation(heads=((block, head),))).logits
    finally:
        handle.remove()
    x_clean, x_abl = (x.view(*x.shape[:2], H, -1) for x in seen)
    assert x_clean[:, :, head].abs().max() > 0 and x_abl[:, :, head].abs().max() == 0
    others = [h for h in range(H) if h != head]
    assert torch.equal(x_abl[:, :, others], x_clean[:, :, others])
    assert (ablated - clean).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_zero_block_ablation_makes_the_block_add_nothing(kind, adapters):
    hooked = hooked_model(adapters[kind])
    ids = _ids(np.random.default_rng(7))
    clean = run_hooked(hooked, ids, capture=True)
    for block in range(hooked.n_blocks):
        run = run_hooked(hooked, ids, ablation=Ablation(blocks=(block,)), capture=True)
        assert not torch.equal(clean.resid[block + 1], clean.resid[block])
        assert torch.equal(run.resid[block + 1], run.resid[block])
        assert torch.equal(run.resid[block], clean.resid[block])  # earlier layers untouched
        assert (run.logits - clean.logits).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_mean_ablation_of_identical_inputs_changes_nothing(kind, adapters):
    hooked = hooked_model(adapters[kind])
    rng = np.random.default_rng(8)
    seq = _rand(rng, 8)
    ablation = Ablation(heads=((0, 1), (1, 3)), blocks=(1,), mode="mean")
    same = torch.as_tensor([seq] * 4)
    means = component_means(hooked, [seq] * 4, ablation, batch_size=3)
    assert means[("head", 0)].shape == (8, hooked.n_heads, hooked.adapter.d_model // hooked.n_heads)
    assert means[("block", 1)].shape == (8, hooked.adapter.d_model)
    clean = run_hooked(hooked, same).logits
    assert (run_hooked(hooked, same, ablation=ablation, means=means).logits - clean).abs().max() < 1e-5
    # ...but different inputs: the mean is not each input's own value
    mixed = [_rand(rng, 8) for _ in range(4)]
    m2 = component_means(hooked, mixed, ablation)
    ids = torch.as_tensor(mixed)
    assert (run_hooked(hooked, ids, ablation=ablation, means=m2).logits - run_hooked(hooked, ids).logits).abs().max() > 1e-4
    # the library entry point: mean over the scored prompts themselves
    lp = answer_logprobs(hooked.adapter, [seq] * 3, [(5, 6)] * 3, ablation=ablation)
    np.testing.assert_allclose(lp, answer_logprobs(hooked.adapter, [seq] * 3, [(5, 6)] * 3), atol=1e-5)


def test_mean_is_taken_per_position_over_the_prompts_that_reach_it(adapters):
    hooked = hooked_model(adapters["toy"])
    seqs = [(4, 5, 6, 7), (8, 9), (10, 11, 12)]
    seen = []
    handle = hooked.blocks[0].register_forward_hook(lambda _m, inp, out: seen.append((out - inp[0]).detach()))
    try:
        for s in seqs:
            run_hooked(hooked, torch.as_tensor([s]))
    finally:
        handle.remove()
    means = component_means(hooked, seqs, Ablation(blocks=(0,), mode="mean"), batch_size=2)[("block", 0)]
    deltas = [d[0] for d in seen]
    want = [torch.stack([d[t] for d in deltas if len(d) > t]).mean(0) for t in range(4)]
    assert torch.allclose(means, torch.stack(want), atol=1e-6)


def test_ablate_reports_the_change_in_answer_log_prob(adapters):
    pairs = _pairs(np.random.default_rng(9))
    res = ablate(adapters["gpt2"], pairs, Ablation(heads=((1, 0), (1, 1), (1, 2), (1, 3))))
    np.testing.assert_allclose(res.delta, res.logp_a - res.logp_a_clean)
    assert np.abs(res.delta).max() > 1e-4 and res.attrs["ablation"] == "zero: heads 1.0,1.1,1.2,1.3"


def test_head_and_block_specs_parse_and_list_the_valid_ranges():
    from probekit.errors import UsageError

    assert parse_heads("1.2, 0.*", 2, 3) == ((1, 2), (0, 0), (0, 1), (0, 2))
    assert parse_blocks("1,0", 2) == (1, 0) and parse_heads("", 2, 3) == () and parse_blocks(None, 2) == ()
    for bad in ("9.9", "1.3", "x.1", "1"):
        with pytest.raises(UsageError, match="blocks 0-1, heads 0-2"):
            parse_heads(bad, 2, 3)
    with pytest.raises(UsageError, match="blocks 0-1"):
        parse_blocks("2", 2)
    with pytest.raises(UsageError, match="zero, mean"):
        Ablation(mode="resample")
    assert Ablation(heads=((1, 0), (0, 2), (1, 0))).heads == ((0, 2), (1, 0)) and not Ablation()


def test_torch_module_resid_patching(adapters):
    from probekit.errors import UsageError
    from probekit.plugin.host import PluginHost

    adapter = PluginHost.default(entry_points=False).models.get("torch").load(
        "support.token_models:make_model?resid=blocks.*")
    rng = np.random.default_rng(10)
    pairs = _pairs(rng, n=2)
    same = patch_residual(adapter, [TokenPair(p.a, p.a, p.answer) for p in pairs])
    patched = same.logp_patched.values
    have = ~np.isnan(patched)
    assert have.sum() == 2 * sum(len(p.a) for p in pairs)
    np.testing.assert_allclose(patched[have], np.broadcast_to(same.logp_b.values[:, None, None], patched.shape)[have],
                               atol=1e-5)
    ds = patch_residual(adapter, pairs)
    np.testing.assert_allclose(ds.recovered_pair.sel(layer=1, pos=-1).values[0], 1.0, atol=1e-4)  # 1-token answer
    with pytest.raises(UsageError, match="head ablation needs"):
        patch_residual(adapter, pairs, ablation=Ablation(heads=((0, 0),)))


def test_models_without_token_answers_are_refused(tiny_checkpoint):
    from probekit.errors import UsageError
    from probekit.plugin.host import PluginHost

    adapter = PluginHost.default(entry_points=False).models.get("toy").load(str(tiny_checkpoint))
    with pytest.raises(UsageError, match="token inputs"):
        hooked_model(adapter)


def test_text_pairs_score_the_answer_as_read_in_context_and_align_a_bos(adapters):
    from probekit.lenses.interventions.pairs import encode_pairs, encode_text

    gpt2, llama = adapters["gpt2"], adapters["llama"]
    tok = gpt2.tokenizer
    pair = encode_text(tok, "the cat sat on the mat\nthe dog sat on the", "the dog sat on the", " mat")
    assert pair.answer == tuple(tok(" mat", add_special_tokens=False)["input_ids"]) and pair.prefix == 0
    assert pair.meta["answer_tokenization"] == "context" and pair.b == tuple(tok("the dog sat on the")["input_ids"])
    # a tokenizer merging the prompt's end with the answer: the answer is tokenised on its own
    assert len(tok("hello")["input_ids"]) < len(tok("hel")["input_ids"]) + len(tok("lo")["input_ids"])
    merged = encode_text(tok, "a dog ran\nhel", "hel", "lo")
    assert merged.meta["answer_tokenization"] == "separate"
    assert merged.answer == tuple(tok("lo", add_special_tokens=False)["input_ids"])
    # Llama's BOS: both prompts start with it, so it is aligned with A's BOS, not with A's end
    recs = [{"a": "(12, 27)\n(40, 83)\n(7,", "b": "(7,", "answer": " 17)"},
            {"a": "the cat sat on the mat\nthe dog sat on the", "b": "the dog sat on the", "answer": " mat"}]
    pairs = encode_pairs(llama, recs)
    bos = llama.tokenizer.bos_token_id
    assert all(p.prefix == 1 and p.a[0] == p.b[0] == bos for p in pairs)
    assert [p.source(0) for p in pairs] == [0, 0] and pairs[0].source(1) == len(pairs[0].a) - len(pairs[0].b) + 1
    ds = patch_residual(llama, pairs)
    assert ds.prefix.values.tolist() == [1, 1]
    for i, p in enumerate(pairs):  # a BOS resid is the same in both runs: patching it changes nothing
        np.testing.assert_allclose(ds.logp_patched.values[i, :, -len(p.b)], ds.logp_b.values[i], atol=1e-5)
    assert encode_pairs(gpt2, recs)[0].prefix == 0


# --------------------------------------------------------------------------- the command

PAIRS = [
    {"a": "(12, 27)\n(40, 83)\n(7,", "b": "(7,", "answer": " 17)"},
    {"a": "(40, 83)\n(12, 27)\n(40,", "b": "(40,", "answer": " 83)"},
    {"a": "the cat sat on the mat\nthe dog sat on the", "b": "the dog sat on the", "answer": " mat"},
]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_patch_command_end_to_end_with_ablation(kind, hf_dirs, tmp_path, capsys):
    import xarray as xr

    from probekit.cli import run

    pairs = _write(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "res"
    args = ["patch", "--model", f"hf:{hf_dirs[kind]}", "--pairs", str(pairs), "--batch-size", "5"]
    assert run(args + ["--ablate-heads", "1.*", "--ablate-layers", "0", "--ablation", "mean", "--out", str(out),
                       "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [c["condition"] for c in payload["conditions"]] == ["none", "mean: heads 1.0,1.1,1.2,1.3; blocks 0"]
    assert payload["layers"] == [0, 1, 2] and payload["pos"][-1] == -1 and len(payload["tokens_b"]) == len(payload["pos"])
    none, abl = payload["conditions"]
    assert none["logp_a"] == pytest.approx(none["logp_a_clean"]) and abl["logp_a"] != pytest.approx(abl["logp_a_clean"])
    assert len(none["per_layer"]) == 3 and len(none["recovered"]) == 3
    assert Path(payload["plot"]) == out / "patch.png" and (out / "patch.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "patch.json").read_text())["conditions"][0]["per_layer"] == none["per_layer"]
    ds = xr.open_zarr(out / "patch.zarr")
    assert ds.recovered.dims == ("condition", "layer", "pos") and ds.logp_patched.dims[1:] == ("pair", "layer", "pos")
    assert list(ds.text_b.values) == [p["b"] for p in PAIRS] and ds.attrs["model_spec"] == f"hf:{hf_dirs[kind]}"
    assert set(ds.answer_tokenization.values) <= {"context", "separate"}
    assert ds.token_b_str.values[0, -1] != ""

    store = tmp_path / "runs.zarr"  # a new standalone store, then a second run into its patching/ group
    assert run(args + ["--out", str(store), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert run(args + ["--out", str(store), "--layers", "0,2"]) == 0
    captured = capsys.readouterr()
    assert "best pos" in captured.out and "results:" in captured.err
    assert xr.open_zarr(store).sizes["condition"] == 1
    (group,) = [f"patching/{p.name}" for p in (store / "patching").iterdir() if p.is_dir()]
    again = xr.open_zarr(store, group=group)
    assert again.layer.values.tolist() == [0, 2]
    np.testing.assert_allclose(again.recovered.sel(condition="none").values,
                               np.array(first["conditions"][0]["recovered"], dtype=float)[[0, 2]], atol=1e-6)
    assert Path(first["plot"]).is_file()


def test_patch_command_takes_pairs_from_a_task(hf_dirs, tmp_path, capsys, monkeypatch):
    from dataclasses import dataclass

    from probekit.cli import run
    from probekit.plugin.hookspecs import hookimpl
    from probekit.plugin.host import PluginHost, get_plugin_manager
    from probekit.tasks import Task

    @dataclass(frozen=True)
    class AffineParams:
        k: int = 2

    class Affine(Task):
        name = "tiny-affine"
        Params = AffineParams

        def prompt_pairs(self, n, seed):
            rng = np.random.default_rng(seed)
            out = []
            for _ in range(n):
                xs = rng.integers(0, 50, self.params.k + 1)
                ctx = "".join(f"({x}, {2 * x + 3})\n" for x in xs[:-1])
                out.append({"a": f"{ctx}({xs[-1]},", "b": f"({xs[-1]},", "answer": f" {2 * xs[-1] + 3})"})
            return out

    class Plugin:
        @hookimpl
        def probekit_register_tasks(self, register):
            register("tiny-affine", Affine)

    host = PluginHost(get_plugin_manager(entry_points=False, plugins=[Plugin()]))
    monkeypatch.setattr(PluginHost, "default", classmethod(lambda cls, **kw: host))
    args = ["patch", "--model", f"hf:{hf_dirs['gpt2']}", "--task", "tiny-affine", "-p", "k=3", "--n-pairs", "3",
            "--plot", str(tmp_path / "p.png"), "--json"]
    assert run(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n_pairs"] == 3 and Path(payload["plot"]).is_file() and payload["saved"] is None
    assert run(["patch", "--model", f"hf:{hf_dirs['gpt2']}", "--task", "nope"]) == 2
    assert "choose from" in capsys.readouterr().err


def _one_line_error(capsys, code, rc, *needles):
    # transformers' own weight-loading progress bar may come first: the error itself is one line
    err = "\n".join(ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("Loading weights"))
    assert rc == code, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_patch_command_errors_are_one_line(hf_dirs, toy_dir, tiny_checkpoint, tmp_path, capsys):
    from probekit.cli import run

    good = _write(tmp_path / "good.jsonl", PAIRS[:1])
    gpt2 = f"hf:{hf_dirs['gpt2']}"
    _one_line_error(capsys, 2, run(["patch", "--model", "nonsense", "--pairs", str(good)]), "must look like")
    _one_line_error(capsys, 2, run(["patch", "--model", "nope:x", "--pairs", str(good)]), "choose from")
    _one_line_error(capsys, 2, run(["patch", "--model", gpt2, "--pairs", str(good), "--ablate-heads", "9.9"]),
                    "blocks 0-1, heads 0-3")
    _one_line_error(capsys, 2, run(["patch", "--model", gpt2, "--pairs", str(good), "--ablate-layers", "2"]),
                    "blocks 0-1")
    _one_line_error(capsys, 2, run(["patch", "--model", gpt2, "--pairs", str(good), "--ablation", "resample"]),
                    "zero, mean")
    _one_line_error(capsys, 1, run(["patch", "--model", gpt2, "--pairs", str(_write(tmp_path / "e.jsonl", []))]),
                    "holds no prompt pairs")
    empty_answer = _write(tmp_path / "a.jsonl", [{"a": "the cat", "b": "cat", "answer": ""}])
    _one_line_error(capsys, 1, run(["patch", "--model", gpt2, "--pairs", str(empty_answer)]), "tokenises to no tokens")
    _one_line_error(capsys, 1, run(["patch", "--model", gpt2, "--pairs",
                                    str(_write(tmp_path / "k.jsonl", [{"a": "x", "b": "y"}]))]), "keys a, b, answer")
    _one_line_error(capsys, 2, run(["patch", "--model", gpt2]), "exactly one of --pairs")
    _one_line_error(capsys, 2, run(["patch", "--model", gpt2, "--task", "lds"]), "prompt pairs")
    _one_line_error(capsys, 2, run(["patch", "--model", f"toy:{toy_dir}", "--pairs", str(good)]), "no tokenizer")
    ids = _write(tmp_path / "ids.jsonl", [{"a": [1, 2, 30], "b": [2], "answer": [3]}])
    _one_line_error(capsys, 1, run(["patch", "--model", f"toy:{toy_dir}", "--pairs", str(ids)]), "0-19")
    _one_line_error(capsys, 2, run(["patch", "--model", f"toy:{tiny_checkpoint}", "--pairs", str(ids)]),
                    "token inputs")


def test_patch_command_on_a_toy_model_with_token_ids(toy_dir, tmp_path, capsys):
    from probekit.cli import run

    rng = np.random.default_rng(11)
    recs = [{"a": list(p.a), "b": list(p.b), "answer": list(p.answer)} for p in _pairs(rng)]
    pairs = _write(tmp_path / "ids.jsonl", recs)
    assert run(["patch", "--model", f"toy:{toy_dir}", "--pairs", str(pairs), "--ablate-heads", "2.0",
                "--out", str(tmp_path / "toy.zarr"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["layers"] == [0, 1, 2, 3] and payload["tokens_b"] == [str(t) for t in recs[1]["b"]]  # the first longest B
    assert Path(payload["plot"]).is_file() and payload["saved"] == str(tmp_path / "toy.zarr")
