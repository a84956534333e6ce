"""Shared fixtures: a tiny trained toy model and a store cached from it (built once per session)."""

from __future__ import annotations

import os
from importlib import metadata

import pytest

from probekit.plugin.host import ENTRY_POINT_GROUP, ENV_PIN, PluginHost


def _builtin_plugins() -> list[str]:
    """Entry points of probekit's own distribution (rls, gd, ...): not third-party ones."""
    own = "probekit-lab"
    return sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
                  if ep.dist is not None and ep.dist.metadata["name"].lower().replace("_", "-") == own)


# The suite sees the built-in plugins only, so an installed third-party plugin (CI installs
# docs/examples/probekit-example-plugin) cannot change the registries it asserts on.
# Subprocesses inherit the pin; a pin set by the caller is kept.
os.environ.setdefault(ENV_PIN, ",".join(_builtin_plugins()))

TINY_TASK = {"dim": 3, "length": 10}


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def host() -> PluginHost:
    return PluginHost.default(pin=["rls"])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, host):
    from probekit.models.toy.train import TrainSettings, train
    from probekit.models.toy.presets import build_config

    task = host.tasks.get("lds")(**TINY_TASK)
    config = build_config("softmax", task.io, n_layers=2, d_model=16, n_heads=2)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    return train(task, config, TrainSettings(steps=60, batch_size=32, seed=0), out)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """The tiny GPT-2 and Llama of ``support/hf_models.py``, built and saved once per session:
    kind -> (saved directory, the model object that was saved). Tests read them, never write."""
    pytest.importorskip("transformers")
    from support.hf_models import build

    root = tmp_path_factory.mktemp("hf")
    return {kind: (root / kind, build(kind, root / kind)) for kind in ("gpt2", "llama")}


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, host, tiny_checkpoint):
    from probekit.cache.run import CacheRequest, run_cache

    out = tmp_path_factory.mktemp("stores") / "tiny.zarr"
    req = CacheRequest(model=f"toy:{tiny_checkpoint}", out=str(out), n_samples=120, seed=5, random_init=True,
                       batch_size=50)
    return run_cache(host, req).path
