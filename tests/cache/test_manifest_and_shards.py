"""The marker manifest (one object per finished block), sharded stores and the in-flight bound."""

import json
import os
import time

import numpy as np
import pytest

from probekit.cache import writer
from probekit.cache.run import CacheRequest, run_cache
from probekit.errors import StoreError
from probekit.store import schema
from probekit.store.integrity import verify_store
from probekit.store.zarr_store import Store


def _req(ckpt, out, **kw):
    kw = {"n_samples": 90, "seed": 2, "batch_size": 10, "block": 10} | kw
    return CacheRequest(model=f"toy:{ckpt}", out=str(out), **kw)


def _files(path) -> dict:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs}


def test_marking_a_block_writes_one_small_object_and_resume_reads_the_markers(tmp_path, host, tiny_checkpoint):
    store = run_cache(host, _req(tiny_checkpoint, tmp_path / "s.zarr"))
    assert store.blocks_done() == set(range(9)) and schema.MANIFEST_ATTR not in store.attrs()
    marker = tmp_path / "s.zarr" / "probekit_manifest" / "done" / "c" / "4"
    marker.unlink()
    assert store.blocks_done() == set(range(9)) - {4} and not store.is_complete()
    for _ in range(2):  # whatever is already marked, marking one block adds one object and changes no other
        before = _files(store.path)
        store.mark_block_done(4)
        after = _files(store.path)
        assert set(after) - set(before) <= {str(marker)} and all(after[f] == before[f] for f in before)
        assert marker.stat().st_size <= 8
    assert store.is_complete()


def test_a_marker_write_cut_by_a_kill_is_not_a_finished_block_and_resume_clears_it(tmp_path, host, tiny_checkpoint):
    """zarr writes each key to ``<key>.<uuid>.partial`` and renames it: a kill in between leaves the
    ``.partial`` file. It is not a marker (the store is not damaged) and the resume removes it."""
    full = run_cache(host, _req(tiny_checkpoint, tmp_path / "full.zarr"))
    store = run_cache(host, _req(tiny_checkpoint, tmp_path / "s.zarr"))
    markers = tmp_path / "s.zarr" / "probekit_manifest" / "done" / "c"
    (markers / "4").unlink()
    cut = markers / "4.4e74f818d535401e982f0cc620631b74.partial"
    cut.write_bytes(b"\x01")
    assert store.blocks_done() == set(range(9)) - {4} and not store.is_complete()
    resumed = run_cache(host, _req(tiny_checkpoint, tmp_path / "s.zarr"))
    assert resumed.is_complete() and not cut.exists()
    assert full.dataset().resid.values.tobytes() == resumed.dataset().resid.values.tobytes()


def test_a_store_with_the_legacy_blocks_done_list_still_resumes(tmp_path, host, tiny_checkpoint):
    import shutil

    full = run_cache(host, _req(tiny_checkpoint, tmp_path / "full.zarr"))
    part = tmp_path / "old.zarr"
    shutil.copytree(full.path, part)
    shutil.rmtree(part / "probekit_manifest")
    Store(part).update_attrs({schema.MANIFEST_ATTR: [0, 1, 2]})  # as an older probekit wrote it
    assert Store(part).blocks_done() == {0, 1, 2}
    for name in ("resid", "model_out"):  # the unfinished blocks' chunks are gone, as after a kill
        for b in range(3, 9):
            for key in list((part / name / "c").glob(f"{b}/**/*")):
                key.unlink() if key.is_file() else None
    resumed = run_cache(host, _req(tiny_checkpoint, part))
    assert resumed.blocks_done() == set(range(9)) and resumed.is_complete()
    a, b = full.dataset(), resumed.dataset()
    assert a.resid.values.tobytes() == b.resid.values.tobytes()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, host, tiny_checkpoint):
    """The same cache unsharded and in shards of 30 samples (3 blocks of 10), with random init."""
    base = tmp_path_factory.mktemp("shards")
    plain = run_cache(host, _req(tiny_checkpoint, base / "plain.zarr", random_init=True))
    sharded = run_cache(host, _req(tiny_checkpoint, base / "sharded.zarr", random_init=True, shard=25))
    return plain, sharded


def test_a_sharded_store_holds_the_same_bytes_in_fewer_objects(pair):
    plain, sharded = pair
    assert sharded.attrs()[schema.SHARD_ATTR] == 30  # 25 rounds up to whole blocks
    arr = sharded.array("resid")
    assert arr.chunks == (10, 1, 10, 16) and arr.shards == (30, 3, 10, 16)  # a shard: every layer of 30 samples
    assert any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs[0].codecs)  # inner chunks
    for group in (None, schema.RANDOM_INIT_GROUP):
        a, b = plain.dataset(group), sharded.dataset(group)
        for var in ("resid", schema.OUTPUT_VAR):
            assert a[var].values.tobytes() == b[var].values.tobytes(), (group, var)
    assert len(list((sharded.path / "resid" / "c").rglob("*"))) < len(list((plain.path / "resid" / "c").rglob("*")))
    assert verify_store(sharded.path)["status"] == "intact"
    sharded.check_chunks()


def test_probe_results_of_a_sharded_store_equal_the_unsharded(pair, capsys):
    from probekit.cli import run

    outs = []
    for store in pair:
        capsys.readouterr()
        assert run(["probe", str(store.path), "-H", "rls", "--n-boot", "0", "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    results = [{k: v for k, v in out.items() if k not in ("attrs", "plots")} for out in outs]  # (paths, times)
    assert results[0] and results[0] == results[1]


def test_verify_finds_a_missing_shard(tmp_path, pair):
    import shutil

    copy = tmp_path / "s.zarr"
    shutil.copytree(pair[1].path, copy)
    (copy / "resid" / "c" / "1" / "0" / "0" / "0").unlink()  # samples 30:60, every layer
    with pytest.raises(StoreError, match=r"resid layer 0 of sample block 3 is missing \(chunk resid/c/1/0/0/0\), and 8 more"):
        Store(copy).check_chunks()
    report = verify_store(copy)
    assert report["status"] == "damaged" and "sample block 3" in report["problems"][0]


def test_at_most_inflight_blocks_wait_for_their_writes(tmp_path, host, tiny_checkpoint, monkeypatch):
    seen = []
    real_init, real_write = writer.BlockWriter.__init__, writer.BlockWriter._write

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        seen.append(self)

    def slow_write(self, *a, **kw):
        time.sleep(0.05)  # a slow disk: the compute side gets ahead and must wait
        return real_write(self, *a, **kw)

    monkeypatch.setattr(writer.BlockWriter, "__init__", init)
    monkeypatch.setattr(writer.BlockWriter, "_write", slow_write)
    for inflight in (1, 3):
        store = run_cache(host, _req(tiny_checkpoint, tmp_path / f"i{inflight}.zarr", inflight=inflight))
        assert store.is_complete() and seen[-1].peak_inflight == inflight


def test_bad_shard_and_inflight_are_refused_before_anything_is_written(tmp_path, host, tiny_checkpoint):
    from probekit.errors import UsageError

    for kw, match in (({"shard": "big"}, "--shard 'big'"), ({"inflight": 0}, "--inflight must be >= 1")):
        with pytest.raises(UsageError, match=match):
            run_cache(host, _req(tiny_checkpoint, tmp_path / "x.zarr", **kw))
        assert not (tmp_path / "x.zarr").exists()


def test_shard_auto_leaves_small_stores_unsharded(tmp_path, host, tiny_checkpoint):
    store = run_cache(host, _req(tiny_checkpoint, tmp_path / "a.zarr", shard="auto"))
    assert schema.SHARD_ATTR not in store.attrs() and store.array("resid").shards is None
    assert np.isfinite(store.dataset().resid.values).all()


def test_marking_when_another_writer_made_the_manifest_meanwhile(tmp_path, host, tiny_checkpoint):
    """On a cluster several worker processes mark blocks of one store: a worker whose view of the
    group predates the manifest (a stale or consolidated listing) opens the one another made."""
    import zarr

    from probekit.store import manifest

    store = run_cache(host, _req(tiny_checkpoint, tmp_path / "s.zarr"))
    made = zarr.open_group(store.path, mode="a")
    del made[manifest.GROUP]  # as before any block was marked
    zarr.consolidate_metadata(store.path)
    stale = zarr.open_group(store.path, mode="a", use_consolidated=True)  # lists no manifest
    other = zarr.open_group(store.path, mode="a", use_consolidated=False)
    manifest.mark(other, dict(other.attrs), 3)  # another worker creates the manifest and marks block 3
    manifest.mark(stale, dict(stale.attrs), 5)
    assert Store(store.path).blocks_done() == {3, 5}
