"""``hf:<file>.gguf``: a tiny Llama written as a GGUF file here (no network) loads through the ``hf:``
adapter, tokenizer included, and caches what the float model caches.

The GGUF files are written by ``support/gguf_models.py`` in llama.cpp's layout (its tensor names, its
query/key row permutation) with the ``gguf`` package's writer and quantiser. Two independent
references: the float model the file was written from (an ``F32`` GGUF must equal it to 1e-6), and,
for a quantised file, the same model with its weights sent through ``gguf``'s own numpy quantise and
dequantise (transformers' dequantisation must equal that to 1e-5).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
from packaging.version import Version  # noqa: E402

if Version(transformers.__version__) < Version("4.45"):  # the `llm` extra's floor
    pytest.skip("GGUF llama files with a byte-level BPE tokenizer need transformers >= 4.45",
                allow_module_level=True)

import torch  # noqa: E402

from probekit.errors import CheckpointError  # noqa: E402
from probekit.plugin.host import PluginHost  # noqa: E402

from support.battery import assert_clean_failure  # noqa: E402
from support.gguf_models import dequantized_state, write_gguf  # noqa: E402
from support.hf_models import tokenizer  # noqa: E402

TEXTS = ["the cat sat on the mat", "hello world, hello cat", "a dog ran", "the quick brown fox jumps over the lazy dog"]
ATOL_F32 = 1e-6   # an F32 GGUF holds the float weights bit for bit; only the load path differs
ATOL_DEQUANT = 1e-5  # transformers' dequantisation vs gguf's numpy dequantisation of the same blocks


@pytest.fixture(scope="module")
def host():
    return PluginHost.default(entry_points=False)


@pytest.fixture(scope="module")
def ggufs(hf_models, tmp_path_factory):
    """qtype -> GGUF file written from the session's tiny Llama."""
    _, model = hf_models["llama"]
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for qtype in ("F32", "Q4_1"):
        out[qtype] = root / f"tiny-{qtype}.gguf"
        write_gguf(model, tokenizer(bos=True), out[qtype], qtype)
    return out


@pytest.fixture(scope="module")
def float_adapter(hf_models, host):
    path, _ = hf_models["llama"]
    return host.models.get("hf").load(str(path))


def _logits(model, ids, valid):
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(valid).long()).logits
    return out.numpy() * valid[:, :, None]


def test_an_f32_gguf_loads_with_its_tokenizer_and_runs_like_the_float_model(ggufs, float_adapter, host):
    adapter = host.models.get("hf").load(str(ggufs["F32"]))
    ids, valid = float_adapter.tokenize(TEXTS)
    got_ids, got_valid = adapter.tokenize(TEXTS)  # the tokenizer is built from the GGUF's metadata
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_valid, valid)
    assert adapter.spec == f"hf:{ggufs['F32']}" and adapter.n_layers == float_adapter.n_layers
    assert {"heads", "patching", "tokenizer"} <= adapter.capabilities
    want_acts, want_out = float_adapter.run(ids, ["resid", "attn_pattern"], valid)
    acts, out = adapter.run(ids, ["resid", "attn_pattern"], valid)
    for site in ("resid", "attn_pattern"):
        np.testing.assert_allclose(acts[site], want_acts[site], atol=ATOL_F32, rtol=0)
    np.testing.assert_allclose(out, want_out, atol=ATOL_F32, rtol=0)


def test_a_q4_1_gguf_is_dequantised_exactly_as_gguf_dequantises_it(ggufs, float_adapter, host):
    adapter = host.models.get("hf").load(str(ggufs["Q4_1"]))
    ids, valid = float_adapter.tokenize(TEXTS)
    _, out = adapter.run(ids, [], valid)
    reference = type(float_adapter.model)(float_adapter.model.config).eval()
    reference.load_state_dict(dequantized_state(float_adapter.model, "Q4_1"))
    np.testing.assert_allclose(out, _logits(reference, ids, valid), atol=ATOL_DEQUANT, rtol=0)
    # and the quantisation is real: the logits moved away from the float model's
    assert np.abs(out - _logits(float_adapter.model, ids, valid)).max() > 1e-3


def test_the_store_records_what_was_dequantised(ggufs, hf_models, tmp_path, host):
    from probekit.cache.run import CacheRequest, run_cache

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(TEXTS) + "\n")
    path, model = hf_models["llama"]
    float_store = run_cache(host, CacheRequest(model=f"hf:{path}", out=str(tmp_path / "f.zarr"), text=str(prompts),
                                               dtype="float32"))
    gguf_store = run_cache(host, CacheRequest(model=f"hf:{ggufs['Q4_1']}", out=str(tmp_path / "q.zarr"),
                                              text=str(prompts), dtype="float32"))
    source = gguf_store.attrs()["model_source"]
    matrices = sum(1 for n, t in model.state_dict().items() if t.ndim == 2)
    norms = len(model.state_dict()) - matrices
    assert source["format"] == "gguf" and source["file"] == "tiny-Q4_1.gguf" and source["architecture"] == "llama"
    assert source["tensor_types"] == {"F32": norms, "Q4_1": matrices} and source["quantized"] == ["Q4_1"]
    assert source["dequantized_to"] == "float32"
    import hashlib

    assert source["sha256"] == hashlib.sha256(ggufs["Q4_1"].read_bytes()).hexdigest()
    assert "model_source" not in float_store.attrs()
    f, q = float_store.dataset(), gguf_store.dataset()
    np.testing.assert_array_equal(q.tokens.values, f.tokens.values)
    diff = np.abs(q.resid.values - f.resid.values).max()
    assert 0 < diff < 0.25 * np.abs(f.resid.values).max()  # 4-bit weights: near the float model, not equal


def test_convert_gguf_writes_a_safetensors_directory_that_keeps_the_record(ggufs, float_adapter, host, tmp_path):
    from probekit.models.gguf import RECORD_FILE, convert_gguf

    gguf_adapter = host.models.get("hf").load(str(ggufs["Q4_1"]))
    out = convert_gguf(ggufs["Q4_1"], tmp_path / "converted")
    assert any(out.glob("*.safetensors")) and not any(out.glob("*.bin"))
    assert json.loads((out / RECORD_FILE).read_text()) == gguf_adapter.source
    converted = host.models.get("hf").load(str(out))
    assert converted.provenance()["model_source"] == gguf_adapter.source
    ids, valid = float_adapter.tokenize(TEXTS)
    np.testing.assert_array_equal(converted.tokenize(TEXTS)[0], ids)
    np.testing.assert_allclose(converted.run(ids, [], valid)[1], gguf_adapter.run(ids, [], valid)[1],
                               atol=ATOL_F32, rtol=0)


def test_missing_or_fake_gguf_files_are_one_line_errors(tmp_path, host, capsys):
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a gguf\n")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    with pytest.raises(CheckpointError, match="no GGUF file"):
        host.models.get("hf").load(str(tmp_path / "missing.gguf"))
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        host.models.get("hf").load(str(fake))
    for model, match in ((tmp_path / "missing.gguf", "no GGUF file"), (fake, "not a GGUF file")):
        assert_clean_failure(capsys, ["cache", "--model", f"hf:{model}", "--text", prompts,
                                      "--out", tmp_path / "out.zarr"], 1, tmp_path, match)


def test_a_truncated_gguf_is_a_one_line_error(ggufs, tmp_path, host):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(ggufs["F32"].read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="cut.gguf"):
        host.models.get("hf").load(str(cut))
