"""The ``hf:`` adapter on tiny GPT-2 and Llama models built and saved here (no network).

Every model is loaded through the plugin host's ``hf`` scheme, the same path a user's
``--model hf:<dir>`` takes, and compared with transformers' own forward pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from probekit.errors import CheckpointError, UnknownNameError  # noqa: E402
from probekit.models.toy.checkpoint import weights_hash  # noqa: E402
from probekit.plugin.host import PluginHost  # noqa: E402

from support.hf_models import build, tokenizer  # noqa: E402  (the tiny GPT-2 / Llama recipe, shared)

TEXTS = ["the cat sat on the mat", "a dog ran", "the quick brown fox jumps over the lazy dog", "hello"]
CORPUS = TEXTS + ["the dog sat on the cat", "a quick fox ran over the mat", "hello world, hello cat"]
ATOL = 1e-5


@pytest.fixture(scope="session")
def hf_host():
    return PluginHost.default(entry_points=False)


@pytest.fixture(scope="session")
def adapters(hf_models, hf_host):
    cls = hf_host.models.get("hf")
    return {kind: cls.load(str(path)) for kind, (path, _) in hf_models.items()}


@pytest.fixture(scope="session")
def references(hf_models):
    """transformers' own models, loaded independently of the adapter."""
    from transformers import AutoModelForCausalLM

    return {kind: AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
            for kind, (path, _) in hf_models.items()}


def _final_norm(kind, model):
    return model.transformer.ln_f if kind == "gpt2" else model.model.norm


def _last_block(kind, model):
    return model.transformer.h[-1] if kind == "gpt2" else model.model.layers[-1]


KINDS = ["gpt2", "llama"]


def test_hf_scheme_is_registered_and_loads_the_saved_weights(adapters, hf_models):
    for kind, adapter in adapters.items():
        assert adapter.spec == f"hf:{hf_models[kind][0]}"
        assert adapter.sites == {"resid": 3, "attn_pattern": 2}
        assert (adapter.d_model, adapter.n_heads, adapter.d_out) == (32, 4, len(adapter.tokenizer))
        assert adapter.site_layout("resid", 7) == (("sample", "layer", "pos", "feature"), (3, 7, 32))
        assert adapter.site_layout("attn_pattern", 7) == (("sample", "block", "head", "query", "key"), (2, 4, 7, 7))
        prov = adapter.provenance()
        assert prov["model_hash"] == weights_hash(hf_models[kind][1])
        assert prov["model_spec"] == adapter.spec and prov["random_init"] is False and prov["init_seed"] is None
        assert prov["dtype"] == "float32" and prov["device"] == "cpu"
        assert prov["model_config"]["model_type"] == kind and prov["transformers_version"]
        json.dumps(prov)  # storable as zarr attributes


@pytest.mark.parametrize("kind", KINDS)
def test_resid_and_logits_equal_transformers_own_forward(kind, adapters, references):
    adapter, ref = adapters[kind], references[kind]
    ids, valid = adapter.tokenize(TEXTS)
    assert not valid.all()  # the batch really is padded
    acts, logits = adapter.run(ids, ["resid"], valid)
    n = adapter.sites["resid"] - 1
    assert acts["resid"].shape == (len(TEXTS), n + 1, ids.shape[1], 32) and acts["resid"].dtype == np.float32

    captured = {}
    hook = _last_block(kind, ref).register_forward_hook(
        lambda _m, _i, out: captured.update(last=out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = ref(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(valid).long(),
                      output_hidden_states=True)
    finally:
        hook.remove()
    hs = [h.numpy() for h in out.hidden_states]
    assert len(hs) == n + 1
    for layer in range(n):  # embeddings and every block but the last: exactly HF's hidden_states
        np.testing.assert_allclose(acts["resid"][:, layer][valid], hs[layer][valid], atol=ATOL)
    # the last layer is the last block's output *before* the final norm...
    last = acts["resid"][:, n]
    np.testing.assert_allclose(last[valid], captured["last"].numpy()[valid], atol=ATOL)
    assert not np.allclose(last[valid], hs[n][valid], atol=1e-2)
    # ...and HF's hidden_states[-1] is that with the final norm applied
    with torch.no_grad():
        normed = _final_norm(kind, ref)(torch.as_tensor(last)).numpy()
    np.testing.assert_allclose(normed[valid], hs[n][valid], atol=ATOL)

    np.testing.assert_allclose(logits[valid], out.logits.numpy()[valid], atol=ATOL)
    assert logits.shape == (len(TEXTS), ids.shape[1], adapter.d_out)
    assert not acts["resid"].transpose(0, 2, 1, 3)[~valid].any() and not logits[~valid].any()


@pytest.mark.parametrize("kind", KINDS)
def test_padding_is_marked_invalid_and_changes_nothing_valid(kind, adapters):
    adapter = adapters[kind]
    ids, valid = adapter.tokenize(TEXTS)
    batch_acts, batch_out = adapter.run(ids, ["resid", "attn_pattern"], valid)
    for i, text in enumerate(TEXTS):
        one_ids, one_valid = adapter.tokenize([text])
        k = one_ids.shape[1]
        assert one_valid.all()
        assert valid[i, :k].all() and not valid[i, k:].any()  # False exactly at padding
        np.testing.assert_array_equal(ids[i, :k], one_ids[0])
        assert (ids[i, k:] == adapter.tokenizer.pad_token_id).all()
        acts, out = adapter.run(one_ids, ["resid", "attn_pattern"], one_valid)
        np.testing.assert_allclose(batch_acts["resid"][i, :, :k], acts["resid"][0], atol=ATOL)
        np.testing.assert_allclose(batch_acts["attn_pattern"][i, :, :, :k, :k], acts["attn_pattern"][0], atol=ATOL)
        np.testing.assert_allclose(batch_out[i, :k], out[0], atol=ATOL)
    # more padding on the right changes no valid position
    pad = np.full((len(TEXTS), 5), adapter.tokenizer.pad_token_id, np.int64)
    more_acts, more_out = adapter.run(np.hstack([ids, pad]), ["resid"], np.hstack([valid, pad < 0]))
    T = ids.shape[1]
    np.testing.assert_allclose(more_acts["resid"][:, :, :T], batch_acts["resid"], atol=ATOL)
    np.testing.assert_allclose(more_out[:, :T], batch_out, atol=ATOL)
    assert not more_acts["resid"][:, :, T:].any()


def test_tokenize_truncates_and_decodes_positions(adapters):
    gpt2, llama = adapters["gpt2"], adapters["llama"]
    assert gpt2.tokenizer.pad_token == "</s>"  # no pad token: eos pads
    ids, valid = gpt2.tokenize(TEXTS, max_len=4)
    assert ids.shape == (len(TEXTS), 4) and ids.dtype == np.int64 and valid.dtype == bool
    full, full_valid = gpt2.tokenize(TEXTS)
    np.testing.assert_array_equal(ids, full[:, :4])
    np.testing.assert_array_equal(valid, full_valid[:, :4])
    tokens = gpt2.decode_tokens(full)
    assert len(tokens) == len(TEXTS) and all(len(row) == full.shape[1] for row in tokens)
    for row, text, ok in zip(tokens, TEXTS, full_valid):
        assert "".join(t for t, v in zip(row, ok) if v) == text
    l_ids, _ = llama.tokenize(["a dog ran"])
    l_tokens = llama.decode_tokens(l_ids)[0]
    assert l_tokens[0] == "<s>" and "".join(l_tokens[1:]) == "a dog ran"


@pytest.mark.parametrize("kind", KINDS)
def test_attn_pattern_equals_output_attentions(kind, adapters, references):
    adapter, ref = adapters[kind], references[kind]
    ids, valid = adapter.tokenize(TEXTS)
    acts, _ = adapter.run(ids, ["attn_pattern"], valid)
    att = acts["attn_pattern"]
    assert att.shape == (len(TEXTS), 2, 4, ids.shape[1], ids.shape[1])
    with torch.no_grad():
        out = ref(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(valid).long(),
                  output_attentions=True)
    want = torch.stack(out.attentions, 1).numpy()
    pair = valid[:, None, None, :, None] & valid[:, None, None, None, :]
    pair = np.broadcast_to(pair, att.shape)
    np.testing.assert_allclose(att[pair], want[pair], atol=ATOL)
    assert not att[~pair].any()
    rows = att.sum(-1).transpose(0, 3, 1, 2)[valid]  # every valid query's weights sum to 1
    np.testing.assert_allclose(rows, 1.0, atol=1e-5)
    assert np.allclose(np.triu(att[0, 0, 0], 1), 0)  # causal


def test_random_init_is_deterministic_same_shape_other_weights(hf_models, hf_host, adapters):
    cls = hf_host.models.get("hf")
    path = str(hf_models["llama"][0])
    trained = adapters["llama"]
    a = cls.load(path, random_init=True, init_seed=7)
    b = cls.load(path, random_init=True, init_seed=7)
    c = cls.load(path, random_init=True, init_seed=8)
    pa, pb, pc = a.provenance(), b.provenance(), c.provenance()
    assert pa["model_hash"] == pb["model_hash"] != trained.provenance()["model_hash"]
    assert pc["model_hash"] != pa["model_hash"]
    assert pa["random_init"] is True and pa["init_seed"] == 7 and pa["model_config"] == trained.provenance()["model_config"]
    ids, valid = trained.tokenize(TEXTS)
    ra, oa = a.run(ids, ["resid"], valid)
    rb, ob = b.run(ids, ["resid"], valid)
    rt, ot = trained.run(ids, ["resid"], valid)
    np.testing.assert_array_equal(ra["resid"], rb["resid"])
    np.testing.assert_array_equal(oa, ob)
    assert ra["resid"].shape == rt["resid"].shape and oa.shape == ot.shape
    assert not np.allclose(ra["resid"][:, 1:], rt["resid"][:, 1:])
    shapes = {k: tuple(v.shape) for k, v in a.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in trained.model.state_dict().items()}


def test_a_model_without_a_causal_lm_head_loads_with_automodel(tmp_path, hf_host):
    """A bidirectional encoder (DistilBERT): outputs are final hidden states, and the valid
    mask really is the attention mask (padding would otherwise leak into every position)."""
    from transformers import DistilBertConfig, DistilBertModel

    tok = tokenizer(bos=True, corpus=CORPUS)
    cfg = DistilBertConfig(n_layers=2, dim=32, n_heads=4, hidden_dim=64, vocab_size=len(tok),
                           max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = DistilBertModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    adapter = hf_host.models.get("hf").load(str(tmp_path))
    assert not adapter.is_causal_lm and adapter.d_out == adapter.d_model == 32
    ids, valid = adapter.tokenize(TEXTS)
    acts, out = adapter.run(ids, ["resid"], valid)
    with torch.no_grad():
        ref = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(valid).long(),
                    output_hidden_states=True)
    for layer in range(3):  # no final norm here: every layer is HF's hidden_states
        np.testing.assert_allclose(acts["resid"][:, layer][valid], ref.hidden_states[layer].numpy()[valid], atol=ATOL)
    np.testing.assert_allclose(out[valid], ref.last_hidden_state.numpy()[valid], atol=ATOL)
    one_ids, one_valid = adapter.tokenize(TEXTS[1:2])
    _, one_out = adapter.run(one_ids, ["resid"], one_valid)
    np.testing.assert_allclose(out[1, : one_ids.shape[1]], one_out[0], atol=ATOL)


def test_unknown_site_is_refused(adapters):
    adapter = adapters["gpt2"]
    ids, valid = adapter.tokenize(TEXTS[:1])
    with pytest.raises(UnknownNameError, match="unknown site 'mlp_out'; choose from: attn_pattern, resid"):
        adapter.run(ids, ["resid", "mlp_out"], valid)


def test_hub_name_unavailable_offline_is_a_one_line_checkpoint_error(hf_host, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    cls = hf_host.models.get("hf")
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        cls.load("probekit-tests/no-such-model")
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    assert "\n" not in msg and "'probekit-tests/no-such-model'" in msg
    with pytest.raises(CheckpointError, match="is not a model directory"):
        cls.load(str(tmp_path / "missing"))


def test_local_directory_without_weights_or_with_unsafe_pickle_is_refused(hf_models, hf_host, tmp_path):
    import shutil

    cls = hf_host.models.get("hf")
    src = hf_models["gpt2"][0]
    empty = tmp_path / "no_weights"
    shutil.copytree(src, empty, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(CheckpointError, match="holds no model weights"):
        cls.load(str(empty))

    # a .bin-only directory is read with torch.load(weights_only=True): plain tensors load...
    binary = tmp_path / "bin_only"
    shutil.copytree(src, binary, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(hf_models["gpt2"][1].state_dict(), binary / "pytorch_model.bin")
    assert cls.load(str(binary)).provenance()["model_hash"] == weights_hash(hf_models["gpt2"][1])
    # ...but a pickle that would run code is refused, and the code never runs
    evil = tmp_path / "evil"
    shutil.copytree(src, evil, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "pwned"
    torch.save({"x": _Evil(str(marker))}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        cls.load(str(evil))
    assert not marker.exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_registering_hf_keeps_the_plugin_host_light():
    code = ("import sys; from probekit.plugin.host import PluginHost; h = PluginHost.default(); h.models.get('hf'); "
            "print(' '.join(sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not {m.split(".")[0] for m in loaded} & {"torch", "transformers", "tokenizers", "huggingface_hub"}


def test_cache_from_a_text_file_stores_tokens_and_probes_skip_padding(hf_models, tmp_path, capsys):
    import json

    import numpy as np

    from probekit.cli import run
    from probekit.plugin.hookspecs import hookimpl
    from probekit.targets.hypothesis import Hypothesis, Target
    from probekit.plugin.host import get_plugin_manager
    from probekit.probes.run import ProbeSettings, run_probe
    from probekit.store.zarr_store import Store

    path, _ = hf_models["gpt2"]
    prompts = ["the cat sat on the mat", "a dog ran", "the bird sang a song in the tree", "cats and dogs"] * 6
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": p}) for p in prompts) + "\n")
    out = tmp_path / "text.zarr"
    assert run(["cache", "--model", f"hf:{path}", "--text", str(jsonl), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_samples"] == len(prompts)
    ds = Store.open(out).dataset()
    valid = ds.valid.values
    assert ds.tokens.dims == ("sample", "pos") and valid.dtype == bool and (~valid).any()
    assert list(ds.text.values[:2]) == prompts[:2]
    assert all(s == "" for s in ds.token_str.values[~valid]) and all(s for s in ds.token_str.values[valid])
    assert ds.attrs["task"] == "text" and len(ds.attrs["task_params"]["sha256"]) == 64
    assert np.all(ds.resid.values.transpose(0, 2, 1, 3)[~valid] == 0)  # padding is zeroed, not garbage

    class CurrentToken(Hypothesis):
        name = "current-token"
        requires = ("tokens",)

        def compute(self, ds):
            tok = ds.tokens.values
            return [Target("token", tok, np.ones(tok.shape, bool), "token id", kind="categorical")]

    class Plugin:
        @hookimpl
        def probekit_register_hypotheses(self, register):
            register("current-token", CurrentToken)

    from probekit.plugin.host import PluginHost

    host = PluginHost(get_plugin_manager(entry_points=False, plugins=[Plugin()]))
    res, _ = run_probe(host, out, "current-token", ProbeSettings(n_folds=3, n_boot=0, n_perm_categorical=1))
    assert int(res.n_rows.sel(condition="model", site="resid", layer=0, target="token")) == valid.sum()

    jsonl.write_text(jsonl.read_text() + json.dumps({"text": "one more"}) + "\n")  # the file changed
    assert run(["cache", "--model", f"hf:{path}", "--text", str(jsonl), "--out", str(out)]) == 1
    assert "holds a different cache" in capsys.readouterr().err


def test_text_needs_a_tokenizer_and_a_readable_file(tmp_path, tiny_checkpoint, capsys):
    from probekit.cli import run

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "no text field"}\n')
    (tmp_path / "ok.txt").write_text("hello\n")
    assert run(["cache", "--model", f"toy:{tiny_checkpoint}", "--text", str(tmp_path / "ok.txt"),
                "--out", str(tmp_path / "a.zarr")]) == 2
    assert "needs a model with a tokenizer" in capsys.readouterr().err
    from probekit.tasks.text import read_prompts
    from probekit.errors import DataError

    with pytest.raises(DataError, match="bad.jsonl:1 is not a JSON object with a 'text' field"):
        read_prompts(bad)


def test_model_dtype_bfloat16_caches_close_to_float32(hf_models, tmp_path):
    import numpy as np

    from probekit.cache.run import CacheRequest, run_cache
    from probekit.plugin.host import PluginHost

    path, _ = hf_models["llama"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat sat on the mat\na dog ran far away\n")
    host = PluginHost.default(entry_points=False)
    ref = run_cache(host, CacheRequest(model=f"hf:{path}", out=str(tmp_path / "f32.zarr"), text=str(prompts),
                                       dtype="float32"))
    bf = run_cache(host, CacheRequest(model=f"hf:{path}", out=str(tmp_path / "bf16.zarr"), text=str(prompts),
                                      dtype="float32", model_dtype="bfloat16"))
    a, b = ref.dataset().resid.values, bf.dataset().resid.values
    assert bf.attrs()["request"]["model_dtype"] == "bfloat16"
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.05 * np.abs(a).max()
