"""The device-side cast (adapters declaring ``tensors``): same bytes as the host path, same errors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probekit.cache import writer
from probekit.cache.run import CacheRequest, run_cache
from probekit.cache.staging import HostBlock
from probekit.errors import DataError
from probekit.models.capabilities import has


@pytest.mark.parametrize("cast_first", [None, True])  # True: the path a CUDA model takes, run on the CPU
@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16])
def test_host_block_gives_the_bytes_of_to_store_dtype(cast_first, source):
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(3, 2, 5, 4, generator=g).mul(300).to(source) for _ in range(3)]
    block = HostBlock(9, cast_first=cast_first)
    for k, part in enumerate(parts):
        block.add("resid", part, 3 * k, "float16")
        block.add("out", part.float(), 3 * k, "float32", check=False)
    got = block.result()
    whole = torch.cat(parts).float().numpy()
    assert got["resid"].tobytes() == writer.to_store_dtype("resid", whole, "float16").tobytes()
    assert got["out"].tobytes() == whole.tobytes() and not block.buffers["resid"].is_pinned()


@pytest.mark.parametrize("cast_first", [None, True])
def test_host_block_flags_overflow_and_nan(cast_first):
    for bad in (7e4, float("nan")):
        block = HostBlock(4, cast_first=cast_first)
        block.add("resid", torch.ones(2, 1, 3, 2), 0, "float16")
        block.add("resid", torch.full((2, 1, 3, 2), bad), 2, "float16")
        assert block.result() is None
    block = HostBlock(2, cast_first=cast_first)
    block.add("out", torch.full((2, 3), 7e4), 0, "float32", check=False)  # outputs are not checked
    assert block.result() is not None


class _Tensors:
    """A stand-in adapter declaring ``tensors``: sample i's activations are i * 1e3 (samples over
    65 overflow float16); counts how often each path ran."""

    capabilities = frozenset({"tensors"})

    def __init__(self):
        self.calls = {"tensors": 0, "numpy": 0}

    def run(self, inputs, sites, *, as_tensors=False):
        self.calls["tensors" if as_tensors else "numpy"] += 1
        x = torch.as_tensor(inputs, dtype=torch.float32)[:, None, :, None].expand(-1, 2, -1, 3) * 1e3
        out = torch.as_tensor(inputs, dtype=torch.float32)[..., None]
        acts = {s: x.clone() for s in sites}
        return (acts, out) if as_tensors else ({s: a.numpy() for s, a in acts.items()}, out.numpy())


def _writer(inputs):
    req = SimpleNamespace(sites=("resid",), batch_size=4, dtype="float16", logits="keep")
    return writer.BlockWriter(None, req, inputs, None, None, {})


def test_a_block_that_overflows_on_the_device_path_reports_as_the_host_path_does():
    adapter = _Tensors()
    assert has(adapter, "tensors")
    inputs = np.tile(np.arange(80, dtype=np.float32)[:, None], (1, 5))
    fill = _writer(inputs)
    first = fill._compute(adapter, 0, 10)
    assert adapter.calls == {"tensors": 3, "numpy": 0}  # 3 batches, no host redo
    assert first["resid"].dtype == np.float16 and first["model_out"].shape == (10, 5, 1)
    with pytest.raises(DataError, match=r"site 'resid' overflows float16 at layer 0.*--dtype float32"):
        fill._compute(adapter, 60, 70)
    assert adapter.calls == {"tensors": 6, "numpy": 3}  # redone on the host for its message


def test_cache_of_a_tensors_adapter_equals_the_host_path(tmp_path, host, tiny_checkpoint, monkeypatch):
    req = {"n_samples": 30, "seed": 2, "batch_size": 7, "block": 10, "sites": ("resid", "attn_out"),
           "logits": "topk:2"}
    device = run_cache(host, CacheRequest(model=f"toy:{tiny_checkpoint}", out=str(tmp_path / "d.zarr"), **req))
    from probekit.models.toy.adapter import ToyAdapter

    monkeypatch.setattr(ToyAdapter, "capabilities", ToyAdapter.capabilities - {"tensors"})
    hosted = run_cache(host, CacheRequest(model=f"toy:{tiny_checkpoint}", out=str(tmp_path / "h.zarr"), **req))
    a, b = device.dataset(), hosted.dataset()
    for name in a.data_vars:
        assert a[name].values.tobytes() == b[name].values.tobytes(), name
