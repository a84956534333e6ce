"""Deprecated import path: moved to ``probekit.targets.hypothesis`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.hypotheses", "probekit.targets.hypothesis")
