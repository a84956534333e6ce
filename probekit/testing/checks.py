"""Conformance checks for plugin authors: run the same checks as probekit's built-ins.

In the spirit of scikit-learn's ``check_estimator`` / ``parametrize_with_checks``: each kind of
plugin has a module of small named checks (:mod:`~probekit.testing.tasks`,
:mod:`~probekit.testing.hypotheses`, :mod:`~probekit.testing.adapters`,
:mod:`~probekit.testing.stores`), a ``yield_*_checks`` generator of ``(name, check)`` pairs, and
a ``check_*`` function that runs them all; a failure names its check
(``check 'targets_aligned' failed: hypothesis 'drift': ...``). This module gathers them::

    from probekit import testing

    def test_my_task():
        testing.check_task(MyTask, {"dim": 3})

    @testing.parametrize_with_checks(testing.yield_hypothesis_checks(MyHypothesis, task=MyTask(dim=3)))
    def test_my_hypothesis(check):  # one pytest id per check: test_my_hypothesis[my-targets_aligned]
        check()

The checks, in short (docs/plugins.md says more):

* :func:`check_task` — ``name``; a frozen ``Params`` dataclass whose defaults construct;
  unknown parameters refused with :class:`~probekit.errors.UsageError`; ``io`` a
  :class:`~probekit.tasks.ModelIO` matching what ``generate`` returns (dims, sizes,
  dtypes, token ranges, the loss mask); finite values; provenance attributes; the same
  seed gives the same Dataset, another seed another one.
* :func:`check_hypothesis` — ``name`` and ``requires``; ``fitted()`` usable before ``fit``;
  a targets Dataset aligned on ``(sample, pos)`` with a boolean mask per target, ``kind``,
  ``description`` and ``expected_layer`` attributes and finite values where defined;
  deterministic; the store left unchanged; a store lacking a required variable (or any
  store passed as ``unsupported``) refused with a one-line probekit error, not a crash;
  ``fit`` / ``predict`` shapes when it predicts.
* :func:`check_model_adapter` — ``load``; ``sites``, ``d_model``, ``d_out``; every site's
  shape in its store layout; outputs ``[batch, pos, d_out]``; finite; deterministic; the
  same numbers for any subset of sites or of the batch; padding masks (``valid``) zero the
  padded positions and leave the rest unchanged; unknown sites and bad specs refused with
  probekit errors; JSON provenance with the attributes every store needs; random
  initialisation reproducible under its seed; one check per declared capability that has one.
* :func:`assert_store_valid` — ``probekit.store.schema.validate_store`` plus the layout rules of
  ``docs/store-spec.md`` (chunking, dtypes, manifest, the ``random_init`` group, probe results).

Importing this module is light (numpy and probekit's own light modules); torch, zarr and
xarray load inside the checks that need them.
"""

from __future__ import annotations

from probekit.testing.adapters import PROVENANCE_KEYS, check_model_adapter, yield_model_adapter_checks
from probekit.testing.base import CheckFailed, check_names, parametrize_with_checks, run_checks
from probekit.testing.hypotheses import check_hypothesis, yield_hypothesis_checks
from probekit.testing.stores import RESULT_DIMS, assert_store_valid, yield_store_checks
from probekit.testing.tasks import check_task, feeds_models, yield_task_checks

__all__ = ["CheckFailed", "PROVENANCE_KEYS", "RESULT_DIMS", "assert_store_valid", "check_hypothesis",
           "check_model_adapter", "check_names", "check_task", "feeds_models", "parametrize_with_checks",
           "run_checks", "yield_hypothesis_checks", "yield_model_adapter_checks", "yield_store_checks",
           "yield_task_checks"]
