"""Deprecated import path: moved to ``probekit.probes.estimators`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.estimators", "probekit.probes.estimators")
