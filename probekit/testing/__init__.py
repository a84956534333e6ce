"""Conformance checks for plugin authors: run the same checks as probekit's built-in plugins.

``from probekit import testing`` then ``testing.check_task(MyTask)``,
``testing.check_hypothesis(MyHypothesis, task=...)``, ``testing.check_model_adapter(...)`` and
``testing.assert_store_valid(path)``; or one pytest test per named check with
``@testing.parametrize_with_checks(testing.yield_hypothesis_checks(MyHypothesis, task=...))``.
"""

from probekit.testing.checks import (CheckFailed, assert_store_valid, check_hypothesis, check_model_adapter,
                                     check_names, check_task, feeds_models, parametrize_with_checks, run_checks,
                                     yield_hypothesis_checks, yield_model_adapter_checks, yield_store_checks,
                                     yield_task_checks)

__all__ = ["CheckFailed", "assert_store_valid", "check_hypothesis", "check_model_adapter", "check_names",
           "check_task", "feeds_models", "parametrize_with_checks", "run_checks", "yield_hypothesis_checks",
           "yield_model_adapter_checks", "yield_store_checks", "yield_task_checks"]
