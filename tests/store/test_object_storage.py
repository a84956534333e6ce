"""Stores at object-store URLs, through the real S3 client path (s3fs, botocore) against a local
moto S3 server on 127.0.0.1 (``conftest.s3_server``): cache, resume after SIGKILL, probe, verify,
the writer lock, the nothing-lost rule, and ``xr.open_zarr`` as in a notebook."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from probekit.cache.run import CacheRequest, run_cache
from probekit.errors import StoreLockedError, UsageError
from probekit.store import schema
from probekit.store.zarr_store import Store


def arrays(store: Store) -> dict:
    """Every array of every group: ``path -> numpy values``."""
    root = store.group()
    out = {}

    def walk(g, prefix):
        for name, arr in g.arrays():
            out[prefix + name] = arr[...]
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    walk(root, "")
    return out


def assert_same_arrays(a: Store, b: Store) -> None:
    """Every data array equal bit for bit and in dtype; the manifests equal as sets of finished blocks
    (how its markers are laid out is the manifest's business)."""
    xa, xb = arrays(a), arrays(b)
    assert sorted(xa) == sorted(xb)
    for group in (None, schema.RANDOM_INIT_GROUP):
        if a.has_group(group or "") if group else True:
            assert a.blocks_done(group) == b.blocks_done(group), group
    for name in (n for n in xa if "probekit_manifest" not in n):
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)
        assert xa[name].dtype == xb[name].dtype, name


def request(ckpt, out, options=None, **kw):
    kw = {"n_samples": 40, "seed": 5, "block": 8, "batch_size": 8, "random_init": True} | kw
    return CacheRequest(model=f"toy:{ckpt}", out=str(out), storage_options=options, **kw)


@pytest.fixture(scope="module")
def pair(s3_server, tmp_path_factory, host, tiny_checkpoint):
    """The same cache written to disk and to S3."""
    url = f"s3://{s3_server['bucket']}/pair/run.zarr"
    disk = run_cache(host, request(tiny_checkpoint, tmp_path_factory.mktemp("disk") / "run.zarr"))
    remote = run_cache(host, request(tiny_checkpoint, url, s3_server["options"]))
    return disk, remote


def test_cache_to_s3_equals_cache_to_disk_bit_for_bit(pair, s3_server):
    disk, remote = pair
    assert remote.remote and remote.is_complete() and remote.is_complete(schema.RANDOM_INIT_GROUP)
    assert_same_arrays(disk, remote)
    assert not s3_server["fs"].exists(f"{s3_server['bucket']}/pair/run.zarr.lock")  # released
    assert "secret" not in json.dumps(remote.attrs(), default=str)  # options are never stored


def test_xr_open_zarr_opens_the_url_like_a_notebook(pair, s3_server):
    import xarray as xr

    disk, remote = pair
    ds = xr.open_zarr(remote.path, storage_options=s3_server["options"])  # consolidated metadata
    np.testing.assert_array_equal(ds["resid"].values, disk.dataset()["resid"].values)


def test_probe_from_s3_equals_probe_from_disk(pair, host):
    from probekit.probes.run import ProbeSettings, run_probe

    disk, remote = pair
    settings = ProbeSettings(n_folds=3, n_boot=20, baselines=True)
    a, _ = run_probe(host, disk, "rls", settings, write=False)
    b, key = run_probe(host, remote, "rls", settings)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert remote.results("rls") == [key]  # the results were written into the S3 store


def test_verify_on_s3_finds_a_deleted_chunk_object(s3_server, s3_url, host, tiny_checkpoint):
    from probekit.errors import StoreError
    from probekit.store.integrity import verify_store

    store = run_cache(host, request(tiny_checkpoint, f"{s3_url}/v.zarr", s3_server["options"], random_init=False))
    assert verify_store(store.path, storage_options=s3_server["options"])["status"] == "intact"
    fs = s3_server["fs"]
    fs.rm(f"{s3_server['bucket']}/{s3_url.split('/', 3)[3]}/v.zarr/resid/c/2/1/0/0")
    fs.invalidate_cache()
    report = verify_store(store.path, storage_options=s3_server["options"])
    assert report["status"] == "damaged"
    assert any("resid/c/2/1/0/0" in p or "2/1/0/0" in p for p in report["problems"]), report["problems"]
    with pytest.raises(StoreError, match="missing"):
        Store.open(store.path, s3_server["options"]).check_chunks()


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(s3_server, s3_url, host, tiny_checkpoint,
                                                                    monkeypatch):
    url = f"{s3_url}/l.zarr"
    holder = Store(url, s3_server["options"])
    with holder.lock():
        with pytest.raises(StoreLockedError, match="being written by another process") as err:
            run_cache(host, request(tiny_checkpoint, url, s3_server["options"], random_init=False))
        assert "\n" not in str(err.value)
    fs, key = s3_server["fs"], f"{s3_url[5:]}/l.zarr.lock"
    fresh = {"host": "elsewhere", "pid": 1, "uuid": "x", "heartbeat": time.time()}
    fs.pipe_file(key, json.dumps(fresh).encode())
    with pytest.raises(StoreLockedError):
        with Store(url, s3_server["options"]).lock():
            pass
    monkeypatch.setenv("PROBEKIT_LOCK_TIMEOUT", "5")
    fs.pipe_file(key, json.dumps(fresh | {"heartbeat": time.time() - 60}).encode())  # no heartbeat for 60 s
    store = run_cache(host, request(tiny_checkpoint, url, s3_server["options"], random_init=False))
    assert store.is_complete() and not fs.exists(key)


def test_the_heartbeat_refreshes_the_lock_and_a_taken_over_writer_stops(s3_server, s3_url, monkeypatch):
    monkeypatch.setenv("PROBEKIT_LOCK_TIMEOUT", "0.8")  # beats every 0.2 s
    store, fs = Store(f"{s3_url}/h.zarr", s3_server["options"]), s3_server["fs"]
    key = f"{s3_url[5:]}/h.zarr.lock"
    with store.lock():
        first = json.loads(fs.cat_file(key))["heartbeat"]
        time.sleep(0.8)
        fs.invalidate_cache()
        assert json.loads(fs.cat_file(key))["heartbeat"] > first
        fs.pipe_file(key, json.dumps({"host": "other", "pid": 2, "uuid": "theirs", "heartbeat": time.time()}).encode())
        time.sleep(0.6)
        with pytest.raises(StoreLockedError, match="taken over"):
            store.check_lock()
    assert json.loads(fs.cat_file(key))["uuid"] == "theirs"  # not released: it is not ours


def test_output_rules_on_urls(s3_server, s3_url, host, tiny_checkpoint):
    from probekit import outputs

    fs, opts = s3_server["fs"], s3_server["options"]
    fs.pipe_file(f"{s3_url[5:]}/notes/a.txt", b"hello")
    with pytest.raises(outputs.OutputError, match="holds a prefix holding 1 object"):
        outputs.check_output(f"{s3_url}/notes", outputs.STORE, storage_options=opts)
    store = run_cache(host, request(tiny_checkpoint, f"{s3_url}/s.zarr", opts, random_init=False))
    with pytest.raises(outputs.OutputError, match="inside the zarr store"):
        outputs.check_output(f"{store.path}/resid/x.zarr", outputs.STORE, storage_options=opts)
    with pytest.raises(outputs.UnwritableError, match="cannot write"):
        outputs.check_output("s3://no-such-bucket-probekit/x.zarr", outputs.STORE, storage_options=opts)


def test_overwrite_on_s3_builds_beside_then_copies_in(s3_server, s3_url, host, tiny_checkpoint):
    opts = s3_server["options"]
    url = f"{s3_url}/o.zarr"
    run_cache(host, request(tiny_checkpoint, url, opts, random_init=False))
    new = run_cache(host, request(tiny_checkpoint, url, opts, random_init=False, n_samples=24), overwrite=True)
    assert new.dataset().sizes["sample"] == 24 and new.is_complete()
    fs = s3_server["fs"]
    fs.invalidate_cache()
    assert [p for p in fs.ls(s3_url[5:]) if ".probekit-" in p] == []  # no sibling or marker left


def cache_cmd(ckpt, out, endpoint, n=160):
    return [sys.executable, "-m", "probekit", "cache", "--model", f"toy:{ckpt}", "--out", str(out),
            "-n", str(n), "--block", "8", "--batch-size", "8", "--random-init", "--json",
            "--storage-option", f"endpoint_url={endpoint}"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_then_resume_on_s3_equals_an_uninterrupted_disk_run(s3_server, s3_url, tmp_path, tiny_checkpoint):
    env = dict(os.environ, OMP_NUM_THREADS="1", **s3_server["env"])
    reference = tmp_path / "ref.zarr"
    subprocess.run(cache_cmd(tiny_checkpoint, reference, s3_server["endpoint_url"])[:-2], check=True,
                   capture_output=True, env=env)
    url, opts = f"{s3_url}/k.zarr", s3_server["options"]
    proc = subprocess.Popen(cache_cmd(tiny_checkpoint, url, s3_server["endpoint_url"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    start, killed = time.time(), False
    while time.time() - start < 180 and proc.poll() is None:
        try:
            store = Store(url, opts)
            if store.exists() and len(store.blocks_done()) >= 3:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        except Exception:  # mid-creation
            pass
        time.sleep(0.02)
    proc.wait()
    assert killed, "the cache finished before it could be killed; make it longer"
    store = Store(url, opts)
    assert not (store.is_complete() and store.is_complete(schema.RANDOM_INIT_GROUP))
    done = subprocess.run(cache_cmd(tiny_checkpoint, url, s3_server["endpoint_url"]), capture_output=True,
                          text=True, env=env)  # its lock is taken over: a dead process on this host
    assert done.returncode == 0, done.stderr
    verify = subprocess.run([sys.executable, "-m", "probekit", "verify", url, "--json", "--storage-option",
                             f"endpoint_url={s3_server['endpoint_url']}"], capture_output=True, text=True, env=env)
    assert verify.returncode == 0 and json.loads(verify.stdout)["status"] == "intact", verify.stdout + verify.stderr
    assert_same_arrays(Store.open(reference), Store.open(url, opts))


def test_storage_option_parsing():
    from probekit.cli._common import parse_storage_options

    assert parse_storage_options(None) is None
    assert parse_storage_options(["endpoint_url=http://h:9000", "anon=true", "client_kwargs.region_name=eu",
                                  "profile=lab"]) == {"endpoint_url": "http://h:9000", "anon": True,
                                                      "client_kwargs": {"region_name": "eu"}, "profile": "lab"}
    with pytest.raises(UsageError, match="key=value"):
        parse_storage_options(["anon"])


def test_a_cluster_caches_to_s3_and_probes_from_it_like_one_process_on_disk(pair, s3_server, host, tiny_checkpoint):
    """Workers write their blocks straight to the object store (the client creates it and holds
    the lock); the probe's workers read their chunks from it."""
    pytest.importorskip("dask.distributed")
    from probekit.executors import dask_executor
    from probekit.probes.run import ProbeSettings, run_probe

    disk, _ = pair
    url = f"s3://{s3_server['bucket']}/cluster/run.zarr"
    settings = ProbeSettings(n_boot=0, baselines=False)
    with dask_executor(workers=2) as executor:
        remote = run_cache(host, request(tiny_checkpoint, url, s3_server["options"]), executor=executor)
        from_s3, _ = run_probe(host, remote, "rls", settings, executor=executor, write=False)
    assert_same_arrays(disk, remote)
    assert not s3_server["fs"].exists(f"{s3_server['bucket']}/cluster/run.zarr.lock")
    from_disk, _ = run_probe(host, disk, "rls", settings, write=False)
    np.testing.assert_allclose(from_s3.r2.values, from_disk.r2.values, rtol=0, atol=1e-8)
