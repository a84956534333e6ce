"""The ``tlens:`` adapter on TransformerLens 4 (a ``TransformerBridge``), on the tiny local GPT-2 and
Llama directories (no network): every site and the logits equal TransformerLens's own
``run_with_cache``, with the default weight processing and with none.

Skipped unless TransformerLens >= 4 is installed (CI's ``tlens`` extra); the HookedTransformer path
(2.x-3.x) is ``test_tlens.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

from probekit.models.tlens_bridge import tl_major  # noqa: E402

if (tl_major() or 0) < 4:
    pytest.skip("the TransformerBridge path needs TransformerLens >= 4", allow_module_level=True)

import torch  # noqa: E402

from probekit.errors import CheckpointError  # noqa: E402
from probekit.plugin.host import PluginHost  # noqa: E402

ATOL = 1e-5
KINDS = ["gpt2", "llama"]
SITES = ["resid", "attn_out", "mlp_out", "attn_pattern"]
TEXTS = ["the cat sat on the mat", "a dog ran", "hello world, hello cat"]


@pytest.fixture(scope="module")
def host():
    return PluginHost.default(entry_points=False)


@pytest.fixture(scope="module")
def bridges(hf_models, host):
    """(kind, processing) -> the tlens: adapter of that saved HF directory."""
    cls = host.models.get("tlens")
    return {(kind, q): cls.load(f"{path}{q}") for kind, (path, _) in hf_models.items()
            for q in ("", "?processing=none")}


@pytest.mark.parametrize("processing", ["", "?processing=none"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_site_and_the_logits_equal_run_with_cache(kind, processing, bridges):
    adapter = bridges[kind, processing]
    assert adapter.bridge and type(adapter.model).__name__ == "TransformerBridge"
    assert adapter.sites == {"resid": 3, "attn_out": 2, "attn_pattern": 2, "mlp_out": 2}
    ids = np.random.default_rng(0).integers(4, 300, (3, 9))
    acts, logits = adapter.run(ids, SITES)
    names = [n for s in SITES for n in adapter.hook_names[s]]
    with torch.no_grad():
        ref_logits, cache = adapter.model.run_with_cache(torch.as_tensor(ids), names_filter=names)
    for site in SITES:
        ref = torch.stack([cache[n] for n in adapter.hook_names[site]], 1).numpy()
        np.testing.assert_allclose(acts[site], ref, atol=ATOL, rtol=0, err_msg=site)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=ATOL, rtol=0)
    assert adapter.hook_names["resid"][1] == "blocks.0.hook_resid_post"  # TL hook names keep mapping


@pytest.mark.parametrize("kind", KINDS)
def test_raw_bridge_equals_hf_and_processing_is_recorded(kind, bridges, hf_models, host):
    hf = host.models.get("hf").load(str(hf_models[kind][0]))
    raw, processed = bridges[kind, "?processing=none"], bridges[kind, ""]
    ids, valid = hf.tokenize(TEXTS)
    ref, ref_logits = hf.run(ids, ["resid", "attn_pattern"], valid)
    acts, logits = raw.run(ids, ["resid", "attn_pattern"], valid)
    for site in ref:
        np.testing.assert_allclose(acts[site], ref[site], atol=ATOL, rtol=0, err_msg=site)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    _, plogits = processed.run(ids, ["resid"], valid)  # processing keeps the function (log-probs)
    lp = torch.log_softmax(torch.as_tensor(plogits), -1) - torch.log_softmax(torch.as_tensor(logits), -1)
    assert float(lp[torch.as_tensor(valid)].abs().max()) < 1e-4
    prov, prov_raw = processed.provenance(), raw.provenance()
    assert prov["weight_processing"]["fold_ln"] and not any(prov_raw["weight_processing"].values())
    assert int(prov["transformer_lens_version"].split(".")[0]) >= 4 and prov["model_source"] == "directory"
    json.dumps(prov)  # a store attribute


def test_random_init_is_seeded(hf_models, host):
    path = hf_models["gpt2"][0]
    cls = host.models.get("tlens")
    a, b = (cls.load(f"{path}?processing=none", random_init=True) for _ in range(2))
    c = cls.load(f"{path}?processing=none", random_init=True, init_seed=7)
    assert a.provenance()["model_hash"] == b.provenance()["model_hash"] != c.provenance()["model_hash"]


def test_a_save_tlens_directory_needs_the_legacy_path(tmp_path, host):
    (tmp_path / "config.json").write_text(json.dumps({"n_layers": 2, "d_model": 16, "n_ctx": 8, "d_head": 4}))
    with pytest.raises(CheckpointError, match="TransformerLens 4 removed") as err:
        host.models.get("tlens").load(str(tmp_path))
    assert "\n" not in str(err.value) and "transformer-lens<4" in str(err.value)


def test_cache_through_the_bridge_stores_every_site(hf_models, host, tmp_path):
    from probekit.cache.run import CacheRequest, run_cache

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(TEXTS) + "\n")
    ds = run_cache(host, CacheRequest(model=f"tlens:{hf_models['llama'][0]}", out=str(tmp_path / "t.zarr"),
                                      text=str(prompts), sites=tuple(SITES))).dataset()
    assert set(SITES) <= set(ds.data_vars) and ds.attn_pattern.sizes["block"] == 2
    assert np.all(ds.resid.values.transpose(0, 2, 1, 3)[~ds.valid.values] == 0)
