"""Hostile output paths: no command deletes or overwrites what it did not make, and a failed
command leaves what was there intact (issue 13, behaviours 1, 2, 3, 5 and 7).

Each ``fails(...)`` case asserts the exit code, one ``error:`` line, no traceback and a work
directory byte-identical afterwards (see ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from probekit.cli import run
from probekit.store.zarr_store import Store

from support.battery import snapshot  # noqa: E402


@pytest.fixture(scope="module")
def tiny_hf(hf_models):
    return hf_models["gpt2"][0]


ICL = ["icl", "-p", "max_examples=1", "--count", "2", "--batch-size", "2"]


# -- 1. icl --out never empties a folder ------------------------------------------------

@pytest.mark.parametrize("out", ["notes", "store.zarr", ".", "model", "hf", "report.txt"])
def test_icl_out_refuses_what_it_did_not_make(fails, tiny_hf, out):
    fails(2, *ICL, "--model", f"hf:{tiny_hf}", "--out", out, "--plot", "icl.png", match="--out")


def test_icl_out_writes_a_new_curve_and_replaces_only_its_own(capsys, workdir, tiny_hf):
    assert run([*ICL, "--model", f"hf:{tiny_hf}", "--out", "curve.zarr", "--plot", "icl.png", "--json"]) == 0
    import xarray as xr

    assert xr.open_zarr("curve.zarr", consolidated=False).attrs["probekit_kind"] == "icl-curve"
    assert run([*ICL, "--model", f"hf:{tiny_hf}", "--out", "curve.zarr", "--plot", "icl.png", "--json"]) == 0
    assert not [p for p in os.listdir(workdir) if ".probekit-" in p]  # no staging sibling left


# -- 2. cache --out inside a store ---------------------------------------------------------

@pytest.mark.parametrize("out", ["store.zarr/resid", "store.zarr/random_init", "store.zarr/new.zarr",
                                 "store.zarr/resid/c"])
def test_cache_refuses_paths_inside_a_store(fails, out):
    fails(2, "cache", "--model", "toy:model", "--out", out, "-n", "8", "--overwrite", match="inside the zarr store")


@pytest.mark.parametrize("out", ["notes", "hf", "model", "report.txt", ".", "report.txt/x.zarr"])
def test_cache_refuses_what_is_not_a_store(fails, out):
    fails(2, "cache", "--model", "toy:model", "--out", out, "-n", "8", "--overwrite", match="--out")


# -- 3. cache --overwrite validates everything first and keeps the old store until done ---

@pytest.mark.parametrize("bad", [["-p", "length=31"], ["--site", "nope"], ["--task", "coin"],
                                 ["--model", "toy:notes"], ["--logits", "topk:100000"]])
def test_overwrite_with_a_request_that_fails_leaves_the_store(fails, bad):
    argv = ["cache", "--model", "toy:model", "--out", "store.zarr", "-n", "8", "--overwrite", *bad]
    fails(2 if bad[0] != "--model" else 1, *argv)


def test_overwrite_that_fails_mid_run_leaves_the_old_store_intact(workdir, monkeypatch, capsys):
    from probekit.cache import writer
    calls = {"n": 0}
    real = writer.BlockWriter._compute

    def flaky(self, adapter, s0, s1):  # fail on the second block
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("disk on fire")
        return real(self, adapter, s0, s1)

    monkeypatch.setattr(writer.BlockWriter, "_compute", flaky)
    before = snapshot(workdir)
    code = run(["cache", "--model", "toy:model", "--out", "store.zarr", "-n", "60", "--block", "10",
                "--batch-size", "10", "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1 and "disk on fire" in err
    assert snapshot(workdir) == before  # the old store byte for byte; no half-built sibling


def test_overwrite_replaces_a_store_and_leaves_no_sibling(workdir, capsys):
    old_created = Store.open("store.zarr").attrs()["created"]
    assert run(["cache", "--model", "toy:model", "--out", "store.zarr", "-n", "30", "--overwrite", "--json"]) == 0
    store = Store.open("store.zarr")
    assert store.dataset().sizes["sample"] == 30 and store.is_complete()
    assert not store.has_group("random_init")  # the old store's group went with it
    assert store.attrs()["created"] >= old_created
    assert not [p for p in os.listdir(workdir) if ".probekit-" in p]


def test_a_new_store_that_fails_before_its_first_block_is_removed(workdir, monkeypatch, capsys):
    from probekit.cache import writer
    def broken(self, *a, **k):
        raise OSError("no space left on device")

    monkeypatch.setattr(writer.BlockWriter, "__call__", broken)
    before = snapshot(workdir)
    assert run(["cache", "--model", "toy:model", "--out", "runs/new/fresh.zarr", "-n", "8"]) == 1
    assert snapshot(workdir) == before  # not even the folders made for it


def test_leftovers_of_killed_runs_are_cleared_or_restored(workdir, capsys):
    from probekit import outputs

    dead = 2**22 + 12345  # above any pid this machine hands out by default
    stale = workdir / f".store.zarr.probekit-new-{dead}"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    outputs.clear_leftovers(workdir / "store.zarr")
    assert not stale.exists()
    # a swap killed between its two renames: the old output is put back
    os.replace(workdir / "store.zarr", workdir / f".store.zarr.probekit-old-{dead}")
    outputs.clear_leftovers(workdir / "store.zarr")
    assert Store.open(workdir / "store.zarr").is_complete()


# -- 5. train --out --------------------------------------------------------------------------

TRAIN = ["train", "--task", "lds", "-p", "dim=3", "-p", "length=8", "--steps", "3", "--layers", "1",
         "--width", "8", "--heads", "1", "--batch-size", "4"]


@pytest.mark.parametrize("out", ["hf", "store.zarr", "notes", "model", "report.txt", "report.txt/m",
                                 "store.zarr/ckpt", "."])
def test_train_refuses_what_it_did_not_make(fails, out):
    fails(2, *TRAIN, "--out", out, match="--out")


def test_train_overwrite_replaces_only_a_checkpoint(workdir, capsys):
    old = (workdir / "model" / "model.safetensors").read_bytes()
    assert run([*TRAIN, "--out", "model", "--overwrite", "--json"]) == 0
    assert (workdir / "model" / "model.safetensors").read_bytes() != old
    assert json.loads((workdir / "model" / "config.json").read_text())["training"]["steps"] == 3
    assert not [p for p in os.listdir(workdir) if ".probekit-" in p]


def test_train_that_fails_leaves_nothing(workdir, capsys):
    before = snapshot(workdir)
    assert run([*TRAIN, "--out", "runs/m1", "--lr", "1e30", "--grad-clip", "0"]) in (1, 2)
    assert snapshot(workdir) == before


# -- 7. probe --plot: every output path is checked before work, results stored last -------

@pytest.mark.parametrize("plot", ["report.txt/x.png", "notes", "x.txt", "store.zarr/x.png", "report.txt",
                                  "model/sub/../x"])
def test_probe_refuses_a_bad_plot_path_before_writing_results(fails, plot):
    fails(2, "probe", "store.zarr", "-H", "rls", "--folds", "3", "--n-boot", "0", "--plot", plot, match="--plot")


def test_probe_stores_results_and_figures(workdir, capsys):
    assert run(["probe", "store.zarr", "-H", "rls", "--folds", "3", "--n-boot", "0", "-t", "rls_pred",
                "--plot", "figs/r2.png", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert Path("figs/r2.png").read_bytes()[:4] == b"\x89PNG"
    assert len(Store.open("store.zarr").results("rls")) == 1
    assert all(Path(p).is_file() for p in payload["plots"])


@pytest.mark.parametrize("cmd", [
    ["compare", "--model", "toy:model", "-H", "rls", "-n", "8"],
    ["heads", "--model", "toy:model", "-n", "4"],
])
@pytest.mark.parametrize("plot", ["notes", "report.txt/x.png", "x.csv", "store.zarr/p.png"])
def test_lenses_check_their_plot_path_first(fails, cmd, plot):
    fails(2, *cmd, "--plot", plot, match="--plot")


PAIRS = [{"a": "the cat sat on the mat\nthe dog sat on the", "b": "the dog sat on the", "answer": " mat"},
         {"a": "hello world, hello", "b": "hello", "answer": " cat"}]


@pytest.fixture
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"  # outside the work directory
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return path


@pytest.mark.parametrize("out", ["report.txt", "store.zarr/resid/x.zarr", "store.zarr/patching", "notes/todo.txt",
                                 "hf/config.json"])
def test_patch_out_refuses_hostile_paths(fails, tiny_hf, pairs, out):
    fails(2, "patch", "--model", f"hf:{tiny_hf}", "--pairs", pairs, "--out", out)


def test_patch_into_a_folder_of_notes_adds_its_files_and_keeps_the_notes(workdir, tiny_hf, pairs, capsys):
    before = (workdir / "notes" / "todo.txt").read_bytes()
    assert run(["patch", "--model", f"hf:{tiny_hf}", "--pairs", str(pairs),
                "--out", "notes", "--json"]) == 0
    assert (workdir / "notes" / "todo.txt").read_bytes() == before
    assert {"patch.zarr", "patch.json", "patch.png"} <= set(os.listdir(workdir / "notes"))
    ds = Store(workdir / "notes" / "patch.zarr")
    assert ds.attrs()["probekit_kind"] == "patch"
    # a second run replaces its own results, and still keeps the notes
    assert run(["patch", "--model", f"hf:{tiny_hf}", "--pairs", str(pairs),
                "--out", "notes", "--json"]) == 0
    assert (workdir / "notes" / "todo.txt").read_bytes() == before
    np.testing.assert_array_equal(sorted(os.listdir(workdir / "notes")),
                                  ["patch.json", "patch.png", "patch.zarr", "todo.txt"])
