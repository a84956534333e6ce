"""Task ``gaussian-mean`` and hypothesis ``running-mean``.

Each sequence has a hidden mean mu ~ N(0, prior_std^2 I). The model sees x_t = mu +
noise_std * eps_t and is trained to predict y_t = x_{t+1}. The best prediction at position t
is the posterior mean of mu given x_0..x_t, sum(x) / (t + 1 + r) with r = noise_std^2 /
prior_std^2: the running mean, shrunk towards the prior mean 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probekit import Hypothesis, ModelIO, Target, Task, UsageError


@dataclass(frozen=True)
class GaussianMeanParams:
    dim: int = 2  # dimension of mu and of each observation
    length: int = 12  # positions per sequence
    prior_std: float = 1.0  # mu ~ N(0, prior_std^2 I)
    noise_std: float = 1.0  # x_t = mu + noise_std * eps_t

    def __post_init__(self):
        if self.dim < 1 or self.length < 2:
            raise UsageError(f"gaussian-mean needs dim >= 1 and length >= 2, got dim={self.dim}, length={self.length}")
        if self.prior_std <= 0 or self.noise_std <= 0:
            raise UsageError("gaussian-mean needs prior_std > 0 and noise_std > 0")


class GaussianMean(Task):
    """Noisy observations of a hidden mean drawn per sequence; predict the next observation."""

    name = "gaussian-mean"
    Params = GaussianMeanParams

    @property
    def io(self) -> ModelIO:
        p = self.params
        return ModelIO(input_var="x", target_var="y", kind="continuous", d_in=p.dim, d_out=p.dim, seq_len=p.length)

    def generate(self, n: int, seed: int):
        import xarray as xr

        p = self.params
        rng = np.random.default_rng(seed)
        mu = p.prior_std * rng.standard_normal((n, 1, p.dim))
        obs = mu + p.noise_std * rng.standard_normal((n, p.length + 1, p.dim))
        return xr.Dataset(
            {
                "x": (("sample", "pos", "x_dim"), obs[:, :-1].astype(np.float32), {"description": "observation x_t"}),
                "y": (("sample", "pos", "y_dim"), obs[:, 1:].astype(np.float32), {"description": "next observation"}),
                "mu": (("sample", "x_dim"), mu[:, 0].astype(np.float32), {"description": "the hidden mean"}),
            },
            coords={"pos": np.arange(p.length)},
            attrs=self.provenance(seed),
        )


class RunningMean(Hypothesis):
    """The in-context estimate of the hidden mean: running mean and Bayes posterior mean."""

    name = "running-mean"
    description = "in-context estimation of a hidden Gaussian mean (running mean, posterior mean)"
    requires = ("x",)

    def __init__(self, ratio: float | None = None):
        if ratio is not None and ratio < 0:
            raise UsageError(f"running-mean needs ratio >= 0, got {ratio}")
        super().__init__(ratio=ratio)
        self.ratio = ratio

    def shrinkage(self, attrs: dict) -> float:
        """r = noise_std^2 / prior_std^2: the option, else the store's task parameters, else 1."""
        if self.ratio is not None:
            return float(self.ratio)
        params = attrs.get("task_params") or {}
        if attrs.get("task") == GaussianMean.name:
            return float(params["noise_std"]) ** 2 / float(params["prior_std"]) ** 2
        return 1.0

    def compute(self, ds):
        x = np.asarray(ds["x"].values, dtype=np.float64)  # (sample, pos, x_dim)
        n, T, _ = x.shape
        seen = np.arange(1, T + 1)[None, :, None]  # observations x_0..x_t
        total = np.cumsum(x, axis=1)
        everywhere = np.ones((n, T), bool)
        return [
            Target("running_mean", total / seen, everywhere, "mean of x_0..x_t"),
            Target("posterior_mean", total / (seen + self.shrinkage(ds.attrs)), everywhere,
                   "posterior mean of mu given x_0..x_t (the best prediction of x_{t+1})"),
        ]
