"""The ``nnsight:`` adapter on the tiny GPT-2 and Llama models (no network): what it caches equals
what ``hf:`` caches, site by site, and patching and head scores run through it.

Skipped when nnsight is not installed (``pip install 'probekit-lab[nnsight]'``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("nnsight")

import torch  # noqa: E402

from probekit.errors import UsageError  # noqa: E402
from probekit.plugin.host import PluginHost  # noqa: E402

ATOL = 1e-5
TEXTS = ["the cat sat on the mat", "a dog ran", "the quick brown fox jumps over the lazy dog", "hello"]
KINDS = ["gpt2", "llama"]


@pytest.fixture(scope="module")
def host():
    return PluginHost.default(entry_points=False)


@pytest.fixture(scope="module")
def loaded(hf_models, host):
    """kind -> (the hf: adapter, the nnsight: adapter) of the same saved directory."""
    return {kind: (host.models.get("hf").load(str(path)), host.models.get("nnsight").load(str(path)))
            for kind, (path, _) in hf_models.items()}


def _modules(hf, kind):
    blocks = list(hf.blocks)
    attn = [b.attn if kind == "gpt2" else b.self_attn for b in blocks]
    return attn, [b.mlp for b in blocks]


def test_nnsight_is_registered_and_declares_what_hf_declares(loaded):
    for kind in KINDS:
        hf, nn = loaded[kind]
        assert nn.spec.startswith("nnsight:") and type(nn).scheme == "nnsight"
        assert nn.capabilities == hf.capabilities
        assert nn.sites == {"resid": 3, "attn_out": 2, "mlp_out": 2, "attn_pattern": 2}
        assert nn.anatomy.family == kind and nn.anatomy.n_heads == hf.anatomy.n_heads
        prov = nn.provenance()
        assert prov["model_hash"] == hf.provenance()["model_hash"] and prov["remote"] is False
        assert prov["nnsight_version"] and prov["model_spec"] == nn.spec


@pytest.mark.parametrize("kind", KINDS)
def test_every_site_equals_hf_and_the_modules_it_names(kind, loaded):
    from probekit.models.hooks import Hook, run_with_hooks

    hf, nn = loaded[kind]
    ids, valid = hf.tokenize(TEXTS)
    assert not valid.all()  # padding is in play
    as_t, _ = nn.run(ids, ["resid"], valid, as_tensors=True)
    assert isinstance(as_t["resid"], torch.Tensor) and as_t["resid"].dtype == torch.float32
    ref, ref_logits = hf.run(ids, ["resid", "attn_pattern"], valid)
    acts, logits = nn.run(ids, list(nn.sites), valid)
    for site in ("resid", "attn_pattern"):
        np.testing.assert_allclose(acts[site], ref[site], atol=ATOL, rtol=0, err_msg=site)
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=0)

    captured = {}  # attn_out / mlp_out: the attention and MLP modules' outputs, read with torch hooks
    attn, mlp = _modules(hf, kind)
    hooks = [Hook.capture(m, captured, ("attn_out", b)) for b, m in enumerate(attn)]
    hooks += [Hook.capture(m, captured, ("mlp_out", b)) for b, m in enumerate(mlp)]
    t = torch.as_tensor
    run_with_hooks(lambda: hf.model(input_ids=t(ids), attention_mask=t(valid).long(), use_cache=False), hooks)
    for site in ("attn_out", "mlp_out"):
        want = torch.stack([captured[site, b] for b in range(2)], 1).numpy() * valid[:, None, :, None]
        np.testing.assert_allclose(acts[site], want, atol=ATOL, rtol=0, err_msg=site)
    # a pre-norm block adds its attention and MLP outputs to the residual stream
    np.testing.assert_allclose(np.diff(acts["resid"], axis=1), acts["attn_out"] + acts["mlp_out"], atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_nnsight_stores_equal_hf_stores(kind, hf_models, host, tmp_path):
    from probekit.cache.run import CacheRequest, run_cache

    path, _ = hf_models[kind]
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(TEXTS) + "\n")
    sites = ("resid", "attn_pattern")
    ref = run_cache(host, CacheRequest(model=f"hf:{path}", out=str(tmp_path / "hf.zarr"), text=str(prompts),
                                       sites=sites)).dataset()
    got = run_cache(host, CacheRequest(model=f"nnsight:{path}", out=str(tmp_path / "nn.zarr"), text=str(prompts),
                                       sites=sites + ("attn_out", "mlp_out"))).dataset()
    assert got.attrs["model_spec"] == f"nnsight:{path}"
    np.testing.assert_array_equal(got.tokens.values, ref.tokens.values)
    for site in sites:
        np.testing.assert_allclose(got[site].values, ref[site].values, atol=ATOL, rtol=0, err_msg=site)
    assert got.attn_out.dims == got.mlp_out.dims and got.attn_out.sizes["block"] == 2


def test_remote_local_serialises_the_request_and_gets_the_same_values(hf_models, host, loaded):
    """``?remote=local`` sends the traced code through nnsight's serialisation, as a remote run does,
    and runs it here (NDIF itself, ``?remote=true``, needs the network: not tested)."""
    path, _ = hf_models["llama"]
    sim = host.models.get("nnsight").load(f"{path}?remote=local")
    _, nn = loaded["llama"]
    ids, valid = nn.tokenize(TEXTS[:2])
    a, la = sim.run(ids, list(sim.sites), valid)
    b, lb = nn.run(ids, list(nn.sites), valid)
    assert sim.remote == "local" and sim.provenance()["remote"] == "local"
    for site in b:
        np.testing.assert_allclose(a[site], b[site], atol=ATOL, rtol=0, err_msg=site)
    np.testing.assert_allclose(la, lb, atol=ATOL, rtol=0)


def test_a_remote_model_caches_but_refuses_patching_and_head_ablation_in_one_line(hf_models, host):
    from probekit.lenses.interventions.patching import hooked_model
    from probekit.models.capabilities import require

    path, _ = hf_models["gpt2"]
    remote = host.models.get("nnsight").load(f"{path}?remote=true")  # the meta model: no weights read
    assert remote.capabilities == {"tokens", "tokenizer", "padding"}
    assert remote.sites["resid"] == 3 and remote.provenance()["model_hash_kind"] == "config"
    with pytest.raises(UsageError, match="does not declare the 'patching' capability") as err:
        hooked_model(remote)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="'heads' capability"):
        require(remote, "heads", "head ablation")
    with pytest.raises(UsageError, match="--random-init"):
        host.models.get("nnsight").load(f"{path}?remote=true", random_init=True)


def test_options_are_checked(hf_models, host):
    path, _ = hf_models["gpt2"]
    cls = host.models.get("nnsight")
    with pytest.raises(UsageError, match="only option is remote"):
        cls.load(f"{path}?fold_ln=false")
    with pytest.raises(UsageError, match="give true, false or local"):
        cls.load(f"{path}?remote=maybe")


@pytest.mark.parametrize("kind", KINDS)
def test_patch_with_head_ablation_runs_through_nnsight_as_through_hf(kind, hf_models, tmp_path, capsys):
    from probekit.cli import run

    path, _ = hf_models[kind]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in [
        {"a": "the cat sat on the", "b": "the dog sat on the", "answer": " mat"},
        {"a": "hello world, hello", "b": "a dog ran, hello", "answer": " cat"}]))
    out = {}
    for scheme in ("hf", "nnsight"):
        assert run(["patch", "--model", f"{scheme}:{path}", "--pairs", str(pairs), "--ablate-heads", "1.0,1.2",
                    "--out", str(tmp_path / scheme), "--json"]) == 0
        out[scheme] = json.loads(capsys.readouterr().out)
    for a, b in zip(out["hf"]["conditions"], out["nnsight"]["conditions"], strict=True):
        assert a["condition"] == b["condition"]
        np.testing.assert_allclose(b["recovered"], a["recovered"], atol=1e-4)
        assert b["logp_a"] == pytest.approx(a["logp_a"], abs=ATOL)


def test_heads_scores_and_ablation_run_through_nnsight_as_through_hf(hf_models, tmp_path, capsys):
    from probekit.cli import run

    path, _ = hf_models["gpt2"]
    out = {}
    for scheme in ("hf", "nnsight"):
        assert run(["heads", "--model", f"{scheme}:{path}", "-n", "4", "--segment", "6", "--icl-samples", "4",
                    "--late", "10", "--early", "2", "--ablate", "1.0", "--plot", str(tmp_path / f"{scheme}.png"),
                    "--json"]) == 0
        out[scheme] = json.loads(capsys.readouterr().out)
    a, b = ({r["head"]: r for r in out[s]["heads"]} for s in ("hf", "nnsight"))
    assert a.keys() == b.keys()
    for head in a:
        for key, value in a[head].items():
            if isinstance(value, float):
                assert b[head][key] == pytest.approx(value, abs=1e-5), (head, key)


def test_nnsight_adapter_conforms(hf_models, host, tmp_path):
    from probekit import testing

    path, _ = hf_models["gpt2"]
    adapter = host.models.get("nnsight").load(str(path))
    ids, valid = adapter.tokenize(TEXTS[:2])
    testing.check_model_adapter(host.models.get("nnsight"), str(path), inputs=ids, valid=valid,
                                bad_rest=str(tmp_path / "missing"))
