"""Old import paths that the README or docs once showed keep working for one release, with a
``DeprecationWarning`` naming the new place (the public one: ``from probekit import ...``)."""

from __future__ import annotations

import importlib
import warnings


def forward(old: str, new: str, *also: str):
    """A module ``__getattr__`` for the shim at ``old``: every name comes from module ``new``, or
    from the first of ``also`` that has it (an old module split in two, e.g. compute and report)."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        home = new
        for other in also:
            if not hasattr(importlib.import_module(home), name) and hasattr(importlib.import_module(other), name):
                home = other
        warnings.warn(f"{old} moved: import {name} from probekit (or {home}); {old} is removed in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), name)

    return __getattr__
