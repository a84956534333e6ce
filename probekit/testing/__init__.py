"""Conformance checks for plugin authors: run the same checks as probekit's built-in plugins.

``from probekit import testing`` then ``testing.check_task(MyTask)``,
``testing.check_hypothesis(MyHypothesis, task=...)``, ``testing.check_model_adapter(...)`` and
``testing.assert_store_valid(path)``.
"""

from probekit.testing.checks import (assert_store_valid, check_hypothesis, check_model_adapter, check_task,
                                     feeds_models)

__all__ = ["assert_store_valid", "check_hypothesis", "check_model_adapter", "check_task", "feeds_models"]
