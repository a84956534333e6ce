"""Deprecated import path: moved to ``probekit.probes.run`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.probing", "probekit.probes.run")
