"""Old import paths that the README or docs once showed keep working for one release, with a
``DeprecationWarning`` naming the new place (the public one: ``from probekit import ...``)."""

from __future__ import annotations

import importlib
import warnings


def forward(old: str, new: str):
    """A module ``__getattr__`` for the shim at ``old``: every name comes from module ``new``."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(f"{old} moved: import {name} from probekit (or {new}); {old} is removed in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__
