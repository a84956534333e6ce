"""The summary ``probekit cache`` prints: what a store holds and what writing it cost."""

from __future__ import annotations


def cache_summary(store, seconds: float) -> dict:
    """A JSON-able summary of a written store: sites and their shapes, dims, dtype, random-init
    group, checkpoints, bytes on disk and the seconds it took."""
    ds = store.dataset()
    if store.remote:  # an object store: the sizes of its objects, from one listing
        on_disk = sum(int(info.get("size") or 0) for info in store.location.find(detail=True).values())
    else:
        on_disk = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    return {"store": str(store.path), "sites": {s: dict(zip(ds[s].dims, ds[s].shape)) for s in ds.attrs["sites"]},
            "n_samples": ds.sizes["sample"], "dims": {k: int(v) for k, v in ds.sizes.items()},
            "dtype": ds.attrs["dtype"], "random_init": store.has_group("random_init"),
            **({"checkpoints": [int(c) for c in ds["checkpoint"].values]} if "checkpoint" in ds.dims else {}),
            "bytes_on_disk": on_disk, "seconds": round(seconds, 2)}


def cache_summary_line(summary: dict) -> str:
    """One line (rich markup) of :func:`cache_summary`: the sites' shapes, the store, MiB and seconds."""
    shapes = ", ".join(f"{k} ({', '.join(f'{d}={n}' for d, n in v.items())})" for k, v in summary["sites"].items())
    return (f"cached {shapes} into [bold]{summary['store']}[/bold]: "
            f"{summary['bytes_on_disk'] / 2**20:,.1f} MiB on disk in {summary['seconds']} s")
