"""One exception hierarchy. The CLI turns any ``ProbekitError`` into a one-line message."""

from __future__ import annotations


class ProbekitError(Exception):
    """Base class of every error probekit raises on purpose."""

    exit_code = 1


class UsageError(ProbekitError):
    """The user asked for something malformed (a bad option value, a bad spec)."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A name (task, model, hypothesis, site, preset...) is not registered."""

    def __init__(self, kind: str, name: str, choices):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        listed = ", ".join(self.choices) if self.choices else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; choose from: {listed}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class PluginError(ProbekitError):
    """A plugin misbehaved: duplicate registration, bad hook result, failed import."""


class StoreError(ProbekitError):
    """A store is missing, malformed, locked, or incompatible with the request."""


class StoreLockedError(StoreError):
    """Another process is writing to the store."""


class DataError(ProbekitError):
    """Arrays have the wrong shape, dtype, or contain NaN/inf."""


class CheckpointError(ProbekitError):
    """A model checkpoint is missing or unreadable."""


class ProbekitWarning(UserWarning):
    """Warnings probekit emits (e.g. a plugin that failed to import)."""
