"""The store: a zarr v3 group read by xarray. ``schema`` names its layout, ``zarr_store.Store``
opens, creates, locks and writes it, ``integrity`` checks every chunk of it."""

from probekit.store.zarr_store import Store

__all__ = ["Store"]
