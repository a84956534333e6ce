"""probekit plugin: in-context estimation of a hidden Gaussian mean.

Registers the task ``gaussian-mean`` and the hypothesis ``running-mean``, through the
``probekit`` entry-point group (``pyproject.toml``).
"""

from probekit import hookimpl
from probekit_example.mean import GaussianMean, RunningMean

__all__ = ["GaussianMean", "RunningMean"]


@hookimpl
def probekit_register_tasks(register):
    register("gaussian-mean", GaussianMean)


@hookimpl
def probekit_register_hypotheses(register):
    register("running-mean", RunningMean)
