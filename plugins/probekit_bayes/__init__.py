"""probekit plugin: Bayesian updating in context.

Registers the tasks ``coin``, ``coin-finite``, ``markov`` (exact posteriors) and
``affine-prompts`` (the LLM "(x, 2x+3)" experiment) and the hypothesis ``bayes``.
It uses only probekit's public API and registers through the ``probekit``
entry-point group, exactly as a third-party plugin would.
"""

from probekit import hookimpl

from probekit_bayes.hypothesis import BayesHypothesis
from probekit_bayes.tasks import AffinePromptsTask, CoinFiniteTask, CoinTask, MarkovTask

__all__ = ["AffinePromptsTask", "BayesHypothesis", "CoinFiniteTask", "CoinTask", "MarkovTask"]


@hookimpl
def probekit_register_tasks(register):
    register("coin", CoinTask)
    register("coin-finite", CoinFiniteTask)
    register("markov", MarkovTask)
    register("affine-prompts", AffinePromptsTask)


@hookimpl
def probekit_register_hypotheses(register):
    register("bayes", BayesHypothesis)
