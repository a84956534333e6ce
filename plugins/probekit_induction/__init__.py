"""probekit plugin: induction-head copying (Elhage et al. 2021; Olsson et al. 2022).

Registers the tasks ``repeated-tokens`` and ``repeated-segments`` and the hypothesis
``induction``. For LLMs use probekit's ``--text`` prompts (``probekit cache --text``), which
the hypothesis reads the same way. Head scores, the ICL score and ablations are probekit's
core ``probekit heads`` (``probekit.run_heads``, ``probekit.run_dynamics``). It uses only
probekit's public API and is registered through the ``probekit`` entry-point group, exactly
as a third-party plugin would be.
"""

from probekit import hookimpl

from probekit_induction.hypothesis import InductionHypothesis, previous_occurrence
from probekit_induction.tasks import RepeatedSegmentsTask, RepeatedTokensTask

__all__ = ["InductionHypothesis", "RepeatedSegmentsTask", "RepeatedTokensTask", "previous_occurrence"]


@hookimpl
def probekit_register_tasks(register):
    register("repeated-tokens", RepeatedTokensTask)
    register("repeated-segments", RepeatedSegmentsTask)


@hookimpl
def probekit_register_hypotheses(register):
    register("induction", InductionHypothesis)
