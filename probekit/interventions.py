"""Deprecated import path: moved to ``probekit.lenses.interventions.patching`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.interventions", "probekit.lenses.interventions.patching")
