"""Deprecated import path: moved to ``probekit.lenses.heads.circuits`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.circuits", "probekit.lenses.heads.circuits")
