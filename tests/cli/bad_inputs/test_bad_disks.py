"""Full and read-only disks: a small tmpfs mounted by the test (skipped where mounting is not
allowed). Each command fails in one line and leaves what was there intact."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from probekit.cli import run
from probekit.store.zarr_store import Store

from support.battery import assert_clean_failure, snapshot


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a fresh tmpfs of ``size`` mounted in the work area; unmounted after."""
    mounted = []

    def make(size: str, readonly_after=None) -> Path:
        where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        if not _mount(where, f"size={size}"):
            pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
        mounted.append(where)
        if readonly_after is not None:
            readonly_after(where)
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
        return where

    yield make
    for where in mounted:
        _umount(where)


def _copy_store(src):
    def put(where: Path) -> None:
        shutil.copytree(src, where / "store.zarr")
    return put


def test_cache_to_a_full_disk_is_refused_before_writing(small_disk, workdir, capsys):
    disk = small_disk("64k")
    assert_clean_failure(capsys, ["cache", "--model", "toy:model", "--out", disk / "big.zarr", "-n", "4000"], 1,
                         disk, match="is free there")


def test_overwrite_counts_the_new_store_beside_the_old(small_disk, workdir, capsys):
    """The new store is built beside the old one: both must fit, or nothing starts."""
    size = sum(f.stat().st_size for f in Path("store.zarr").rglob("*") if f.is_file())
    disk = small_disk(f"{int(size * 1.5) // 4096 * 4096 + 4096}")
    shutil.copytree("store.zarr", disk / "store.zarr")
    assert_clean_failure(capsys, ["cache", "--model", "toy:model", "--out", disk / "store.zarr", "-n", "2000",
                                  "--random-init", "--overwrite"], 1, disk, match="is free there")


def test_train_that_runs_out_of_space_leaves_nothing(small_disk, workdir, capsys):
    disk = small_disk("16k")
    before = snapshot(disk)
    code = run(["train", "--task", "lds", "--steps", "2", "--out", disk / "m", "--width", "64", "--layers", "2"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "No space left" in lines[0] and "Traceback" not in err, err
    assert snapshot(disk) == before


def test_a_cache_that_runs_out_of_space_mid_run_keeps_its_blocks_to_resume(small_disk, workdir, capsys, monkeypatch):
    """The disk check passes (it counts activations only) but the disk fills while blocks are written:
    the finished blocks are kept and the error says how to resume."""
    from probekit.cache import plan
    monkeypatch.setattr(plan, "check_disk", lambda path, needed: 10**12)  # as if another job filled the disk
    disk = small_disk("2m")
    code = run(["cache", "--model", "toy:model", "--out", disk / "s.zarr", "-n", "3000", "--block", "100"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    store = Store(disk / "s.zarr")
    assert "No space left" in lines[0] and "rerun the same command to resume" in lines[0], lines[0]
    assert 0 < len(store.blocks_done()) < 30  # the finished blocks, resumable where space is freed


@pytest.mark.parametrize("argv", [
    ["probe", "{disk}/store.zarr", "-H", "rls", "--folds", "3", "--n-boot", "0", "--plot", "out.png"],
    ["cache", "--model", "toy:model", "--out", "{disk}/new.zarr", "-n", "8"],
    ["cache", "--model", "toy:model", "--out", "{disk}/store.zarr", "-n", "8", "--overwrite"],
    ["train", "--task", "lds", "--steps", "2", "--out", "{disk}/m"],
    ["compare", "--model", "toy:model", "-H", "rls", "-n", "8", "--plot", "{disk}/c.png"],
])
def test_a_read_only_disk_is_refused_before_any_work(small_disk, workdir, tiny_store, capsys, argv):
    disk = small_disk("4m", readonly_after=_copy_store(tiny_store))
    before = snapshot(workdir)
    assert_clean_failure(capsys, [a.format(disk=disk) for a in argv], 1, disk, match="cannot write")
    assert snapshot(workdir) == before  # not even the plot outside the disk


def test_a_cache_that_runs_out_of_space_before_its_first_block_leaves_nothing(small_disk, workdir, capsys,
                                                                             monkeypatch):
    from probekit.cache import plan
    monkeypatch.setattr(plan, "check_disk", lambda path, needed: 10**12)
    disk = small_disk("400k")  # the task inputs alone do not fit
    before = snapshot(disk)
    code = run(["cache", "--model", "toy:model", "--out", disk / "runs" / "s.zarr", "-n", "3000", "--block", "100"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "No space left" in lines[0], err
    assert snapshot(disk) == before  # neither the store nor the folder made for it
