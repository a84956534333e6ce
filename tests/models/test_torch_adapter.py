"""The torch: adapter: any nn.Module, sites as module-path patterns."""

import sys
from pathlib import Path

import numpy as np
import pytest

from probekit.cache.run import CacheRequest, run_cache
from probekit.errors import CheckpointError, UnknownNameError, UsageError


SPEC = "torch:support.custom_models:make_model?resid=blocks.*&mlp_out=blocks.*.mlp&emb=embed"


def test_custom_module_caches_every_pattern_site(tmp_path, host):
    import torch

    from support.custom_models import make_model

    with pytest.raises(UsageError, match=r"sites resid \(3\), emb \(1\) have different numbers of layers"):
        run_cache(host, CacheRequest(model=SPEC, task="lds", out=str(tmp_path / "x.zarr"), n_samples=4,
                                     sites=("resid", "emb")))
    assert not (tmp_path / "x.zarr").exists()
    store = run_cache(host, CacheRequest(model=SPEC, task="lds", out=str(tmp_path / "m.zarr"), n_samples=20,
                                         sites=("resid", "mlp_out"), dtype="float32", random_init=True))
    emb = run_cache(host, CacheRequest(model=SPEC, task="lds", out=str(tmp_path / "e.zarr"), n_samples=20,
                                       sites=("emb",), dtype="float32")).dataset()
    ds = store.dataset()
    assert ds.resid.shape == (20, 3, 30, 16) and emb.emb.shape[1] == 1
    model = make_model()
    with torch.no_grad():
        x = torch.tensor(ds.x.values)
        h = model.embed(x)
        np.testing.assert_allclose(emb.emb.values[:, 0], h.numpy(), rtol=1e-5, atol=1e-6)
        for i, block in enumerate(model.blocks):
            mlp = block.mlp(h)
            h = h + mlp
            np.testing.assert_allclose(ds.resid.values[:, i], h.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ds.mlp_out.values[:, i], mlp.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ds.model_out.values, model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert ds.attrs["site_modules"]["resid"] == ["blocks.0", "blocks.1", "blocks.2"]
    rand = store.dataset("random_init")
    assert rand.attrs["model_hash"] != ds.attrs["model_hash"] and rand.resid.shape == ds.resid.shape


def test_bad_torch_specs_are_one_line_errors(host, tmp_path):
    from probekit.models.adapters import load_adapter

    with pytest.raises(UnknownNameError, match=r"unknown module pattern 'layers\.\*'; choose from: blocks, blocks\.\*"):
        load_adapter(host, "torch:support.custom_models:make_model?resid=layers.*")
    with pytest.raises(UsageError, match=r"name the sites to capture.*blocks\.\*\.mlp"):
        load_adapter(host, "torch:support.custom_models:make_model")
    with pytest.raises(CheckpointError, match="not a torch.nn.Module"):
        load_adapter(host, "torch:support.custom_models:not_a_module?x=y")
    with pytest.raises(CheckpointError, match="cannot import no_such_mod:f"):
        load_adapter(host, "torch:no_such_mod:f?x=y")
