"""Kill test: a `probekit cache` killed with SIGKILL at random points resumes to the same bytes."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from probekit.store import schema
from probekit.store.zarr_store import Store


def cache_cmd(ckpt, out, n=400):
    return [sys.executable, "-m", "probekit", "cache", "--model", f"toy:{ckpt}", "--out", str(out),
            "-n", str(n), "--block", "8", "--batch-size", "8", "--random-init", "--json"]


def progress(path) -> int:
    """Blocks written so far, in the root and the random-init group (0 before the store exists)."""
    try:
        store = Store(path)
        done = len(store.blocks_done()) if store.exists() else 0
        if store.has_group(schema.RANDOM_INIT_GROUP):
            done += len(store.blocks_done(schema.RANDOM_INIT_GROUP))
        return done
    except Exception:  # mid-creation
        return 0


def wait_for_blocks(path, at_least, proc, timeout=180.0):  # generous: a loaded machine is slow
    start = time.time()
    while time.time() - start < timeout and proc.poll() is None:
        if progress(path) >= at_least:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_checkpoint):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    reference = tmp_path / "ref.zarr"
    subprocess.run(cache_cmd(tiny_checkpoint, reference), check=True, capture_output=True, env=env)

    path = tmp_path / "killed.zarr"
    rng = random.Random(1234)
    interrupted = 0  # kills that left blocks still to write
    for trial in range(3):
        if Store(path).exists() and Store(path).is_complete() and Store(path).is_complete(schema.RANDOM_INIT_GROUP):
            break
        proc = subprocess.Popen(cache_cmd(tiny_checkpoint, path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        # kill a random number of blocks in (plus a few ms, to land mid-write too): choosing the point
        # by blocks rather than by time keeps it inside the run however fast the machine caches
        if wait_for_blocks(path, progress(path) + rng.randint(1, 12), proc):
            time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            store = Store(path)
            if not (store.is_complete() and store.is_complete(schema.RANDOM_INIT_GROUP)):
                interrupted += 1
                assert store.lock_path.exists()  # a killed writer leaves its lock; the resume takes it over
        else:
            proc.wait()
    assert interrupted >= 1, "every run finished before it could be killed; make the cache longer"

    done = subprocess.run(cache_cmd(tiny_checkpoint, path), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    a, b = Store.open(reference), Store.open(path)
    for group in (None, schema.RANDOM_INIT_GROUP):
        for var in ("resid", schema.OUTPUT_VAR):
            np.testing.assert_array_equal(a.array(var, group)[:], b.array(var, group)[:], err_msg=f"{group}/{var}")
        n_blocks = -(-400 // 8)
        assert sorted(b.blocks_done(group)) == list(range(n_blocks))  # none missing, none twice
    np.testing.assert_array_equal(a.dataset().x.values, b.dataset().x.values)
    assert not list(path.rglob("*.partial"))
    assert not b.lock_path.exists()


def test_a_concurrent_writer_is_refused_and_the_first_run_is_unharmed(tmp_path, tiny_checkpoint):
    path = tmp_path / "busy.zarr"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(cache_cmd(tiny_checkpoint, path, n=4000), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)  # long enough to still run when the second starts
    assert wait_for_blocks(path, 1, first)
    second = subprocess.run(cache_cmd(tiny_checkpoint, path, n=4000), capture_output=True, text=True, env=env)
    assert second.returncode == 1 and "being written by another process" in second.stderr
    assert second.stderr.count("\n") == 1
    assert first.wait(timeout=120) == 0
    assert Store.open(path).is_complete() and Store.open(path).is_complete(schema.RANDOM_INIT_GROUP)


def test_disk_space_is_checked_before_writing(tmp_path, tiny_checkpoint, host, monkeypatch):
    import shutil
    from collections import namedtuple

    from probekit.cache.run import CacheRequest, run_cache
    from probekit.errors import StoreError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(StoreError, match=r"needs about .* GiB \(uncompressed\) but only .* GiB is free"):
        run_cache(host, CacheRequest(model=f"toy:{tiny_checkpoint}", out=str(tmp_path / "big.zarr"), n_samples=50))
    assert not (tmp_path / "big.zarr").exists()
