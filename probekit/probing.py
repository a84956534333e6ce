"""Deprecated import path: moved to ``probekit.probes`` (public names: ``from probekit import ...``)."""

from probekit._moved import forward

_MOVED = {  # names that left probekit.probes.run when it was split
    "SerialExecutor": "probekit.executors", "DaskExecutor": "probekit.executors",
    "dask_executor": "probekit.executors", "CheckpointView": "probekit.probes.blocks",
    "permuted_targets": "probekit.probes.baselines", "stratified_permutations": "probekit.probes.baselines",
}


def __getattr__(name: str):
    return forward("probekit.probing", _MOVED.get(name, "probekit.probes.run"))(name)
