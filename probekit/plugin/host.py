"""Build plugin managers and the registries they fill. Nothing here is global.

``get_plugin_manager()`` adds the hookspecs, registers probekit's own default
plugins and loads the ``probekit`` entry-point group. ``PluginHost`` asks every
plugin to register its tasks, models and hypotheses, and answers lookups by name.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Iterable

import pluggy

from probekit.plugin import hookspecs
from probekit.errors import PluginError, ProbekitWarning
from probekit.plugin.registry import Registry, make_register

ENTRY_POINT_GROUP = "probekit"
ENV_PIN = "PROBEKIT_LOAD_PLUGINS"

# Core modules registered as plugins, exactly like external ones.
DEFAULT_PLUGINS = ("probekit.plugin.builtin",)


def get_plugin_manager(
    *,
    entry_points: bool = True,
    pin: Iterable[str] | None = None,
    plugins: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Return a new plugin manager.

    :param entry_points: load installed plugins from the ``probekit`` entry-point group.
    :param pin: names of entry points to load (default: ``$PROBEKIT_LOAD_PLUGINS``,
        a comma-separated list; unset means all). Core defaults always load.
    :param plugins: extra plugin objects or modules to register (e.g. in tests).

    A plugin whose import fails is skipped with a :class:`ProbekitWarning` naming it.
    """
    pm = pluggy.PluginManager("probekit")
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    if entry_points:
        _load_entry_points(pm, _pinned(pin))
    for plugin in plugins:
        pm.register(plugin)
    return pm


def _pinned(pin: Iterable[str] | None) -> set[str] | None:
    if pin is not None:
        return set(pin)
    raw = os.environ.get(ENV_PIN)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _load_entry_points(pm: pluggy.PluginManager, pinned: set[str] | None) -> None:
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    known = {ep.name for ep in eps}
    if pinned is not None:
        for missing in sorted(pinned - known):
            warnings.warn(
                f"{ENV_PIN} names plugin {missing!r}, which is not installed "
                f"(installed: {', '.join(sorted(known)) or 'none'})",
                ProbekitWarning,
                stacklevel=3,
            )
    for ep in sorted(eps, key=lambda e: e.name):
        if pinned is not None and ep.name not in pinned:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the rest down
            warnings.warn(
                f"probekit plugin {ep.name!r} ({ep.value}) failed to import and is skipped: "
                f"{type(exc).__name__}: {exc}",
                ProbekitWarning,
                stacklevel=3,
            )
            continue
        pm.register(plugin, name=ep.name)


@dataclass
class PluginHost:
    """Registries of tasks, models and hypotheses, filled from one plugin manager."""

    pm: pluggy.PluginManager
    tasks: Registry = field(default_factory=lambda: Registry("task"))
    models: Registry = field(default_factory=lambda: Registry("model scheme"))
    hypotheses: Registry = field(default_factory=lambda: Registry("hypothesis"))

    def __post_init__(self) -> None:
        for hook, registry in (
            ("probekit_register_tasks", self.tasks),
            ("probekit_register_models", self.models),
            ("probekit_register_hypotheses", self.hypotheses),
        ):
            caller = getattr(self.pm.hook, hook)
            for impl in caller.get_hookimpls():
                name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
                try:
                    impl.function(register=make_register(registry, name))
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {name!r} failed in {hook}: {type(exc).__name__}: {exc}"
                    ) from exc

    @classmethod
    def default(cls, **kwargs) -> "PluginHost":
        """A host over ``get_plugin_manager(**kwargs)``."""
        return cls(get_plugin_manager(**kwargs))

    def describe(self) -> list[dict]:
        """One row per plugin: name, version, hooks it implements, what it registered."""
        dists = {ep.name: ep.dist for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        rows = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda x: str(x[0])):
            if plugin is None:
                continue
            dist = dists.get(name)
            hooks = sorted(h.name for h in (self.pm.get_hookcallers(plugin) or []))
            rows.append(
                {
                    "plugin": name,
                    "distribution": f"{dist.metadata['name']} {dist.version}" if dist else "(builtin)",
                    "hooks": hooks,
                    "tasks": self.tasks.by_plugin(name),
                    "models": self.models.by_plugin(name),
                    "hypotheses": self.hypotheses.by_plugin(name),
                }
            )
        return rows
