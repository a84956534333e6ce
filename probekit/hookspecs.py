"""Deprecated import path: moved to ``probekit.plugin.hookspecs`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.hookspecs", "probekit.plugin.hookspecs")
