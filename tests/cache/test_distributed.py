"""Caching on a dask.distributed cluster (a LocalCluster of 2 worker processes started here):
the store equals a single-process cache of the same request bit for bit, also when a worker is
SIGKILLed mid-run, and a killed client resumes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from probekit.cache.run import CacheRequest, run_cache
from probekit.store import schema
from probekit.store.zarr_store import Store

pytest.importorskip("dask.distributed")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def _without_created(node):
    if isinstance(node, dict):
        return {k: _without_created(v) for k, v in node.items() if k != "created"}
    if isinstance(node, list):
        return [_without_created(v) for v in node]
    return node


def store_files(path) -> dict:
    """Every file of a store by relative path: its bytes, or for zarr.json its parsed metadata
    without the creation time (the one thing two runs of one request differ in)."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            full = os.path.join(d, f)
            rel = os.path.relpath(full, path)
            with open(full, "rb") as fh:
                raw = fh.read()
            out[rel] = _without_created(json.loads(raw)) if f == "zarr.json" else raw
    return out


def assert_same_store(a, b) -> None:
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb), set(fa) ^ set(fb)
    different = [k for k in fa if fa[k] != fb[k]]
    assert not different, different[:5]
    assert any(k.startswith("resid/c") for k in fa)  # chunks were compared, not only metadata


@pytest.fixture(scope="module")
def cluster():
    from probekit.executors import dask_executor

    with dask_executor(workers=2) as executor:
        yield executor


def _blocks_done(path) -> int:
    """Blocks marked so far (0 while the store is being created: with zarr < 3.1.3, whose writes
    are not atomic, a metadata file being written reads as empty)."""
    try:
        return len(Store(path).blocks_done()) if Store(path).exists() else 0
    except Exception:
        return 0


def _req(ckpt, out, **kw):
    kw = {"model": f"toy:{ckpt}", "n_samples": 120, "seed": 3, "batch_size": 8, "block": 8, "random_init": True} | kw
    return CacheRequest(out=str(out), **kw)


def test_a_toy_cache_on_two_workers_equals_one_process_bit_for_bit(tmp_path, host, tiny_checkpoint, cluster):
    local = run_cache(host, _req(tiny_checkpoint, tmp_path / "local.zarr"))
    seen = []
    remote = run_cache(host, _req(tiny_checkpoint, tmp_path / "cluster.zarr"), executor=cluster,
                       on_progress=lambda phase, done, total: seen.append((done, total)))
    assert remote.is_complete() and remote.is_complete(schema.RANDOM_INIT_GROUP)
    assert_same_store(local.path, remote.path)
    assert seen[-1] == (240, 240) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the blocks were computed by the workers, both of them, not here: each loaded the model
    from probekit.cache import distributed

    assert not distributed._LOADED
    loaded = cluster.client.run(lambda: len(__import__("probekit.cache.distributed").cache.distributed._LOADED))
    assert sorted(loaded.values()) == [1, 1]


def test_sharded_and_checkpoint_stores_on_the_cluster_equal_one_process(tmp_path, host, tiny_checkpoint, cluster):
    import shutil

    runs = tmp_path / "run" / "checkpoints"
    runs.mkdir(parents=True)
    for step in (10, 20):  # two copies of one checkpoint stand for a training run's checkpoints
        shutil.copytree(tiny_checkpoint, runs / f"step_{step:06d}")
    kw = {"random_init": False, "n_samples": 64}
    for name, extra in (("sharded", {"shard": 32}), ("ckpts", {"checkpoints": str(runs), "model": None})):
        req = _req(tiny_checkpoint, tmp_path / f"{name}-local.zarr", **kw | extra)
        local = run_cache(host, req)
        req.out = str(tmp_path / f"{name}-cluster.zarr")
        remote = run_cache(host, req, executor=cluster)
        assert_same_store(local.path, remote.path)


def test_a_hf_model_on_the_cluster_equals_one_process(tmp_path, host, hf_models, cluster):
    path, _ = hf_models["llama"]
    prompts = tmp_path / "prompts.jsonl"
    words = "the cat sat on a mat while one dog ran far away".split()
    prompts.write_text("".join(json.dumps({"text": " ".join(words[: 3 + i % 8])}) + "\n" for i in range(40)))
    stores = []
    for name, executor in (("local", None), ("cluster", cluster)):
        req = CacheRequest(model=f"hf:{path}", out=str(tmp_path / f"{name}.zarr"), text=str(prompts), n_samples=40,
                           batch_size=4, block=4, sites=("resid", "attn_pattern"), dtype="float32")
        stores.append(run_cache(host, req, executor=executor))
    assert_same_store(stores[0].path, stores[1].path)


def test_a_worker_killed_mid_run_loses_only_its_block(tmp_path, host, tiny_checkpoint):
    """SIGKILL one worker process while it computes a block: dask reruns the block elsewhere,
    the nanny restarts the worker, and the finished store is bit-identical."""
    from probekit.executors import dask_executor

    n = 400
    local = run_cache(host, _req(tiny_checkpoint, tmp_path / "local.zarr", n_samples=n))
    path = tmp_path / "cluster.zarr"
    with dask_executor(workers=2) as executor:
        client = executor.client
        result: dict = {}

        def run():
            try:
                result["store"] = run_cache(host, _req(tiny_checkpoint, path, n_samples=n), executor=executor)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        victim = None
        deadline = time.time() + 120
        while victim is None and time.time() < deadline and thread.is_alive():
            done = _blocks_done(path)
            busy = {w: ts for w, ts in client.processing().items() if ts}
            if done >= 2 and busy:
                victim = next(iter(busy))
            else:
                time.sleep(0.005)
        assert victim is not None, "the run finished before a worker could be killed; make it longer"
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive() and "error" not in result, result.get("error")
    assert Store(path).blocks_done() == set(range(n // 8))
    assert_same_store(local.path, path)


def _cache_cmd(ckpt, out, *extra):
    return [sys.executable, "-m", "probekit", "cache", "--model", f"toy:{ckpt}", "--out", str(out), "-n", "600",
            "--block", "8", "--batch-size", "8", "--seed", "3", "--threads", "1", "--json", *extra]


def test_the_cli_caches_on_a_local_cluster_and_a_killed_client_resumes(tmp_path, tiny_checkpoint):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref.zarr"
    subprocess.run(_cache_cmd(tiny_checkpoint, ref), check=True, capture_output=True, env=env)
    path = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cache_cmd(tiny_checkpoint, path, "--dask", "--workers", "2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if _blocks_done(path) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the client finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its local cluster's workers
    proc.wait()
    assert not Store(path).is_complete()
    done = subprocess.run(_cache_cmd(tiny_checkpoint, path, "--dask", "--workers", "2"), capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_samples"] == 600
    assert_same_store(ref, path)


@pytest.mark.parametrize("argv, match", [
    (["--worker-resources", "GPU=1"], "needs --dask"),
    (["--dask", "--worker-resources", "GPU"], "NAME=AMOUNT"),
    (["--dask", "--worker-resources", "GPU=0"], "NAME=AMOUNT"),
    (["--dask", "--worker-resources", "GPU=nan"], "NAME=AMOUNT"),
])
def test_bad_worker_resources_are_refused_before_anything_starts(tmp_path, tiny_checkpoint, capsys, argv, match):
    from support.battery import assert_clean_failure

    assert_clean_failure(capsys, _cache_cmd(tiny_checkpoint, tmp_path / "s.zarr", *argv)[3:], 2, tmp_path, match)
