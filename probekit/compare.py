"""Deprecated import path: moved to ``probekit.lenses.compare`` and (tables, JSON, figures)
``probekit.report.compare`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.compare", "probekit.lenses.compare", "probekit.report.compare")
