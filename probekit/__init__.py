"""probekit: test hypotheses about what transformers compute in context.

This module is the public API: ``__all__`` below is the contract, and everything else inside
``probekit`` may move between releases. Plugins, examples and tutorials import from here only::

    from probekit import hookimpl, Task, ModelIO, Hypothesis, Target

Importing this package is cheap (PEP 562): each name is imported from its home module the first
time it is used, so torch, zarr, scikit-learn, xarray and matplotlib load only when a function
that needs them runs. The conformance checks for plugin authors are the subpackage
``probekit.testing`` (``from probekit import testing``).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (the only place that knows where things live)
_HOMES = {
    # --- writing a plugin: the hook marker, tasks, hypotheses, model adapters
    "hookimpl": "probekit.plugin.hookspecs",
    "Task": "probekit.tasks",
    "ModelIO": "probekit.tasks",
    "parse_params": "probekit.tasks",
    "Hypothesis": "probekit.targets.hypothesis",
    "Target": "probekit.targets.hypothesis",
    "ModelAdapter": "probekit.models.adapters",
    "CAPABILITIES": "probekit.models.capabilities",
    "require": "probekit.models.capabilities",
    "ToyConfig": "probekit.models.toy",
    "build_model": "probekit.models.toy",
    "repeated_tokens": "probekit.lenses.heads.circuits",
    # --- errors and warnings (the CLI turns a ProbekitError into one line)
    "ProbekitError": "probekit.errors",
    "UsageError": "probekit.errors",
    "UnknownNameError": "probekit.errors",
    "DataError": "probekit.errors",
    "StoreError": "probekit.errors",
    "StoreLockedError": "probekit.errors",
    "PluginError": "probekit.errors",
    "CheckpointError": "probekit.errors",
    "ProbekitWarning": "probekit.errors",
    # --- the flow: plugins -> model -> cache -> store -> probes
    "PluginHost": "probekit.plugin.host",
    "load_adapter": "probekit.models.adapters",
    "CacheRequest": "probekit.cache",
    "run_cache": "probekit.cache",
    "Store": "probekit.store",
    "verify_store": "probekit.store.integrity",
    "ProbeSettings": "probekit.probes.run",
    "run_probe": "probekit.probes.run",
    "RidgeProbe": "probekit.probes.estimators",
    "LogisticProbe": "probekit.probes.estimators",
    # --- lenses: compute only, each returns an xarray Dataset
    "CompareSettings": "probekit.lenses.compare",
    "run_compare": "probekit.lenses.compare",
    "ICLSettings": "probekit.lenses.icl",
    "icl_curve": "probekit.lenses.icl",
    "PatchSettings": "probekit.lenses.interventions.run",
    "run_patch": "probekit.lenses.interventions.run",
    "TokenPair": "probekit.lenses.interventions.patching",
    "Ablation": "probekit.lenses.interventions.patching",
    "patch_residual": "probekit.lenses.interventions.patching",
    "ablate": "probekit.lenses.interventions.patching",
    "answer_logprobs": "probekit.lenses.interventions.patching",
    "encode_pairs": "probekit.lenses.interventions.pairs",
    "HeadsSettings": "probekit.lenses.heads.dynamics",
    "run_heads": "probekit.lenses.heads.dynamics",
    "run_dynamics": "probekit.lenses.heads.dynamics",
}

# subpackages reachable as attributes (``probekit.testing``) without being imported up front
_SUBPACKAGES = ("testing",)

__all__ = ["__version__", *_HOMES]


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})
