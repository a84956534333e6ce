"""Damaged stores: a missing, flipped, truncated or misplaced chunk, garbled metadata or manifest.

zarr reads a missing chunk as zeros; probekit must instead fail in one line naming what is
damaged (``probekit probe``), and ``probekit verify`` must find each in one line too.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from probekit.store import schema
from probekit.cli import run
from probekit.errors import StoreError
from probekit.store.integrity import verify_store
from probekit.store.zarr_store import Store

from support.battery import snapshot  # noqa: E402

STORE = "store.zarr"
PROBE = ("probe", STORE, "-H", "rls", "--n-boot", "0", "--json")  # --json: no progress bar on stderr


def chunk(workdir, name: str, coords=(0, 2, 0, 0), group: str | None = None):
    """The file of one chunk (zarr's own key encoding), e.g. ``resid`` layer 2 of sample block 0."""
    arr = Store(workdir / STORE).array(name, group)
    return workdir / STORE / arr.path / arr.metadata.encode_chunk_key(coords)


def flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def set_manifest(workdir, value, group: str = "") -> None:
    meta = workdir / STORE / group / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][schema.MANIFEST_ATTR] = value
    meta.write_text(json.dumps(doc))


def marker(store_dir, unit, group: str = ""):
    """The marker object of a finished unit (``probekit_manifest/done/c/<b>``, or ``c/<ckpt>/<b>``)."""
    parts = unit if isinstance(unit, tuple) else (unit,)
    return Path(store_dir, group, "probekit_manifest", "done", "c", *map(str, parts))


def add_marker(store_dir, name: str, group: str = "") -> None:
    """A marker object named ``name`` (e.g. ``x`` or ``7``): garbled or out of range."""
    path = marker(store_dir, 0, group).with_name(name)
    path.write_bytes(b"\x01")


# -- new arrays carry a checksum -------------------------------------------------------------------


def test_new_arrays_carry_crc32c_and_checksum_false_leaves_it_out(tmp_path):
    base = xr.Dataset({"x": (("sample", "pos"), np.zeros((4, 3)))}, attrs={"probekit_format": 1})
    store = Store.create(tmp_path / "s.zarr", base)
    codecs = lambda a: [type(c).__name__ for c in a.metadata.codecs]  # noqa: E731
    assert codecs(store.array("x"))[-1] == "Crc32cCodec"
    assert (tmp_path / "s.zarr" / "x" / "c" / "0" / "0").is_file()  # all zeros, written all the same
    act = store.create_activation("resid", (4, 2, 3, 5), dtype="float16", block=2)
    assert codecs(act) == ["BytesCodec", "Crc32cCodec"]
    tok = store.create_variable("tokens", (4, 3), ("sample", "pos"), dtype="int64", chunks=(2, 3))
    assert codecs(tok) == ["BytesCodec", "ZstdCodec", "Crc32cCodec"]
    raw = store.create_activation("raw", (4, 2, 3, 5), dtype="float16", block=2, checksum=False)
    assert codecs(raw) == ["BytesCodec"]
    plain = store.create_variable("ids", (4, 3), ("sample", "pos"), dtype="int64", chunks=(2, 3), checksum=False)
    assert codecs(plain) == ["BytesCodec", "ZstdCodec"]


# -- probe refuses a damaged store, in one line ------------------------------------------------------


def test_probe_refuses_a_deleted_activation_chunk(workdir, fails):
    chunk(workdir, "resid").unlink()  # zarr would read it as zeros: exit 0 with a wrong R²
    fails(1, *PROBE, match="resid layer 2 of sample block 0 is missing (chunk resid/c/0/2/0/0)")


def test_probe_refuses_a_deleted_random_init_chunk(workdir, fails):
    chunk(workdir, "resid", (0, 1, 0, 0), schema.RANDOM_INIT_GROUP).unlink()
    fails(1, *PROBE, match="random_init/resid layer 1 of sample block 0 is missing")


def test_probe_refuses_a_deleted_model_out_chunk(workdir, fails):
    chunk(workdir, schema.OUTPUT_VAR, (0, 0, 0)).unlink()
    fails(1, *PROBE, match="model_out of sample block 0 is missing")


def test_probe_refuses_a_deleted_task_variable_chunk(workdir, fails):
    chunk(workdir, "y", (0, 0, 0)).unlink()
    fails(1, *PROBE, match="y is missing (chunk y/c/0/0/0)")


def test_probe_refuses_a_flipped_byte(workdir, fails):
    flip_byte(chunk(workdir, "resid"))
    fails(1, *PROBE, match="resid layer 2 of samples 0:120 is unreadable (crc32c checksum mismatch)")


def test_probe_refuses_a_truncated_chunk(workdir, fails):
    truncate(chunk(workdir, "resid"))
    fails(1, *PROBE, match="resid layer 2 of samples 0:120 is unreadable")


def test_probe_refuses_an_empty_chunk_file(workdir, fails):
    chunk(workdir, "resid").write_bytes(b"")
    fails(1, *PROBE, match="is unreadable (crc32c checksum mismatch)")


def test_probe_refuses_a_directory_in_place_of_a_chunk(workdir, fails):
    path = chunk(workdir, "resid")
    path.unlink()
    path.mkdir()
    fails(1, *PROBE, match="resid layer 2 of sample block 0 is a directory")


def test_probe_refuses_truncated_root_metadata(workdir, fails):
    truncate(workdir / STORE / "zarr.json")
    fails(1, *PROBE, match="zarr.json is not readable zarr metadata")


def test_probe_refuses_truncated_array_metadata(workdir, fails):
    truncate(workdir / STORE / "resid" / "zarr.json")
    fails(1, *PROBE, match="resid/zarr.json is not valid JSON")


def test_probe_refuses_deleted_array_metadata(workdir, fails):
    (workdir / STORE / "resid" / "zarr.json").unlink()
    fails(1, *PROBE, match="resid/zarr.json is missing")


@pytest.mark.parametrize("manifest", ["all", [0, "x"], [[0]], {"0": 1}, [0, 7]])
def test_probe_refuses_a_garbled_legacy_manifest(workdir, fails, manifest):
    set_manifest(workdir, manifest)  # stores written before the marker manifest keep a blocks_done list
    fails(1, *PROBE, match="the manifest of group /")


@pytest.mark.parametrize("name, match", [("x", "probekit_manifest holds the object 'x'"),
                                          ("7", "lists sample block 7, which the group does not have")])
def test_probe_refuses_a_garbled_marker(workdir, fails, name, match):
    add_marker(workdir / STORE, name)
    fails(1, *PROBE, match=match)


# -- probekit verify -------------------------------------------------------------------------------


def test_verify_a_clean_store(workdir, capsys):
    capsys.readouterr()
    assert run(["verify", STORE]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for word in ("group", "variable", "chunks", "status", "random_init", "resid", "model_out", "manifest"):
        assert word in out
    assert "store.zarr: intact" in out and "damaged" not in out


def test_verify_json_and_results_groups(workdir, capsys):
    assert run(list(PROBE)) == 0  # a results group to verify too
    capsys.readouterr()
    assert run(["verify", STORE, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "intact" and report["problems"] == [] and report["chunks"] > 0
    groups = {r["group"] for r in report["rows"]}
    assert {"/", "random_init"} <= groups and any(g.startswith("probes/rls/") for g in groups)
    assert all(set(r) == {"group", "variable", "chunks", "status", "detail"} for r in report["rows"])


@pytest.mark.parametrize("damage, match", [
    (lambda w: chunk(w, "resid").unlink(), "resid: chunk c/0/2/0/0 (resid layer 2 of sample block 0) is missing"),
    (lambda w: chunk(w, "resid", (0, 0, 0, 0), schema.RANDOM_INIT_GROUP).unlink(),
     "random_init/resid: chunk c/0/0/0/0 (random_init/resid layer 0 of sample block 0) is missing"),
    (lambda w: flip_byte(chunk(w, "resid")), "resid layer 2 of sample block 0) is unreadable: crc32c checksum"),
    (lambda w: truncate(chunk(w, "resid")), "is unreadable: crc32c checksum mismatch"),
    (lambda w: chunk(w, "resid").write_bytes(b""), "is unreadable: crc32c checksum mismatch"),
    (lambda w: chunk(w, schema.OUTPUT_VAR, (0, 0, 0)).unlink(), "model_out: chunk c/0/0/0"),
    (lambda w: chunk(w, "x", (0, 0, 0)).unlink(), "x: chunk c/0/0/0 is missing"),
    (lambda w: truncate(w / STORE / "zarr.json"), "1 problem: zarr.json is not valid JSON"),
    (lambda w: truncate(w / STORE / "random_init" / "zarr.json"), "random_init/zarr.json is not valid JSON"),
    (lambda w: truncate(w / STORE / "resid" / "zarr.json"), "1 problem: resid/zarr.json is not valid JSON"),
    (lambda w: (w / STORE / "resid" / "zarr.json").unlink(), "resid/zarr.json is missing"),
    (lambda w: set_manifest(w, [0, "x"]), 'the manifest of the root: blocks_done holds "x"'),
    (lambda w: set_manifest(w, [3], "random_init"), "the manifest of random_init: lists sample block 3"),
    (lambda w: add_marker(w / STORE, "x"), "the manifest of the root: probekit_manifest holds the object 'x'"),
    (lambda w: add_marker(w / STORE, "3", "random_init"), "the manifest of random_init: lists sample block 3"),
], ids=["deleted", "deleted-random-init", "flipped", "truncated", "empty", "model-out", "task-variable",
        "root-metadata", "group-metadata", "array-metadata", "no-array-metadata", "manifest", "manifest-range",
        "marker", "marker-range"])
def test_verify_finds_damage_in_one_line(workdir, fails, damage, match):
    damage(workdir)
    line = fails(1, "verify", STORE, match=match)
    assert line.startswith(f"error: {STORE}: 1 problem: ")


def test_verify_finds_a_directory_in_place_of_a_chunk(workdir, fails):
    path = chunk(workdir, "resid")
    path.unlink()
    path.mkdir()
    fails(1, "verify", STORE, match="resid layer 2 of sample block 0) is a directory, not a chunk file")


def test_verify_counts_every_problem_and_prints_the_table(workdir, fails, capsys):
    chunk(workdir, "resid").unlink()
    flip_byte(chunk(workdir, "resid", (0, 1, 0, 0)))
    line = fails(1, "verify", STORE, match="2 problems: resid: chunk c/0/1/0/0")
    assert "and 1 more" in line
    report = verify_store(workdir / STORE)
    resid = next(r for r in report["rows"] if (r["group"], r["variable"]) == ("/", "resid"))
    assert resid["status"] == "damaged" and "c/0/2/0/0" in resid["detail"] and "checksum" in resid["detail"]


def test_verify_an_incomplete_store_is_not_damage(workdir, capsys):
    marker(workdir / STORE, 0).unlink()  # the cache was killed before its only block was recorded...
    chunk(workdir, "resid").unlink()  # ...with one chunk not yet written
    capsys.readouterr()
    assert run(["verify", STORE]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "incomplete" in out and "rerun the cache command to resume" in out
    report = verify_store(workdir / STORE)
    assert report["status"] == "incomplete" and report["problems"] == []


@pytest.mark.parametrize("target, match", [
    ("nowhere.zarr", "no store at nowhere.zarr"),
    ("notes", "notes is not a probekit store (no zarr.json)"),
    ("hf", "hf is not a probekit store (no zarr.json)"),
    ("report.txt", "report.txt is not a probekit store"),
    ("store.zarr/resid", "is a zarr array but not a probekit store"),
])
def test_verify_refuses_what_is_not_a_store(workdir, fails, target, match):
    fails(1, "verify", target, match=match)


# -- check_chunks on a checkpoint store (units are [checkpoint, block] pairs) -----------------------


@pytest.fixture
def ckpt_store(tmp_path):
    """2 checkpoints x 5 samples in blocks of 2 (3 blocks), resid with 3 layers, every unit done."""
    base = xr.Dataset(coords={schema.CHECKPOINT: [0, 8]}, attrs={
        "probekit_format": 1, "n_samples": 5, schema.BLOCK_ATTR: 2, schema.N_CHECKPOINTS_ATTR: 2,
        "sites": ["resid"], schema.MANIFEST_ATTR: []})
    store = Store.create(tmp_path / "c.zarr", base)
    arr = store.create_activation("resid", (2, 5, 3, 4, 8), dims=(schema.CHECKPOINT, *schema.ACTIVATION_DIMS),
                                  dtype="float32", block=2)
    arr[:] = np.random.default_rng(0).normal(size=arr.shape)
    for unit in [(c, b) for c in range(2) for b in range(3)]:
        store.mark_block_done(unit)
    return store


def _ckpt_chunk(store, coords):
    arr = store.array("resid")
    return store.path / arr.path / arr.metadata.encode_chunk_key(coords)


def test_check_chunks_of_a_checkpoint_store(ckpt_store):
    ckpt_store.check_chunks()
    assert verify_store(ckpt_store.path)["status"] == "intact"
    _ckpt_chunk(ckpt_store, (1, 2, 1, 0, 0)).unlink()
    with pytest.raises(StoreError, match=r"resid layer 1 of sample block 2 at checkpoint 1 is missing "
                                         r"\(chunk resid/c/1/2/1/0/0\)"):
        ckpt_store.check_chunks()
    report = verify_store(ckpt_store.path)
    assert report["status"] == "damaged" and "sample block 2 at checkpoint 1" in report["problems"][0]


def test_check_chunks_ignores_unfinished_units_and_refuses_unknown_ones(ckpt_store):
    _ckpt_chunk(ckpt_store, (1, 2, 1, 0, 0)).unlink()
    marker(ckpt_store.path, (1, 2)).unlink()
    ckpt_store.check_chunks()  # (1, 2) is not finished: its chunks may be absent
    assert verify_store(ckpt_store.path)["status"] == "incomplete"
    marker(ckpt_store.path, (5, 0)).parent.mkdir()
    marker(ckpt_store.path, (5, 0)).write_bytes(b"\x01")
    with pytest.raises(StoreError, match="lists sample block 0 at checkpoint 5, which the group does not have"):
        ckpt_store.check_chunks()
    shutil.rmtree(marker(ckpt_store.path, (5, 0)).parent)
    ckpt_store.update_attrs({schema.MANIFEST_ATTR: [0, 1]})  # a plain store's units (legacy list) in a checkpoint store
    with pytest.raises(StoreError, match="lists sample block 0, which the group does not have"):
        ckpt_store.check_chunks()


def test_a_damaged_chunk_read_names_variable_layer_samples_and_checkpoint(ckpt_store):
    from probekit.probes.logistic import gather_rows
    from probekit.probes.blocks import CheckpointView

    flip_byte(_ckpt_chunk(ckpt_store, (1, 1, 2, 0, 0)))
    view = CheckpointView(ckpt_store.array("resid"), 1)
    assert gather_rows(view, 1, np.ones((5, 4), bool)).shape == (20, 8)  # other layers read fine
    with pytest.raises(StoreError, match=r"resid layer 2 of samples 2:4 at checkpoint 1 is unreadable "
                                         r"\(crc32c checksum mismatch\); the store is damaged: run probekit verify"):
        gather_rows(view, 2, np.ones((5, 4), bool))


def test_a_copy_of_the_store_is_untouched_by_verify(workdir, capsys):
    shutil.copytree(workdir / STORE, workdir / "copy.zarr")
    before = snapshot(workdir / "copy.zarr")
    assert run(["verify", "copy.zarr", "--json"]) == 0
    assert snapshot(workdir / "copy.zarr") == before


def test_verify_finds_a_flipped_byte_in_a_results_group(workdir, fails, capsys):
    before = set(Store(workdir / STORE).results("rls"))  # the session's store may hold earlier results
    assert run(list(PROBE)) == 0
    capsys.readouterr()
    (key,) = set(Store(workdir / STORE).results("rls")) - before
    r2 = Store(workdir / STORE).array("r2", key)
    flip_byte(workdir / STORE / r2.path / r2.metadata.encode_chunk_key((0,) * r2.ndim))
    fails(1, "verify", STORE, match=f"{key}/r2")
