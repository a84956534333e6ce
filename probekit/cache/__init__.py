"""Caching: run a model over task inputs and write its activations to a store, block by block."""

from probekit.cache.run import CacheRequest, run_cache

__all__ = ["CacheRequest", "run_cache"]
