"""Deprecated import path: moved to ``probekit.lenses.interventions.pairs`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

__getattr__ = forward("probekit.prompt_pairs", "probekit.lenses.interventions.pairs")
