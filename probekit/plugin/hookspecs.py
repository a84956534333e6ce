"""The plugin contract: every hook a probekit plugin may implement.

A plugin is any module or object with functions decorated by ``probekit.hookimpl``,
found through the ``probekit`` entry-point group (or registered by hand on a plugin
manager from :func:`probekit.plugin.host.get_plugin_manager`). Hooks register by
callback: the host passes a ``register(name, obj)`` function, so it can reject a
name registered twice and say which two plugins clashed.

Every hook below is documented; ``tests/plugin/test_hookspecs.py`` fails if one is not.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("probekit")
hookimpl = pluggy.HookimplMarker("probekit")

Register = Callable[[str, Any], None]


# ---------------------------------------------------------------------------
# Registration: called once when a PluginHost is built
# ---------------------------------------------------------------------------


@hookspec
def probekit_register_tasks(register: Register) -> None:
    """Register task classes that generate model inputs and ground truth.

    Called once per plugin manager, when :class:`probekit.plugin.host.PluginHost`
    builds its task registry.

    :param register: ``register(name, task_class)``. ``task_class`` follows
        :class:`probekit.tasks.Task`: a ``Params`` frozen dataclass, a
        constructor ``task_class(**params)`` and ``generate(n, seed) -> xr.Dataset``.
        Registering a name twice (in any plugin) raises
        :class:`probekit.errors.PluginError` naming both plugins.
    :returns: nothing; results are ignored.
    """


@hookspec
def probekit_register_models(register: Register) -> None:
    """Register model adapters, keyed by the scheme of a model spec.

    Called once per plugin manager. A spec ``"<scheme>:<rest>"`` (e.g.
    ``toy:store/demo/model``) is resolved by the adapter registered as ``scheme``.

    :param register: ``register(scheme, adapter_class)``. ``adapter_class`` follows
        :class:`probekit.models.adapters.ModelAdapter`: ``adapter_class.load(rest,
        random_init=False, device="cpu")`` returns an adapter that runs batches and
        exposes named sites.
    :returns: nothing; results are ignored.
    """


@hookspec
def probekit_register_hypotheses(register: Register) -> None:
    """Register hypotheses: algorithms whose intermediate quantities become probe targets.

    Called once per plugin manager.

    :param register: ``register(name, hypothesis_class)``. ``hypothesis_class``
        subclasses :class:`probekit.Hypothesis`: ``requires`` (variables the store must hold)
        and ``compute(ds) -> list[Target]``; the base class's ``targets(ds)`` turns those into the
        targets Dataset aligned on ``(sample, pos)`` with a boolean mask per target. Optional, for
        ``probekit compare``: ``fit(ds)``, ``predict(inputs)`` and ``rivals()`` (name -> unfitted
        hypothesis: the algorithms the model is also measured against, with paired CIs).
    :returns: nothing; results are ignored.
    """
