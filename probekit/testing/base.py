"""The machinery of the conformance suite: named checks, running them, and parametrising pytest.

A *check* is a small function with one job and a name (``targets_aligned``, ``deterministic``).
The ``yield_*_checks`` generators of :mod:`probekit.testing` yield ``(name, check)`` pairs,
already bound to the object under test: calling ``check()`` runs it and raises
``AssertionError("check 'targets_aligned' failed: hypothesis 'drift': ...")`` naming the check.
Checks share one lazily built case (the loaded model, the computed targets), so running them one
by one costs what running them together does. :func:`run_checks` runs a suite and stops at the
first failure (what ``check_task`` and friends do); :func:`parametrize_with_checks` gives each
check its own pytest id, the way scikit-learn's ``parametrize_with_checks`` does.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from probekit.errors import PluginError, ProbekitError

Check = Callable[[], None]


class CheckFailed(AssertionError):
    """A named check failed: ``check`` is its name, ``subject`` what was checked."""

    def __init__(self, check: str, subject: str, message: str):
        super().__init__(f"check {check!r} failed: {subject}: {message}")
        self.check, self.subject = check, subject


def ensure(cond: Any, message: str) -> None:
    """Fail the running check with ``message`` unless ``cond`` holds."""
    if not cond:
        raise AssertionError(message)


def json_able(obj: Any, label: str) -> None:
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{label} must be JSON-serialisable (it is recorded in the store): {exc}") from None


def raises_probekit_error(func, action: str, *, allow_plugin_error: bool = False) -> ProbekitError:
    """Call ``func``; it must raise a one-line :class:`ProbekitError` (a crash or silence fails)."""
    try:
        func()
    except ProbekitError as exc:
        if isinstance(exc, PluginError) and not allow_plugin_error:
            raise AssertionError(f"{action} crashed instead of refusing clearly: {exc}") from None
        message = str(exc)
        ensure(message and "\n" not in message.strip(), f"{action}: the error must be one line, got {message!r}")
        return exc
    except Exception as exc:  # noqa: BLE001 - the point is to report it
        raise AssertionError(f"{action} must raise a probekit error (probekit.errors), got "
                             f"{type(exc).__name__}: {exc}") from None
    raise AssertionError(f"{action} must raise a probekit error, but nothing was raised")


def assert_same(a: np.ndarray, b: np.ndarray, label: str, rtol: float, atol: float) -> None:
    a, b = np.asarray(a), np.asarray(b)
    ensure(a.shape == b.shape, f"{label}: shapes differ, {a.shape} vs {b.shape}")
    if a.dtype.kind in "biuUSO" or b.dtype.kind in "biuUSO":
        ensure(np.array_equal(a, b), f"{label}: values differ")
    elif not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        worst = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        raise AssertionError(f"{label}: values differ (max abs difference {worst:.3g}; rtol={rtol}, atol={atol})")


def named(name: str, subject: str, label: str, func: Callable[[], Any]) -> Check:
    """``func`` as the check ``name`` of ``subject`` (e.g. ``"hypothesis 'rls'"``): any failure in
    it, an assertion or an unexpected exception, is raised as :class:`CheckFailed` naming both.
    ``label`` is the short subject for test ids (``rls``)."""

    def check() -> None:
        try:
            func()
        except CheckFailed:
            raise
        except AssertionError as exc:
            raise CheckFailed(name, subject, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - a crash inside a check is that check's failure
            raise CheckFailed(name, subject, f"{type(exc).__name__}: {exc}") from exc

    check.__name__ = check.__qualname__ = name
    check.check_name, check.subject, check.label = name, subject, label
    return check


def run_checks(checks: Iterable[tuple[str, Check]]) -> None:
    """Run every check in order; the first failure raises :class:`CheckFailed` naming it."""
    for _name, check in checks:
        check()


def parametrize_with_checks(*suites: Iterable[tuple[str, Check]]):
    """A ``pytest.mark.parametrize("check", ...)`` decorator: one test per check, with the id
    ``<subject>-<check name>``. ::

        @testing.parametrize_with_checks(testing.yield_hypothesis_checks(Drift, task=RandomWalk()))
        def test_drift(check):
            check()
    """
    import pytest

    params = [pytest.param(check, id=f"{getattr(check, 'label', 'check')}-{name}")
              for suite in suites for name, check in suite]
    return pytest.mark.parametrize("check", params)


def check_names(suite: Iterable[tuple[str, Check]]) -> list[str]:
    """The names of a suite's checks, in order (building a suite runs nothing)."""
    return [name for name, _ in suite]


def iter_named(subject: str, label: str, checks: Iterable[tuple[str, Callable[[], Any]]]) -> Iterator[tuple[str, Check]]:
    """Wrap ``(name, func)`` pairs with :func:`named`."""
    for name, func in checks:
        yield name, named(name, subject, label, func)
