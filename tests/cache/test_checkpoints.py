"""Caching through the checkpoints of a training run (a ``checkpoint`` dim) and probing such a store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from probekit.store import schema
from probekit.cache.run import CacheRequest, run_cache
from probekit.errors import StoreError, UsageError
from probekit.probes.run import ProbeSettings, run_probe
from probekit.store.zarr_store import Store

N, SEED, BLOCK = 40, 7, 16  # 3 sample blocks per checkpoint
SITES = ("resid", "attn_out")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, host):
    """A tiny toy model trained 24 steps, keeping checkpoints at steps 0, 8, 16, 24."""
    from probekit.models.toy.train import TrainSettings, train
    from probekit.models.toy.presets import build_config

    task = host.tasks.get("lds")(dim=2, length=6)
    cfg = build_config("softmax", task.io, n_layers=2, d_model=8, n_heads=2)
    out = tmp_path_factory.mktemp("ckpts") / "run"
    train(task, cfg, TrainSettings(steps=24, batch_size=16, seed=4, checkpoint_every=8), out)
    return out


def _req(out, checkpoints, **kw):
    kw = {"n_samples": N, "seed": SEED, "block": BLOCK, "batch_size": 10, "sites": SITES} | kw
    return CacheRequest(model=None, out=str(out), checkpoints=str(checkpoints), **kw)


@pytest.fixture(scope="module")
def ckpt_store(tmp_path_factory, host, run_dir):
    return run_cache(host, _req(tmp_path_factory.mktemp("cs") / "c.zarr", run_dir / "checkpoints"))


@pytest.fixture(scope="module")
def single_stores(tmp_path_factory, host, run_dir):
    """A plain cache of each checkpoint, with the same inputs and settings."""
    root = tmp_path_factory.mktemp("single")
    paths = sorted((run_dir / "checkpoints").iterdir())
    return [run_cache(host, CacheRequest(model=f"toy:{p}", out=str(root / f"{p.name}.zarr"), n_samples=N, seed=SEED,
                                         block=BLOCK, batch_size=10, sites=SITES)) for p in paths]


def test_store_layout_coordinates_and_chunks(ckpt_store, single_stores, run_dir):
    ds = ckpt_store.dataset()
    assert schema.validate_store(ds) == []
    assert list(ds.checkpoint.values) == [0, 8, 16, 24] and ds.checkpoint.dtype.kind == "i"
    assert ds.resid.dims == (schema.CHECKPOINT, *schema.ACTIVATION_DIMS)
    assert ds.attn_out.dims == (schema.CHECKPOINT, *schema.BLOCK_DIMS)
    assert ds.model_out.dims == (schema.CHECKPOINT, schema.SAMPLE, schema.POS, schema.OUTPUT_FEATURE)
    assert "checkpoint" not in ds.x.dims  # the task inputs are shared by every checkpoint
    assert ckpt_store.array("resid").chunks == (1, BLOCK, 1, 6, 8)  # one layer of one block of one checkpoint
    assert ckpt_store.array("model_out").chunks == (1, BLOCK, 6, 2)
    singles = [s.attrs() for s in single_stores]
    assert list(ds.checkpoint_hash.values) == [a["model_hash"] for a in singles]
    assert [str(p) for p in ds.checkpoint_path.values] == [str(run_dir / "checkpoints" / f"step-{s:07d}")
                                                           for s in (0, 8, 16, 24)]
    attrs = ckpt_store.attrs()
    assert attrs["model_hash"] == singles[-1]["model_hash"]  # root provenance: the last checkpoint
    assert attrs["n_checkpoints"] == 4 and attrs["checkpoint_source"] == str(run_dir / "checkpoints")
    assert sorted(ckpt_store.blocks_done()) == [(c, b) for c in range(4) for b in range(3)]


def test_each_checkpoint_equals_a_plain_cache_of_it_bit_for_bit(ckpt_store, single_stores):
    ds = ckpt_store.dataset()
    for i, single in enumerate(single_stores):
        one = single.dataset()
        for var in (*SITES, schema.OUTPUT_VAR):
            a, b = ds[var].isel(checkpoint=i).values, one[var].values
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (i, var)
        np.testing.assert_array_equal(ds.x.values, one.x.values)
    early, late = ds.resid.isel(checkpoint=0).values, ds.resid.isel(checkpoint=-1).values
    assert not np.array_equal(early[:, 1:], late[:, 1:])  # training moved the activations


def test_a_run_interrupted_mid_checkpoint_resumes_to_the_same_store(tmp_path, host, run_dir, ckpt_store):
    path = tmp_path / "part.zarr"
    seen = []

    def crash(phase, done, total):
        seen.append((phase, done, total))
        if len(seen) == 5:  # the 2nd block of the 2nd checkpoint is written and recorded
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # one block in flight: exactly the reported blocks are done
        run_cache(host, _req(path, run_dir / "checkpoints", inflight=1), on_progress=crash)
    assert seen[3:] == [("step 8", N + BLOCK, 4 * N), ("step 8", N + 2 * BLOCK, 4 * N)]
    store = Store(path)
    assert not store.is_complete() and not store.lock_path.exists()
    assert store.blocks_done() == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)}

    plans, calls = [], []
    resumed = run_cache(host, _req(path, run_dir / "checkpoints"), on_start=plans.append,
                        on_progress=lambda *a: calls.append(a))
    assert plans[0]["resuming"] and calls[0] == ("step 8", 2 * N, 4 * N)  # starts at the missing block
    assert plans[0]["written"]["samples"] == (N - 2 * BLOCK) + 2 * N  # only what was missing was computed
    assert plans[0]["written"]["tokens"] == plans[0]["written"]["samples"] * 6
    assert resumed.is_complete()
    a, b = ckpt_store.dataset(), resumed.dataset()
    for var in (*SITES, schema.OUTPUT_VAR):
        assert a[var].values.tobytes() == b[var].values.tobytes(), var
    assert list(a.checkpoint_hash.values) == list(b.checkpoint_hash.values)


def test_a_different_request_is_refused_saying_what_differs(tmp_path, host, run_dir, ckpt_store):
    path = tmp_path / "s.zarr"
    shutil.copytree(ckpt_store.path, path)
    before = Store.open(path).dataset().resid.values.copy()
    subset = str(run_dir / "checkpoints" / "step-00000[01]*")  # steps 0, 8, 16: one fewer checkpoint
    with pytest.raises(StoreError, match=r"checkpoints: store has 4 items \[.*step-0000000.*step-0000024'\], "
                                         r"asked for \[.*step-0000016'\]"):
        run_cache(host, _req(path, subset))
    with pytest.raises(StoreError, match=r"seed: store has 7, asked for 8"):
        run_cache(host, _req(path, run_dir / "checkpoints", seed=8))
    last = run_dir / "checkpoints" / "step-0000024"
    with pytest.raises(StoreError, match=r"checkpoints: store has 4 items .*, asked for None"):
        run_cache(host, CacheRequest(model=f"toy:{last}", out=str(path), n_samples=N, seed=SEED, sites=SITES))
    np.testing.assert_array_equal(Store.open(path).dataset().resid.values, before)  # untouched
    store = run_cache(host, _req(path, subset), overwrite=True)
    assert list(store.dataset().checkpoint.values) == [0, 8, 16]


def test_a_checkpoint_changed_since_the_store_was_started_is_refused(tmp_path, host, run_dir):
    run = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", run)
    path = tmp_path / "c.zarr"

    def stop(phase, done, total):
        if done == N:  # the first checkpoint is complete
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cache(host, _req(path, run), on_progress=stop)
    shutil.copy(run / "step-0000024" / "model.safetensors", run / "step-0000008" / "model.safetensors")
    with pytest.raises(StoreError, match=r"checkpoint .*step-0000008 has changed since .* was started"):
        run_cache(host, _req(path, run))


def test_checkpoints_are_found_by_directory_or_glob_and_ordered_by_step(tmp_path, run_dir):
    from probekit.cache.checkpoints import resolve

    ckpts = run_dir / "checkpoints"
    assert [r.step for r in resolve(str(ckpts))] == [0, 8, 16, 24]
    assert [r.step for r in resolve(str(run_dir))] == [0, 8, 16, 24]  # a run's output directory
    assert [r.step for r in resolve(str(ckpts / "step-000001*"))] == [16]
    # the step comes from config.json, not from the name (which only breaks ties and is a fallback)
    odd = tmp_path / "odd"
    for name, src in (("b-late", "step-0000024"), ("a-early", "step-0000008"), ("z-init", "step-0000000")):
        shutil.copytree(ckpts / src, odd / name)
    (odd / "notes").mkdir()  # not a checkpoint: skipped
    assert [(r.step, r.path.split("/")[-1]) for r in resolve(str(odd))] == [(0, "z-init"), (8, "a-early"),
                                                                           (24, "b-late")]
    cfg = json.loads((odd / "a-early" / "config.json").read_text())
    del cfg["training"]["step"]
    (odd / "a-early" / "config.json").write_text(json.dumps(cfg))
    shutil.move(odd / "a-early", odd / "ckpt-12")
    assert [r.step for r in resolve(str(odd))] == [0, 12, 24]
    with pytest.raises(UsageError, match="holds no toy checkpoints"):
        resolve(str(odd / "notes"))
    with pytest.raises(UsageError, match="matches no toy checkpoint"):
        resolve(str(odd / "nothing-*"))
    shutil.copytree(ckpts / "step-0000024", odd / "again")
    with pytest.raises(UsageError, match=r"again and .*b-late are both at training step 24"):
        resolve(str(odd))


def test_checkpoints_of_different_architectures_are_refused_in_one_line(tmp_path, host, run_dir, capsys):
    from probekit.cli import run

    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir / "checkpoints", mixed)
    cfg = json.loads((mixed / "step-0000016" / "config.json").read_text())
    cfg["model"]["d_model"] = 16
    cfg["task_params"]["dim"] = 3
    (mixed / "step-0000016" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match=r"checkpoints must share architecture and task: .*step-0000016 differs from "
                                         r".*step-0000000 in model.d_model \(8 vs 16\), task_params.dim \(2 vs 3\)"):
        run_cache(host, _req(tmp_path / "m.zarr", mixed))
    assert not (tmp_path / "m.zarr").exists()
    code = run(["cache", "--checkpoints", str(mixed), "--out", str(tmp_path / "m.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: checkpoints must share architecture")
    with pytest.raises(UsageError, match="does not combine with --checkpoints"):
        run_cache(host, _req(tmp_path / "r.zarr", run_dir / "checkpoints", random_init=True))


def test_probe_results_have_a_checkpoint_dim_equal_to_probing_each_checkpoint_alone(ckpt_store, single_stores,
                                                                                   host):
    settings = ProbeSettings(n_folds=3, n_boot=50, n_perm=3, per_pos=True, targets=("current_state", "rls_pred"))
    res, key = run_probe(host, ckpt_store.path, "rls", settings)
    assert res.r2.dims == ("checkpoint", "condition", "site", "layer", "target")
    assert res.overlaps_baseline.dims == ("checkpoint", "site", "layer", "target")
    assert list(res.checkpoint.values) == [0, 8, 16, 24]
    for i, single in enumerate(single_stores):
        alone, _ = run_probe(host, single.path, "rls", settings)
        for var in alone.data_vars:
            np.testing.assert_allclose(res[var].isel(checkpoint=i).values.astype(float),
                                       alone[var].values.astype(float), rtol=0, atol=1e-10, err_msg=f"{i} {var}")
    stored = Store.open(ckpt_store.path)
    import xarray as xr

    back = xr.open_zarr(stored.path, group=key, consolidated=False)
    np.testing.assert_array_equal(back.r2.values, res.r2.values)
    assert list(back.checkpoint.values) == [0, 8, 16, 24]


def test_cli_probe_prints_a_checkpoint_table_and_plots_r2_against_step(tmp_path, capsys, ckpt_store):
    from probekit.cli import run

    path = tmp_path / "c.zarr"
    shutil.copytree(ckpt_store.path, path)
    code = run(["probe", str(path), "-H", "rls", "--folds", "3", "--n-boot", "0", "--site", "resid",
                "-t", "rls_pred"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "rls_pred" in out and "step" in out and "L2" in out and "shuffled" in out
    assert "at step" not in out  # (the last checkpoint's own plot is titled so; the table is not)
    rows = [line.split() for line in out.splitlines() if line.strip()[:2].strip().isdigit()]
    assert [r[0] for r in rows] == ["0", "8", "16", "24"]
    for name in ("c.rls.png", "c.rls.final.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = run(["probe", str(path), "-H", "rls", "--folds", "3", "--n-boot", "0", "--site", "resid",
                "-t", "rls_pred", "--json"])
    records = json.loads(capsys.readouterr().out)["records"]
    assert code == 0 and {r["checkpoint"] for r in records} == {0, 8, 16, 24}
    assert len(records) == 4 * 2 * 3  # checkpoints x conditions x layers
    assert all(isinstance(r["overlaps_baseline"], bool) for r in records if r["condition"] == "model")


def test_cli_cache_with_checkpoints_and_no_model(tmp_path, capsys, run_dir):
    from probekit.cli import run

    code = run(["cache", "--checkpoints", str(run_dir / "checkpoints"), "--out", str(tmp_path / "c.zarr"),
                "-n", "20", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["checkpoints"] == [0, 8, 16, 24]
    assert summary["sites"]["resid"] == {"checkpoint": 4, "sample": 20, "layer": 3, "pos": 6, "feature": 8}
    code = run(["cache", "--out", str(tmp_path / "d.zarr")])
    assert code == 2 and capsys.readouterr().err.startswith("error: pass --model (or --checkpoints")
    code = run(["cache", "--model", "hf:gpt2", "--checkpoints", str(run_dir), "--out", str(tmp_path / "e.zarr")])
    assert code == 2 and "works with toy: checkpoints" in capsys.readouterr().err


def test_the_validator_checks_checkpoint_stores(ckpt_store):
    ds = ckpt_store.dataset()
    assert schema.validate_store(ds) == []
    assert any("strictly increasing" in p for p in schema.validate_store(ds.assign_coords(checkpoint=[0, 8, 8, 24])))
    assert any("checkpoint_hash" in p for p in schema.validate_store(ds.drop_vars("checkpoint_hash")))
    assert any("n_checkpoints" in p for p in schema.validate_store(ds.isel(checkpoint=slice(0, 2))))
    plain = ds.isel(checkpoint=0, drop=True)
    plain["attn_out"] = ds.attn_out  # one site with the dim, one without
    assert any("every site starts with it" in p for p in schema.validate_store(plain.assign_coords(
        checkpoint=ds.checkpoint, checkpoint_path=ds.checkpoint_path, checkpoint_hash=ds.checkpoint_hash)))


def test_logits_topk_through_checkpoints(tmp_path, host, run_dir, ckpt_store):
    store = run_cache(host, _req(tmp_path / "k.zarr", run_dir / "checkpoints", logits="topk:1"))
    ds = store.dataset()
    assert ds[schema.TOPK_VALUES_VAR].dims == (schema.CHECKPOINT, schema.SAMPLE, schema.POS, schema.TOPK)
    assert store.array(schema.TOPK_INDICES_VAR).chunks == (1, BLOCK, 6, 1)
    full = ckpt_store.dataset().model_out.values
    np.testing.assert_array_equal(ds[schema.TOPK_VALUES_VAR].values[..., 0], full.max(-1))
    np.testing.assert_array_equal(ds[schema.TOPK_INDICES_VAR].values[..., 0], full.argmax(-1))
    assert schema.validate_store(ds) == []
