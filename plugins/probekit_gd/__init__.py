"""probekit plugin: in-context learning by gradient descent (von Oswald et al. 2023; Ahn et al. 2023).

Registers the tasks ``linreg`` and ``linreg-ahn`` and the hypotheses ``gd``, ``gdpp``
and ``pgd``. It uses only probekit's public API and is registered through the
``probekit`` entry-point group, exactly as a third-party plugin would be.
"""

from probekit import hookimpl

from probekit_gd.hypotheses import GDHypothesis, GDPPHypothesis, PGDHypothesis
from probekit_gd.linreg import AhnLinRegTask, LinRegTask

__all__ = ["AhnLinRegTask", "GDHypothesis", "GDPPHypothesis", "LinRegTask", "PGDHypothesis"]


@hookimpl
def probekit_register_tasks(register):
    register("linreg", LinRegTask)
    register("linreg-ahn", AhnLinRegTask)


@hookimpl
def probekit_register_hypotheses(register):
    register("gd", GDHypothesis)
    register("gdpp", GDPPHypothesis)
    register("pgd", PGDHypothesis)
