"""The one task-defaulting rule: a model that records the task it was trained on (the ``task``
capability, e.g. a toy checkpoint) supplies the task when none is named, and its parameters
are the defaults when the named task is that task; parameters given explicitly win."""

from __future__ import annotations

from dataclasses import dataclass

from probekit.errors import UnknownNameError, UsageError

#: the message when no task is named and the model records none (callers may word their own)
NO_TASK = "--task is needed for models that record no task"
#: the message when --param is given without --task for a model that records no task
PARAM_NEEDS_TASK = "--param needs --task for models that record no task"


@dataclass(frozen=True)
class ResolvedTask:
    """``name`` and class of the task, ``params``: the recorded parameters (when the task is the
    recorded one) updated with ``given``, the parameters passed explicitly."""

    name: str
    cls: type
    params: dict
    given: dict

    def build(self):
        """An instance of the task with :attr:`params`."""
        return self.cls(**self.params)


def recorded_task(host, model) -> tuple[str, dict] | None:
    """``(task name, parameters)`` that ``model`` (a loaded adapter, or a model spec such as
    ``toy:store/models/demo``, read without loading weights) records; None if it records none."""
    if isinstance(model, str):
        from probekit.models.adapters import parse_spec

        scheme, rest = parse_spec(model)
        try:
            adapter_cls = host.models.get(scheme)
        except UnknownNameError:
            return None
        return adapter_cls.recorded_task(rest) if _has_task(adapter_cls) else None
    return model.trained_task() if _has_task(model) else None


def resolve_task(host, model, task: str | None = None, params: dict | list[str] | None = None, *,
                 missing: str | None = NO_TASK) -> ResolvedTask | None:
    """The task to run ``model`` on: ``task``, or the one ``model`` records (see
    :func:`recorded_task`). ``params`` is a dict, or ``["key=value", ...]`` strings parsed against
    the resolved task's ``Params``. When there is no task to use, raise ``UsageError(missing)``,
    or return None if ``missing`` is None."""
    from probekit.tasks import parse_params

    recorded = recorded_task(host, model)
    name = task or (recorded[0] if recorded else None)
    if name is None:
        if missing is None:
            return None
        raise UsageError(missing)
    cls = host.tasks.get(name)
    given = parse_params(cls.Params, params) if isinstance(params, list) else dict(params or {})
    base = dict(recorded[1]) if recorded and recorded[0] == name else {}
    return ResolvedTask(name, cls, {**base, **given}, given)


def _has_task(adapter) -> bool:
    from probekit.models.capabilities import has

    return has(adapter, "task")
