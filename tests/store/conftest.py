"""A local S3 server for the object-storage tests: moto's standalone server on 127.0.0.1, started
once per session in a thread and stopped at the end, with dummy credentials (never real ones).
Skips cleanly when moto or s3fs is not installed (``pip install -e ".[test]"`` installs both)."""

import os
import socket
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """``{"endpoint_url", "env", "options"}`` of a running moto S3 server holding an empty bucket
    ``probekit-test``. ``options`` are the storage options that reach it; ``env`` the
    environment a subprocess needs (dummy credentials, no proxy)."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_SESSION_TOKEN": "testing", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir("probekit-test")
    try:
        yield {"endpoint_url": endpoint, "env": env, "options": {"endpoint_url": endpoint},
               "bucket": "probekit-test", "fs": fs}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_url(s3_server):
    """A fresh URL prefix in the test bucket (nothing there yet)."""
    return f"s3://{s3_server['bucket']}/{uuid.uuid4().hex[:10]}"
