"""Stores and caching: layout, provenance, resume, refusal of mismatches, locks, overflow, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from probekit.store import schema
from probekit.cache.run import CacheRequest, run_cache
from probekit.errors import DataError, StoreError, StoreLockedError
from probekit.store.zarr_store import Store


def test_plain_xarray_sees_named_dims_and_provenance(tiny_store):
    code = (f"import xarray as xr; ds = xr.open_zarr({str(tiny_store)!r}); "
            "import json; print(json.dumps({'dims': dict(ds.sizes), 'attrs': ds.attrs, 'resid': list(ds.resid.dims)},"
            " default=str))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["resid"] == ["sample", "layer", "pos", "feature"]
    assert out["dims"]["sample"] == 120 and out["dims"]["layer"] == 3 and out["dims"]["pos"] == 10
    for key in schema.REQUIRED_ATTRS:
        assert key in out["attrs"], key
    attrs = out["attrs"]
    assert attrs["task"] == "lds" and attrs["task_params"]["dim"] == 3 and attrs["seed"] == 5
    assert attrs["model_spec"].startswith("toy:") and len(attrs["model_hash"]) == 64
    assert attrs["dtype"] == "float16" and attrs["sites"] == ["resid"]


def test_store_validates_and_chunks_are_one_layer_of_one_block(tiny_store):
    store = Store.open(tiny_store)
    ds = store.dataset()
    assert schema.validate_store(ds) == []
    arr = store.array("resid")
    assert arr.chunks == (store.attrs()[schema.BLOCK_ATTR], 1, 10, 16)
    assert store.is_complete() and store.is_complete(schema.RANDOM_INIT_GROUP)
    rand = store.dataset(schema.RANDOM_INIT_GROUP)
    assert rand.attrs["random_init"] is True and rand.attrs["model_hash"] != ds.attrs["model_hash"]
    assert not np.allclose(rand.resid.values[:, 1:], ds.resid.values[:, 1:])


def test_cached_activations_equal_a_bare_forward_pass(tiny_store, tiny_checkpoint, host):
    from probekit.models.adapters import ModelAdapter, load_adapter

    ds = Store.open(tiny_store).dataset()
    adapter = load_adapter(host, f"toy:{tiny_checkpoint}")
    assert isinstance(adapter, ModelAdapter)
    acts, out = adapter.run(ds.x.values[:7], ["resid"])
    np.testing.assert_allclose(ds.resid.values[:7], acts["resid"].astype(np.float16))
    np.testing.assert_allclose(ds.model_out.values[:7], out, rtol=1e-6)


def _req(ckpt, out, **kw):
    return CacheRequest(model=f"toy:{ckpt}", out=str(out), n_samples=90, seed=2, batch_size=30, block=40, **kw)


def test_interrupted_cache_resumes_to_the_same_result(tmp_path, host, tiny_checkpoint, monkeypatch):
    from probekit.cache import run as cache_mod
    full = run_cache(host, _req(tiny_checkpoint, tmp_path / "full.zarr"))
    block = full.attrs()[schema.BLOCK_ATTR]
    assert block < 90  # several blocks, so the interruption falls between them

    calls = {"n": 0}
    real_mark = Store.mark_block_done

    def crash_after_first(self, index, group=None):
        real_mark(self, index, group)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Store, "mark_block_done", crash_after_first)
    part_path = tmp_path / "part.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_cache(host, _req(tiny_checkpoint, part_path))
    assert not Store(part_path).is_complete()
    assert not Store(part_path).lock_path.exists()  # the lock is released on interruption
    kept = Store(part_path).blocks_done()  # block 0, and any block written meanwhile (--inflight)
    monkeypatch.setattr(Store, "mark_block_done", real_mark)

    redone = []
    monkeypatch.setattr(cache_mod.Store, "mark_block_done",
                        lambda self, index, group=None: (redone.append(index), real_mark(self, index, group)))
    resumed = run_cache(host, _req(tiny_checkpoint, part_path))
    n_blocks = -(-90 // block)
    assert 0 in kept and sorted(redone) == sorted(set(range(n_blocks)) - kept)  # finished ones not recomputed
    a, b = full.dataset(), resumed.dataset()
    np.testing.assert_array_equal(a.resid.values, b.resid.values)
    np.testing.assert_array_equal(a.model_out.values, b.model_out.values)


def test_a_different_request_is_refused_saying_what_differs(tmp_path, host, tiny_checkpoint):
    path = tmp_path / "s.zarr"
    run_cache(host, _req(tiny_checkpoint, path))
    before = Store.open(path).dataset().resid.values.copy()
    with pytest.raises(StoreError, match=r"seed: store has 2, asked for 3"):
        run_cache(host, CacheRequest(model=f"toy:{tiny_checkpoint}", out=str(path), n_samples=90, seed=3))
    np.testing.assert_array_equal(Store.open(path).dataset().resid.values, before)  # untouched
    run_cache(host, CacheRequest(model=f"toy:{tiny_checkpoint}", out=str(path), n_samples=90, seed=3), overwrite=True)
    assert Store.open(path).attrs()["seed"] == 3


def test_random_init_can_be_added_to_a_finished_store(tmp_path, host, tiny_checkpoint):
    path = tmp_path / "r.zarr"
    run_cache(host, _req(tiny_checkpoint, path))
    before = Store.open(path).dataset().resid.values.copy()
    assert not Store(path).has_group(schema.RANDOM_INIT_GROUP)
    store = run_cache(host, _req(tiny_checkpoint, path, random_init=True))
    assert store.is_complete(schema.RANDOM_INIT_GROUP)
    np.testing.assert_array_equal(store.dataset().resid.values, before)
    assert xr.open_zarr(path, group=schema.RANDOM_INIT_GROUP).resid.shape == before.shape


def test_a_second_writer_is_refused(tmp_path, host, tiny_checkpoint):
    path = tmp_path / "locked.zarr"
    with Store(path).lock():
        with pytest.raises(StoreLockedError, match="being written by another process"):
            run_cache(host, _req(tiny_checkpoint, path))
    run_cache(host, _req(tiny_checkpoint, path))  # released: now it works


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, host, tiny_checkpoint):
    import socket

    path = tmp_path / "stale.zarr"
    Store(path).lock_path.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    run_cache(host, _req(tiny_checkpoint, path))
    assert Store(path).is_complete()


def test_float16_overflow_is_reported_per_site(tmp_path, host, tiny_checkpoint):
    import shutil

    from safetensors.torch import load_file, save_file

    big = tmp_path / "big"
    shutil.copytree(tiny_checkpoint, big)
    state = load_file(str(big / "model.safetensors"))
    state["embed.weight"] = state["embed.weight"] * 1e6
    save_file(state, str(big / "model.safetensors"))
    with pytest.raises(DataError, match=r"site 'resid' overflows float16 at layer 0.*--dtype float32"):
        run_cache(host, _req(big, tmp_path / "o.zarr"))
    store = run_cache(host, _req(big, tmp_path / "o32.zarr", dtype="float32"), overwrite=True)
    assert np.isfinite(store.dataset().resid.values).all()


def test_bad_stores_give_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        Store.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a zarr v3 store"):
        Store.open(tmp_path / "plain")
    xr.Dataset({"a": ("x", [1, 2])}).to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="not a probekit store"):
        Store.open(tmp_path / "other.zarr")
    with pytest.raises(StoreError, match="refusing to delete"):
        Store(tmp_path / "plain").remove()


def test_checkpoints_are_safetensors_and_training_is_deterministic(tmp_path, host):
    from probekit.models.toy import checkpoint
    from probekit.models.toy.model import ToyTransformer
    from probekit.models.toy.train import TrainSettings, train
    from probekit.models.toy.presets import build_config

    task = host.tasks.get("lds")(dim=2, length=6)
    cfg = build_config("linear", task.io, d_model=8, n_heads=2)
    hashes = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        path = train(task, cfg, TrainSettings(steps=5, batch_size=8, seed=seed), tmp_path / name)
        assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
        model = ToyTransformer(checkpoint.read(path).config)
        checkpoint.load_weights(model, path)
        hashes.append(checkpoint.weights_hash(model))
    assert hashes[0] == hashes[1] != hashes[2]
    (tmp_path / "a" / "model.safetensors").write_bytes(b"not safetensors")
    from probekit.errors import CheckpointError

    with pytest.raises(CheckpointError):
        checkpoint.load_weights(ToyTransformer(cfg), tmp_path / "a")


def test_every_toy_site_caches_with_its_own_layout_and_probes_line_up(tmp_path, host, tiny_checkpoint):
    from probekit.models.adapters import load_adapter
    from probekit.probes.run import ProbeSettings, run_probe

    sites = ("resid", "attn_out", "mlp_out", "attn_pattern")
    store = run_cache(host, CacheRequest(model=f"toy:{tiny_checkpoint}", out=str(tmp_path / "all.zarr"), n_samples=40,
                                         seed=2, sites=sites))
    ds = store.dataset()
    assert ds.resid.dims == schema.ACTIVATION_DIMS and ds.attn_out.dims == schema.BLOCK_DIMS
    assert ds.attn_pattern.dims == schema.PATTERN_DIMS and ds.attn_pattern.shape == (40, 2, 2, 10, 10)
    assert list(ds.block.values) == [1, 2] and list(ds.layer.values) == [0, 1, 2]
    assert schema.validate_store(ds) == []
    # the residual stream adds up: resid after block l = resid before it + attn_out + mlp_out
    r = ds.resid.values.astype(np.float32)
    parts = ds.attn_out.values.astype(np.float32) + ds.mlp_out.values.astype(np.float32)
    np.testing.assert_allclose(r[:, 1:], r[:, :-1] + parts, atol=2e-3)
    pattern = ds.attn_pattern.values.astype(np.float32)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=2e-3)  # softmax rows
    assert np.abs(np.triu(pattern, 1)).max() == 0  # causal
    acts, _ = load_adapter(host, f"toy:{tiny_checkpoint}").run(ds.x.values[:3], ["attn_pattern"])
    np.testing.assert_allclose(pattern[:3], acts["attn_pattern"], atol=1e-3)
    res, _ = run_probe(host, store.path, "rls", ProbeSettings(n_folds=3, n_boot=0, baselines=False,
                                                              targets=("current_state",)))
    assert list(res.site.values) == ["resid", "attn_out", "mlp_out"]  # patterns are not probed
    assert np.isnan(res.r2.sel(site="attn_out", layer=0)).all() and np.isfinite(res.r2.sel(site="attn_out", layer=1)).all()


def test_checkpoints_through_training_are_kept_and_cacheable(tmp_path, host):
    from probekit.models.toy import checkpoint
    from probekit.models.toy.model import ToyTransformer
    from probekit.models.toy.train import TrainSettings, train
    from probekit.models.toy.presets import build_config

    task = host.tasks.get("lds")(dim=2, length=6)
    cfg = build_config("linear", task.io, d_model=8, n_heads=2)
    final = train(task, cfg, TrainSettings(steps=10, batch_size=8, seed=3, checkpoint_every=4), tmp_path / "run")
    kept = sorted(p.name for p in (final / "checkpoints").iterdir())
    assert kept == ["step-0000000", "step-0000004", "step-0000008"]
    hashes = []
    for name in kept:
        model = ToyTransformer(checkpoint.read(final / "checkpoints" / name).config)
        checkpoint.load_weights(model, final / "checkpoints" / name)
        hashes.append(checkpoint.weights_hash(model))
    assert len(set(hashes)) == 3  # the weights moved
    init = ToyTransformer(cfg)
    import torch

    torch.manual_seed(3)
    init = ToyTransformer(cfg)
    assert checkpoint.weights_hash(init) == hashes[0]  # step 0 is the seeded initialisation
    assert checkpoint.read(final / "checkpoints" / "step-0000008").training["step"] == 8
    store = run_cache(host, CacheRequest(model=f"toy:{final / 'checkpoints' / 'step-0000004'}",
                                         out=str(tmp_path / "c4.zarr"), n_samples=10))
    assert store.attrs()["model_hash"] == hashes[1]


@pytest.mark.parametrize("steps", [1, 2, 10, 1000])
def test_the_learning_rate_schedule_is_defined_for_any_length(steps):
    from probekit.models.toy.train import lr_factor

    f = [lr_factor(steps, 0.1)(s) for s in range(steps)]
    assert max(f) == pytest.approx(1.0) and min(f) > 0 and all(np.isfinite(f))
    if steps >= 100:  # (shorter runs warm up in one step)
        assert f[0] < f[round(0.1 * steps) - 1] and f[-1] < 0.1  # warm-up, then decay
