"""Cache options: tokens/s in progress, --logits keep|skip|topk:K, TransformerLens hook names as --site."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from probekit.store import schema
from probekit.cache.run import CacheRequest, run_cache
from probekit.errors import StoreError, UsageError
from probekit.store.zarr_store import Store


def _req(ckpt, out, **kw):
    kw = {"n_samples": 30, "seed": 3, "block": 12, "batch_size": 10} | kw
    return CacheRequest(model=f"toy:{ckpt}", out=str(out), **kw)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, hf_models):
    """A tiny GPT-2 (vocabulary 300) and a prompt file whose prompts pad to different lengths."""
    prompts = tmp_path_factory.mktemp("gpt2") / "prompts.txt"
    prompts.write_text("\n".join(["the cat sat on the mat", "a dog ran", "hello", "the quick brown fox jumps"] * 3))
    return hf_models["gpt2"][0], prompts


# -- (a) tokens per second ----------------------------------------------------------

def test_written_counts_samples_valid_tokens_and_bytes(tmp_path, host, tiny_checkpoint):
    plans = []
    store = run_cache(host, _req(tiny_checkpoint, tmp_path / "a.zarr", random_init=True), on_start=plans.append)
    written = plans[0]["written"]
    ds = store.dataset()
    rand = store.dataset(schema.RANDOM_INIT_GROUP)
    assert written["samples"] == 2 * 30 and written["tokens"] == 2 * 30 * ds.sizes["pos"]
    assert written["bytes"] == sum(v.nbytes for d in (ds, rand) for v in (d.resid, d.model_out))


def test_tokens_are_valid_positions_of_padded_text(tmp_path, gpt2):
    from probekit.plugin.host import PluginHost

    model, prompts = gpt2
    plans = []
    store = run_cache(PluginHost.default(entry_points=False),
                      CacheRequest(model=f"hf:{model}", out=str(tmp_path / "t.zarr"), text=str(prompts), block=5),
                      on_start=plans.append)
    valid = store.dataset().valid.values
    assert (~valid).any() and plans[0]["written"]["tokens"] == int(valid.sum()) < valid.size


def test_the_progress_line_shows_tokens_and_megabytes_per_second(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    import contextlib

    from probekit.cli import cache as cli_cache
    from probekit.cli import run

    updates = []

    @contextlib.contextmanager
    def recording(description, total, unit="it", *, enabled=True):
        yield lambda completed, info="", description=None, total=None: updates.append((completed, total, info))

    monkeypatch.setattr(cli_cache, "progress", recording)
    assert run(["cache", "--model", f"toy:{tiny_checkpoint}", "--out", str(tmp_path / "p.zarr"), "-n", "20",
                "--block", "8", "--random-init"]) == 0
    assert [(c, t) for c, t, _ in updates] == [(8, 40), (16, 40), (20, 40), (28, 40), (36, 40), (40, 40)]
    assert all(re.fullmatch(r"(model|random-init) · [\d,]+ tok/s · [\d,.]+ MB/s", info) for *_, info in updates)
    assert int(updates[-1][2].split(" · ")[1].split()[0].replace(",", "")) > 0
    assert cli_cache.rates({"t0": 0.0, "written": {"tokens": 0, "bytes": 0}}) == "0 tok/s · 0.0 MB/s"


# -- (b) --logits -------------------------------------------------------------------

def test_logits_skip_stores_no_output_and_still_probes(tmp_path, host, tiny_checkpoint):
    from probekit.probes.run import ProbeSettings, run_probe

    keep = run_cache(host, _req(tiny_checkpoint, tmp_path / "keep.zarr"))
    skip = run_cache(host, _req(tiny_checkpoint, tmp_path / "skip.zarr", logits="skip"))
    ds = skip.dataset()
    assert schema.OUTPUT_VAR not in ds and schema.TOPK_VALUES_VAR not in ds
    assert schema.validate_store(ds) == []
    np.testing.assert_array_equal(ds.resid.values, keep.dataset().resid.values)
    assert skip.attrs()["request"]["logits"] == "skip" and "logits" not in keep.attrs()["request"]
    res, _ = run_probe(host, skip.path, "rls", ProbeSettings(n_folds=3, n_boot=0, baselines=False,
                                                             targets=("current_state",)))
    assert np.isfinite(res.r2.values).all()


def test_logits_topk_keeps_the_largest_outputs_and_their_indices(tmp_path, gpt2):
    from probekit.plugin.host import PluginHost

    model, prompts = gpt2
    host = PluginHost.default(entry_points=False)
    base = dict(model=f"hf:{model}", text=str(prompts), block=5)
    full = run_cache(host, CacheRequest(out=str(tmp_path / "full.zarr"), **base)).dataset()
    top = run_cache(host, CacheRequest(out=str(tmp_path / "top.zarr"), logits="topk:5", **base))
    ds = top.dataset()
    assert schema.OUTPUT_VAR not in ds
    vals, idx = ds[schema.TOPK_VALUES_VAR], ds[schema.TOPK_INDICES_VAR]
    assert vals.dims == idx.dims == (schema.SAMPLE, schema.POS, schema.TOPK) and vals.shape[-1] == 5
    assert vals.dtype == np.float32 and idx.dtype == np.int32
    logits = full.model_out.values
    expected = -np.sort(-logits, axis=-1)[..., :5]
    np.testing.assert_array_equal(vals.values, expected)
    np.testing.assert_array_equal(np.take_along_axis(logits, idx.values.astype(np.int64), -1), vals.values)
    assert top.array(schema.TOPK_VALUES_VAR).chunks == (5, ds.sizes["pos"], 5)
    bytes_full = sum(f.stat().st_size for f in (tmp_path / "full.zarr" / "model_out").rglob("*") if f.is_file())
    bytes_top = sum(f.stat().st_size for p in ("model_out_topk_values", "model_out_topk_indices")
                    for f in (tmp_path / "top.zarr" / p).rglob("*") if f.is_file())
    assert bytes_top * 10 < bytes_full  # vocabulary 300 -> 5 values + 5 indices
    with pytest.raises(StoreError, match=r"logits: store has 'topk:5', asked for 'keep'"):
        run_cache(host, CacheRequest(out=str(top.path), **base))


def test_logits_topk_of_a_continuous_output_and_bad_specs_are_refused(tmp_path, host, tiny_checkpoint, capsys):
    from probekit.cli import run

    store = run_cache(host, _req(tiny_checkpoint, tmp_path / "k.zarr", logits="topk:1"))
    ds = store.dataset()
    np.testing.assert_array_equal(ds[schema.TOPK_VALUES_VAR].values[..., 0],
                                  run_cache(host, _req(tiny_checkpoint, tmp_path / "f.zarr")).dataset()
                                  .model_out.values.max(-1))
    for spec, msg in [("top5", "--logits 'top5': choose from keep, skip, topk:K"),
                      ("topk:0", "--logits 'topk:0': choose from"),
                      ("topk:9", "--logits topk:9: the model has only 3 outputs per position")]:
        code = run(["cache", "--model", f"toy:{tiny_checkpoint}", "--out", str(tmp_path / "x.zarr"), "--logits", spec])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: {msg}") and err.count("\n") == 1, err
    assert not (tmp_path / "x.zarr").exists()


# -- (c) TransformerLens hook names ---------------------------------------------------

@pytest.mark.parametrize("name, site, index", [
    ("hook_embed", "resid", 0),
    ("blocks.0.hook_resid_pre", "resid", 0),
    ("blocks.3.hook_resid_pre", "resid", 3),
    ("blocks.3.hook_resid_post", "resid", 4),
    ("blocks.0.hook_attn_out", "attn_out", 1),
    ("blocks.2.hook_mlp_out", "mlp_out", 3),
    ("blocks.1.attn.hook_pattern", "attn_pattern", 2),
    ("resid", "resid", None),
])
def test_hook_names_map_to_sites(name, site, index):
    from probekit.models.sites import parse_site

    ref = parse_site(name)
    assert (ref.site, ref.index) == (site, index)


def test_hook_names_select_the_right_layer_of_the_toy_model(tmp_path, host, tiny_checkpoint):
    """Each alias's (site, index) holds what the toy model's own hook of that name outputs."""
    import torch

    from probekit.models.adapters import load_adapter
    from probekit.models.sites import parse_site

    names = ["blocks.1.hook_resid_post", "blocks.1.hook_resid_pre", "hook_embed", "blocks.0.hook_attn_out",
             "blocks.1.hook_mlp_out", "blocks.1.attn.hook_pattern"]
    store = run_cache(host, _req(tiny_checkpoint, tmp_path / "tl.zarr", sites=tuple(names), dtype="float32"))
    assert store.attrs()["sites"] == ["resid", "attn_out", "mlp_out", "attn_pattern"]
    ds = store.dataset()
    adapter = load_adapter(host, f"toy:{tiny_checkpoint}")
    modules = dict(adapter.model.named_modules())
    seen = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().numpy()))
             for n in ("blocks.0.hook_resid_post", "hook_embed", "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out",
                       "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post")]
    with torch.no_grad():
        adapter.model(torch.as_tensor(ds.x.values[:4]))
    for h in hooks:
        h.remove()
    seen["blocks.1.hook_resid_pre"] = seen["blocks.0.hook_resid_post"]  # the stream entering block 1
    for name in names:
        ref = parse_site(name)
        stored = ds[ref.site].sel({ref.dim: ref.index}).values[:4]
        np.testing.assert_allclose(stored, seen[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_an_alias_request_resumes_a_canonical_store_and_bad_hooks_are_refused(tmp_path, host, tiny_checkpoint,
                                                                             capsys):
    from probekit.cli import run

    path = tmp_path / "c.zarr"
    run_cache(host, _req(tiny_checkpoint, path, sites=("resid",)))
    assert run_cache(host, _req(tiny_checkpoint, path, sites=("blocks.0.hook_resid_post",))).is_complete()
    with pytest.raises(UsageError, match=r"blocks.2.hook_resid_post: the model has blocks.0 .. blocks.1"):
        run_cache(host, _req(tiny_checkpoint, tmp_path / "d.zarr", sites=("blocks.2.hook_resid_post",)))
    with pytest.raises(UsageError, match=r"hook 'blocks.0.hook_resid_mid' has no probekit site; accepted hooks: "
                                         r"hook_embed, blocks.\{i\}.hook_resid_pre"):
        run_cache(host, _req(tiny_checkpoint, tmp_path / "d.zarr", sites=("blocks.0.hook_resid_mid",)))
    code = run(["cache", "--model", f"toy:{tiny_checkpoint}", "--out", str(tmp_path / "e.zarr"), "-n", "10",
                "--site", "blocks.0.hook_resid_post"])
    err = capsys.readouterr().err
    assert code == 0 and "blocks.0.hook_resid_post is resid layer 1: caching all of resid" in err
    code = run(["probe", str(tmp_path / "e.zarr"), "-H", "rls", "--folds", "3", "--n-boot", "0",
                "--site", "blocks.1.hook_resid_pre", "-t", "current_state", "--json"])
    records = json.loads(capsys.readouterr().out)["records"]
    assert code == 0 and {r["site"] for r in records} == {"resid"}
    assert Store.open(tmp_path / "e.zarr").attrs()["sites"] == ["resid"]
