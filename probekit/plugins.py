"""Deprecated import path: moved to ``probekit.plugin.host`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.plugins", "probekit.plugin.host")
