"""The ``tlens:`` adapter on a tiny random HookedTransformer built and saved here (no network):
the legacy path, TransformerLens 2.x-3.x (TransformerLens 4: ``test_tlens_bridge.py``).

Every activation is compared with TransformerLens's own ``run_with_cache`` hook values, on the
model as built (processing off) and on a reference that TransformerLens itself processes (the
default switches, as ``from_pretrained`` would).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("transformer_lens")
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer as _HT  # noqa: F401
except ImportError:  # TransformerLens 4 removed it: tests/models/test_tlens_bridge.py covers 4.x
    pytest.skip("the HookedTransformer path needs TransformerLens < 4 (the legacy command: pip install "
                "'transformer-lens<4', then pytest tests/models/test_tlens.py)", allow_module_level=True)

import torch  # noqa: E402

from probekit.errors import CheckpointError, ProbekitError, UnknownNameError, UsageError  # noqa: E402
from probekit.models.tlens import PROCESSING_DEFAULTS, TLensAdapter, params_hash, save_tlens  # noqa: E402
from probekit.plugin.host import PluginHost  # noqa: E402

ATOL = 1e-5
STATES = 5  # markov task states; the model's d_vocab is larger
N_LAYERS = 2
SITES = ["resid", "attn_out", "mlp_out", "attn_pattern"]
NONE = {k: False for k in PROCESSING_DEFAULTS}


def _tl():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    return HookedTransformer, HookedTransformerConfig


def _config(**kw):
    _, HookedTransformerConfig = _tl()
    args = dict(n_layers=N_LAYERS, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, n_ctx=32, act_fn="gelu",
                normalization_type="LN", device="cpu", seed=None)
    args.update(kw)
    return HookedTransformerConfig(**args)


def _build(cfg, tokenizer=None):
    """A random model whose LayerNorm weights and biases are not the identity, so that folding and
    centring really change the weights."""
    HookedTransformer, _ = _tl()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=tokenizer).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w") and ("ln" in name):
                p.uniform_(0.5, 1.5)
            elif name.rsplit(".", 1)[-1].startswith("b"):
                p.normal_(0.0, 0.2)
            elif name.endswith(("W_E", "W_pos")):
                p.add_(0.3)  # a mean over features for center_writing_weights to remove
    return model


def _processed_reference(model, **flags):
    """The same weights processed by TransformerLens itself (as from_pretrained does)."""
    HookedTransformer, _ = _tl()
    cfg = _config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = HookedTransformer(cfg).eval()
    ref.load_and_process_state_dict({k: v.clone() for k, v in model.state_dict().items()},
                                    **{**PROCESSING_DEFAULTS, **flags})
    return ref


def _hooks(model, tokens):
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.as_tensor(tokens))
    return logits.numpy(), {k: v.numpy() for k, v in cache.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(saved directory, the model that was saved)."""
    model = _build(_config())
    path = tmp_path_factory.mktemp("tlens") / "tiny"
    save_tlens(model, path)
    return path, model


@pytest.fixture(scope="module")
def adapters(tiny):
    path, _ = tiny
    return {"none": TLensAdapter.load(f"{path}?processing=none"), "default": TLensAdapter.load(str(path))}


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 50, (3, 12))


def test_tlens_scheme_is_registered_and_keeps_the_host_light():
    code = ("import sys; from probekit.plugin.host import PluginHost; h = PluginHost.default(); "
            "assert h.models.get('tlens').__name__ == 'TLensAdapter'; print(' '.join(sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not {m.split(".")[0] for m in loaded} & {"torch", "transformer_lens", "transformers"}


def test_a_missing_transformer_lens_names_the_extra(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import fails as if not installed
    with pytest.raises(UsageError, match=r"pip install 'probekit-lab\[tlens\]'") as info:
        TLensAdapter.load(str(tiny[0]))
    assert "\n" not in str(info.value)


def test_saved_directory_round_trips_unprocessed(tiny, adapters):
    path, model = tiny
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((path / "config.json").read_text())["normalization_type"] == "LN"
    adapter = adapters["none"]
    assert adapter.spec == f"tlens:{path}?processing=none"
    assert adapter.sites == {"resid": 3, "attn_out": 2, "mlp_out": 2, "attn_pattern": 2}
    assert (adapter.d_model, adapter.n_heads, adapter.d_out, adapter.max_positions) == (32, 4, 50, 32)
    assert adapter.site_layout("resid", 7) == (("sample", "layer", "pos", "feature"), (3, 7, 32))
    assert adapter.site_layout("mlp_out", 7) == (("sample", "block", "pos", "feature"), (2, 7, 32))
    assert adapter.site_layout("attn_pattern", 7) == (("sample", "block", "head", "query", "key"), (2, 4, 7, 7))
    prov = adapter.provenance()
    assert prov["model_hash"] == params_hash(model)  # nothing processed: exactly the saved weights
    assert prov["weight_processing"] == prov["weight_processing_applied"] == NONE
    assert prov["model_config"]["normalization_type"] == "LN" and prov["model_config"]["d_vocab"] == 50
    assert prov["random_init"] is False and prov["init_seed"] is None and prov["device"] == "cpu"
    assert prov["model_dtype"] == "float32" and prov["transformer_lens_version"] and prov["tokenizer_hash"] is None
    json.dumps(prov)  # storable as zarr attributes


@pytest.mark.parametrize("which", ["none", "default"])
def test_every_site_equals_run_with_cache(which, tiny, adapters, tokens):
    _, model = tiny
    ref = model if which == "none" else _processed_reference(model)
    adapter = adapters[which]
    acts, logits = adapter.run(tokens, SITES)
    want_logits, cache = _hooks(ref, tokens)
    n = N_LAYERS
    assert acts["resid"].shape == (3, n + 1, 12, 32) and acts["resid"].dtype == np.float32
    np.testing.assert_allclose(acts["resid"][:, 0], cache["blocks.0.hook_resid_pre"], atol=ATOL)
    np.testing.assert_allclose(acts["resid"][:, 0], cache["hook_embed"] + cache["hook_pos_embed"], atol=ATOL)
    for layer in range(1, n + 1):  # layer l = blocks.{l-1}.hook_resid_post, the last one before ln_final
        np.testing.assert_allclose(acts["resid"][:, layer], cache[f"blocks.{layer - 1}.hook_resid_post"], atol=ATOL)
    for i in range(n):
        np.testing.assert_allclose(acts["attn_out"][:, i], cache[f"blocks.{i}.hook_attn_out"], atol=ATOL)
        np.testing.assert_allclose(acts["mlp_out"][:, i], cache[f"blocks.{i}.hook_mlp_out"], atol=ATOL)
        np.testing.assert_allclose(acts["attn_pattern"][:, i], cache[f"blocks.{i}.attn.hook_pattern"], atol=ATOL)
    np.testing.assert_allclose(logits, want_logits, atol=ATOL)
    assert logits.shape == (3, 12, 50)
    assert adapter.provenance()["model_hash"] == params_hash(ref)


def test_processing_changes_resid_and_is_recorded(tiny, adapters, tokens):
    path, _ = tiny
    none, default = adapters["none"], adapters["default"]
    p_none, p_def = none.provenance(), default.provenance()
    assert p_def["weight_processing"] == PROCESSING_DEFAULTS == p_def["weight_processing_applied"]
    assert p_def["model_config"]["normalization_type"] == "LNPre"  # LayerNorm folded
    assert p_def["model_hash"] != p_none["model_hash"]
    a_none, o_none = none.run(tokens, ["resid", "attn_out"])
    a_def, o_def = default.run(tokens, ["resid", "attn_out"])
    assert not np.allclose(a_none["resid"], a_def["resid"], atol=1e-2)
    np.testing.assert_allclose(a_def["resid"].mean(-1), 0, atol=1e-5)  # centred writing weights
    # centring shifts each logit row by a constant: the log-probabilities are unchanged
    log_softmax = lambda x: torch.log_softmax(torch.as_tensor(x), -1).numpy()  # noqa: E731
    np.testing.assert_allclose(log_softmax(o_none), log_softmax(o_def), atol=1e-4)
    # folding LayerNorm alone changes the weights, not the residual stream
    fold = TLensAdapter.load(str(path), **{**NONE, "fold_ln": True})
    assert fold.provenance()["weight_processing"] == {**NONE, "fold_ln": True}
    np.testing.assert_allclose(fold.run(tokens, ["resid"])[0]["resid"], a_none["resid"], atol=1e-4)
    # the query string and keyword arguments say the same; a conflict or an unknown switch is refused
    q = TLensAdapter.load(f"{path}?center_unembed=false&fold_value_biases=0")
    assert q.provenance()["weight_processing"] == {**PROCESSING_DEFAULTS, "center_unembed": False,
                                                   "fold_value_biases": False}
    with pytest.raises(UsageError, match="the spec says False, the argument True"):
        TLensAdapter.load(f"{path}?fold_ln=false", fold_ln=True)
    with pytest.raises(UnknownNameError, match="unknown tlens option 'fold_layernorm'"):
        TLensAdapter.load(f"{path}?fold_layernorm=1")
    with pytest.raises(UsageError, match="give true or false"):
        TLensAdapter.load(f"{path}?fold_ln=maybe")


def test_padding_is_zeroed_and_changes_nothing_valid(adapters, tokens):
    adapter = adapters["default"]
    valid = np.ones(tokens.shape, bool)
    valid[0, 7:] = False
    valid[2, 4:] = False
    full, full_out = adapter.run(tokens, SITES)
    acts, out = adapter.run(tokens, SITES, valid)
    for site in ("resid", "attn_out", "mlp_out"):
        a = acts[site].transpose(0, 2, 1, 3)
        assert not a[~valid].any()
        np.testing.assert_allclose(a[valid], full[site].transpose(0, 2, 1, 3)[valid], atol=ATOL)
    pair = np.broadcast_to((valid[:, :, None] & valid[:, None, :])[:, None, None], acts["attn_pattern"].shape)
    assert not acts["attn_pattern"][~pair].any()
    np.testing.assert_allclose(acts["attn_pattern"][pair], full["attn_pattern"][pair], atol=ATOL)
    assert not out[~valid].any()
    np.testing.assert_allclose(out[valid], full_out[valid], atol=ATOL)
    with pytest.raises(UnknownNameError, match="unknown site 'mlp_in'"):
        adapter.run(tokens, ["resid", "mlp_in"])
    with pytest.raises(ProbekitError, match="exceed the model's n_ctx = 32"):
        adapter.run(np.zeros((1, 33), np.int64), ["resid"])
    with pytest.raises(ProbekitError, match="vocabulary range"):
        adapter.run(np.full((1, 3), 50), ["resid"])


def test_the_adapter_contract(tiny, tokens):
    from probekit import testing
    valid = np.ones(tokens.shape, bool)
    valid[1, 8:] = False
    testing.check_model_adapter(TLensAdapter, str(tiny[0]), inputs=tokens, valid=valid,
                                bad_rest=str(tiny[0].parent / "missing"))


def test_run_cache_with_a_token_task_matches_the_hooks(tiny, tmp_path):
    """The same interface as every adapter: probekit.cache.run.run_cache with a token task (bayes's
    markov), TransformerLens hook names as sites, a random-init group."""
    from probekit.cache.run import CacheRequest, run_cache
    from probekit.store.zarr_store import Store
    from probekit.testing.checks import assert_store_valid

    path, model = tiny
    host = PluginHost.default(pin=["bayes"])
    out = tmp_path / "tl.zarr"
    req = CacheRequest(model=f"tlens:{path}", out=str(out), task="markov", task_params={"states": STATES, "length": 10},
                       n_samples=6, seed=2, sites=("blocks.1.hook_resid_post", "attn_out", "mlp_out", "attn_pattern"),
                       dtype="float32", random_init=True, batch_size=4)
    run_cache(host, req)
    assert_store_valid(out)
    ds = Store.open(out).dataset()
    tok = ds.tokens.values
    assert tok.shape == (6, 10) and tok.max() < STATES
    _, cache = _hooks(_processed_reference(model), tok)
    for layer in range(N_LAYERS + 1):
        name = "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
        np.testing.assert_allclose(ds.resid.sel(layer=layer).values, cache[name], atol=ATOL)
    for block in range(1, N_LAYERS + 1):
        np.testing.assert_allclose(ds.attn_out.sel(block=block).values, cache[f"blocks.{block - 1}.hook_attn_out"],
                                   atol=ATOL)
        np.testing.assert_allclose(ds.mlp_out.sel(block=block).values, cache[f"blocks.{block - 1}.hook_mlp_out"],
                                   atol=ATOL)
        np.testing.assert_allclose(ds.attn_pattern.sel(block=block).values,
                                   cache[f"blocks.{block - 1}.attn.hook_pattern"], atol=ATOL)
    attrs = ds.attrs
    assert attrs["model_spec"] == f"tlens:{path}" and attrs["weight_processing"] == PROCESSING_DEFAULTS
    assert attrs["weight_processing_applied"]["center_writing_weights"] is True
    rand = Store.open(out).dataset("random_init")
    assert rand.attrs["random_init"] is True and rand.attrs["weight_processing"] == PROCESSING_DEFAULTS
    assert rand.attrs["model_hash"] != attrs["model_hash"]
    assert not np.allclose(rand.resid.values[:, 1:], ds.resid.values[:, 1:])
    # other processing is another cache: resuming into this store is refused
    from probekit.errors import StoreError

    with pytest.raises(StoreError, match="holds a different cache"):
        run_cache(host, CacheRequest(**{**req.__dict__, "model": f"tlens:{path}?processing=none",
                                        "checkpoint_paths": ()}))


def test_random_init_is_seeded_and_processed_alike(tiny):
    path, _ = tiny
    a = TLensAdapter.load(str(path), random_init=True, init_seed=3)
    b = TLensAdapter.load(str(path), random_init=True, init_seed=3)
    c = TLensAdapter.load(str(path), random_init=True, init_seed=4)
    assert a.provenance()["model_hash"] == b.provenance()["model_hash"] != c.provenance()["model_hash"]
    assert a.provenance()["init_seed"] == 3 and a.provenance()["model_config"]["normalization_type"] == "LNPre"


def test_a_model_with_a_tokenizer_caches_text(tmp_path, capsys):
    from support.hf_models import tokenizer
    from transformers import AutoTokenizer

    from probekit.cli import run
    from probekit.store.zarr_store import Store

    tok_dir = tmp_path / "tok"
    tokenizer(bos=False).save_pretrained(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = _build(_config(d_vocab=len(tok)), tokenizer=tok)
    path = save_tlens(model, tmp_path / "with_tok")
    adapter = TLensAdapter.load(str(path))
    texts = ["the cat sat on the mat", "a dog ran", "hello"]
    ids, valid = adapter.tokenize(texts)
    for i, text in enumerate(texts):  # TransformerLens's own tokenisation (BOS prepended), right-padded
        want = model.to_tokens(text)[0].numpy()
        np.testing.assert_array_equal(ids[i, : len(want)], want)
        assert valid[i, : len(want)].all() and not valid[i, len(want):].any()
    assert ids[0, 0] == tok.bos_token_id and adapter.decode_tokens(ids[1:2])[0][:3] == ["<s>", "a", " dog"]
    assert adapter.tokenize(texts, max_len=3)[0].shape == (3, 3)

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 2))
    out = tmp_path / "text.zarr"
    assert run(["cache", "--model", f"tlens:{path}", "--text", str(prompts), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_samples"] == 6  # stdout is only the JSON
    ds = Store.open(out).dataset()
    assert (ds.valid.values == np.vstack([valid, valid])).all() and ds.attrs["tokenizer_hash"]
    assert not ds.resid.values.transpose(0, 2, 1, 3)[~ds.valid.values].any()


def test_a_model_without_a_tokenizer_refuses_text(tiny, tmp_path, capsys):
    from probekit.cli import run

    (tmp_path / "p.txt").write_text("hello\n")
    assert run(["cache", "--model", f"tlens:{tiny[0]}", "--text", str(tmp_path / "p.txt"),
                "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert "--text needs a model with a tokenizer" in err and "--task" in err


def _expect_one_line(match, fn):
    with pytest.raises(CheckpointError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_bad_directories_are_one_line_checkpoint_errors(tiny, tmp_path):
    import shutil

    from safetensors.torch import save_file

    path, model = tiny
    load = lambda p: (lambda: TLensAdapter.load(str(p)))  # noqa: E731
    _expect_one_line("is neither a model directory nor a TransformerLens model name", load(tmp_path / "missing"))
    _expect_one_line("holds no config.json", load(tmp_path))

    def copy(name, **edits):
        d = tmp_path / name
        shutil.copytree(path, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(edits)
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    bad_json = copy("bad_json")
    (bad_json / "config.json").write_text("{not json")
    _expect_one_line("is not valid JSON", load(bad_json))
    _expect_one_line(r"a transformers config: load that directory with hf:", load(copy("hf_like", model_type="gpt2")))
    _expect_one_line("is not a valid HookedTransformerConfig", load(copy("bad_act", act_fn="no_such_fn")))
    no_dm = copy("no_d_model")
    cfg = json.loads((no_dm / "config.json").read_text())
    del cfg["d_model"]
    (no_dm / "config.json").write_text(json.dumps(cfg))
    _expect_one_line("is not a valid HookedTransformerConfig", load(no_dm))
    _expect_one_line("does not match its config.json: missing blocks.2", load(copy("more_layers", n_layers=3)))
    _expect_one_line(r"has shape \(50, 32\), the config gives \(60, 32\)", load(copy("vocab", d_vocab=60,
                                                                                         d_vocab_out=60)))
    pickled = copy("pickled")
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "model.bin")
    _expect_one_line(r"holds no model.safetensors \(pickled weights are never read\)", load(pickled))
    garbage = copy("garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00" * 16)
    _expect_one_line("cannot read", load(garbage))
    extra = copy("extra")
    save_file({**{k: v.detach().clone() for k, v in model.named_parameters()}, "stray": torch.zeros(1)},
              str(extra / "model.safetensors"))
    _expect_one_line("unexpected stray", load(extra))


def test_official_names_offline_are_one_line_checkpoint_errors(monkeypatch):
    import time

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    _expect_one_line("neither a model directory nor a TransformerLens model name",
                     lambda: TLensAdapter.load("no-such-model-xyz"))
    start = time.perf_counter()
    _expect_one_line("cannot load TransformerLens model 'gpt2-small'", lambda: TLensAdapter.load("gpt2-small"))
    assert time.perf_counter() - start < 30
