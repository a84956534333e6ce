"""A block on its way from the model to the store, for adapters that declare ``tensors``.

Each batch's activations arrive as torch tensors where the model ran. They are cast to the
storage dtype there (on a GPU: by the GPU, so only half the bytes of float32 cross the bus) and
copied into one host buffer per variable for the whole block: pinned memory and non-blocking
copies when the model runs on CUDA, so the host queues the next batch while the copy runs; on
the CPU the cast happens during the copy into the buffer (one pass). :meth:`HostBlock.result`
waits for every copy once per block, then checks finiteness (one flag per batch and variable,
reduced where the data is), and hands numpy views of the buffers to the writers.

The bytes are those of the numpy path (``to_store_dtype``): an element-wise cast from the
model's values, which IEEE rounding makes the same whether it goes straight from bfloat16 to
float16 or through float32. A block that is not finite is reported as such (``result`` gives
None) and the caller redoes it on the numpy path, whose messages say what is wrong.
"""

from __future__ import annotations

import numpy as np


class HostBlock:
    """Host buffers of ``n`` samples, filled batch by batch with :meth:`add`."""

    def __init__(self, n: int, *, cast_first: bool | None = None):
        """``cast_first``: cast where the values are, then copy (default: unless they are on the CPU,
        where the copy itself casts; the tests force it to run the device path on a CPU)."""
        self.n, self.cast_first = n, cast_first
        self.buffers: dict = {}
        self.flags: list = []
        self.devices: set = set()

    def add(self, name: str, values, start: int, dtype: str, *, check: bool = True) -> None:
        """Cast ``values`` (a torch tensor ``[batch, ...]``) to ``dtype`` where they are and copy them
        into rows ``start:start + batch`` of ``name``'s buffer (without waiting, from CUDA)."""
        import torch

        target = getattr(torch, dtype)
        buf = self.buffers.get(name)
        if buf is None:  # pinned only for CUDA sources (torch caches pinned blocks between blocks)
            buf = self.buffers[name] = torch.empty((self.n, *values.shape[1:]), dtype=target,
                                                   pin_memory=values.is_cuda)
        part = buf[start : start + values.shape[0]]
        if not (values.device.type != "cpu" if self.cast_first is None else self.cast_first):
            part.copy_(values)  # cast while copying: one pass over the data
            cast = part
        else:
            cast = values.to(target)
            part.copy_(cast, non_blocking=values.is_cuda)
            self.devices.add(values.device)
        if check:
            self.flags.append(torch.isfinite(cast).all())

    def result(self) -> dict[str, np.ndarray] | None:
        """The buffers as numpy arrays once every copy has landed, or None if a checked value is
        NaN or infinite (float16 overflow becomes infinite)."""
        import torch

        for device in self.devices:
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()  # the non-blocking copies have landed
        if self.flags and not bool(torch.stack([f.to("cpu") for f in self.flags]).all()):
            return None
        return {name: buf.numpy() for name, buf in self.buffers.items()}
