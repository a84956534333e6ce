"""Name -> object registries filled by plugins through ``register`` callbacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar

from probekit.errors import PluginError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    plugin: str  # name of the plugin that registered it


class Registry(Generic[T]):
    """A mapping of names to objects that refuses duplicates and names the choices.

    >>> r = Registry("task")
    >>> r.add("lds", object, plugin="probekit_rls")
    >>> r.get("lsd")
    Traceback (most recent call last):
    ...
    probekit.errors.UnknownNameError: unknown task 'lsd'; choose from: lds
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, *, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} with an invalid name {name!r}")
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}"
            )
        self._entries[name] = Entry(name, obj, plugin)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(e.name for e in self._entries.values() if e.plugin == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def make_register(registry: Registry[Any], plugin: str):
    """The ``register`` callback handed to one plugin's hook: records who registered what."""

    def register(name: str, obj: Any) -> None:
        registry.add(name, obj, plugin=plugin)

    register.__doc__ = f"Register a {registry.kind} under a unique name."
    return register


def construct(kind: str, name: str, cls: type, options: dict) -> Any:
    """``cls(**options)``, with unknown option names answered by the list of accepted ones."""
    import inspect

    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        from probekit.errors import UsageError

        raise UsageError(
            f"{kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(accepted) or '(none)'}"
        )
    return cls(**options)
