"""probekit plugin: the mesa-optimizer hypothesis (recursive least squares) on linear dynamical systems.

Registers the task ``lds`` and the hypothesis ``rls``. It uses only probekit's
public API and is registered through the ``probekit`` entry-point group, exactly
as a third-party plugin would be.
"""

from probekit import hookimpl

from probekit_rls.lds import LDSTask
from probekit_rls.rls import RLSHypothesis, neumann_iterates, rls_recursion

__all__ = ["LDSTask", "RLSHypothesis", "neumann_iterates", "rls_recursion"]


@hookimpl
def probekit_register_tasks(register):
    register("lds", LDSTask)


@hookimpl
def probekit_register_hypotheses(register):
    register("rls", RLSHypothesis)
