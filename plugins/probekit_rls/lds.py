"""Task ``lds``: sequences from a linear dynamical system with a fresh orthogonal teacher each.

von Oswald et al. 2023 (arXiv 2309.05858): W* random orthogonal per sequence,
s_1 ~ U(-1, 1)^D, s_{t+1} = W* s_t + sigma * eps, clipped to +-clip. The model sees
x_t = s_t and predicts y_t = s_{t+1}; the regression pairs (x_tau, y_tau), tau < t,
are what an in-context least-squares solver would use at position t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probekit import ModelIO, Task, UsageError


@dataclass(frozen=True)
class LDSParams:
    dim: int = 5  # state dimension D
    length: int = 30  # positions T per sequence
    sigma: float = 0.01  # transition noise
    clip: float = 10.0  # states are clipped to +-clip

    def __post_init__(self):
        if self.dim < 1 or self.length < 2:
            raise UsageError(f"lds needs dim >= 1 and length >= 2, got dim={self.dim}, length={self.length}")
        if self.sigma < 0 or self.clip <= 0:
            raise UsageError("lds needs sigma >= 0 and clip > 0")


def random_orthogonal(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` Haar-distributed orthogonal ``dim x dim`` matrices (QR with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, dim, dim)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


class LDSTask(Task):
    """Linear dynamical systems with a random orthogonal teacher per sequence."""

    name = "lds"
    Params = LDSParams

    @property
    def io(self) -> ModelIO:
        p = self.params
        return ModelIO(input_var="x", target_var="y", kind="continuous", d_in=p.dim, d_out=p.dim, seq_len=p.length)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """States ``s[n, T+1, D]`` and teachers ``W[n, D, D]``."""
        p = self.params
        W = random_orthogonal(n, p.dim, rng)
        s = np.empty((n, p.length + 1, p.dim))
        s[:, 0] = rng.uniform(-1.0, 1.0, (n, p.dim))
        for t in range(p.length):
            nxt = np.einsum("nij,nj->ni", W, s[:, t]) + p.sigma * rng.standard_normal((n, p.dim))
            s[:, t + 1] = np.clip(nxt, -p.clip, p.clip)
        return s, W

    def generate(self, n: int, seed: int):
        import xarray as xr

        s, W = self.sample(n, np.random.default_rng(seed))
        return xr.Dataset(
            {
                "x": (("sample", "pos", "x_dim"), s[:, :-1].astype(np.float32), {"description": "state s_t"}),
                "y": (("sample", "pos", "y_dim"), s[:, 1:].astype(np.float32), {"description": "next state s_{t+1}"}),
                "teacher": (("sample", "y_dim", "x_dim"), W.astype(np.float32), {"description": "orthogonal W*"}),
            },
            coords={"pos": np.arange(self.params.length)},
            attrs=self.provenance(seed),
        )
