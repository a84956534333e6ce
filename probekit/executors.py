"""Where block jobs run: in this process (:class:`SerialExecutor`) or on a dask.distributed
cluster (:class:`DaskExecutor`, made by :func:`dask_executor`). Both map a function over jobs
and sum results as they come, so probing gives the same numbers on either; the cache hands its
write units to :meth:`DaskExecutor.as_completed` (:mod:`probekit.cache.distributed`)."""

from __future__ import annotations

from typing import Callable, Iterator

from probekit.errors import UsageError


class SerialExecutor:
    """Runs block jobs in this process. (``place`` is for :class:`DaskExecutor`.)"""

    def map(self, fn: Callable, jobs: list[tuple], place: Callable | None = None) -> list:
        return [fn(*job) for job in jobs]

    def map_reduce(self, fn: Callable, jobs: list[tuple], reduce: Callable, place: Callable | None = None):
        """``reduce`` the results as they come: one block's result is held at a time."""
        total = None
        for job in jobs:
            part = fn(*job)
            total = part if total is None else reduce(total, part)
        return total


class DaskExecutor:
    """Runs block jobs on a dask.distributed cluster; each worker reads its own chunks.
    ``resources`` (e.g. ``{"GPU": 1}``) are what each job holds on its worker while it runs:
    dask runs a job only on a worker started with them (``dask worker --resources GPU=1``)."""

    def __init__(self, client, resources: dict | None = None):
        self.client, self.resources = client, dict(resources or {})

    def map(self, fn: Callable, jobs: list[tuple], place: Callable | None = None) -> list:
        """``fn(*job)`` for each job, in order. ``place(job)`` (any hashable, e.g. the sample block a
        job reads) sends jobs of one place to one worker, so a later pass over the same blocks
        finds them in that worker's read cache (another worker takes a job when that one is gone)."""
        return self.client.gather(self._submit(fn, jobs, place))

    def _submit(self, fn: Callable, jobs: list[tuple], place: Callable | None) -> list:
        workers = sorted(self.client.scheduler_info()["workers"]) if place is not None else []
        futures = []
        for job in jobs:
            kw = {"pure": False, "resources": self.resources or None}
            if workers:
                kw.update(workers=[workers[hash(place(job)) % len(workers)]], allow_other_workers=True)
            futures.append(self.client.submit(fn, *job, **kw))
        return futures

    def map_reduce(self, fn: Callable, jobs: list[tuple], reduce: Callable, place: Callable | None = None):
        """Results are fetched and reduced as they complete (any order: the reduction is a sum)."""
        from dask.distributed import as_completed

        total = None
        for future in as_completed(self._submit(fn, jobs, place)):
            part = future.result()
            future.release()
            total = part if total is None else reduce(total, part)
        return total

    def as_completed(self, fn: Callable, jobs: list[tuple]) -> Iterator:
        """Submit every job at once and yield ``(job, result)`` as each finishes. A job whose worker
        dies is rerun elsewhere by dask (up to ``distributed.scheduler.allowed-failures`` times);
        an error in a job cancels the rest and is raised here."""
        from dask.distributed import as_completed

        futures = dict(zip(self._submit(fn, jobs, None), jobs))
        try:
            for future in as_completed(list(futures)):
                yield futures[future], future.result()
                future.release()
        finally:
            self.client.cancel([f for f in futures if not f.done()])


def dask_executor(scheduler: str | None = None, workers: int = 2, resources: dict | None = None):
    """A context manager yielding a :class:`DaskExecutor` on ``scheduler`` (an address), or on a
    new local cluster of ``workers`` single-threaded processes (each given ``resources``, which
    every job then holds)."""
    import contextlib

    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("the dask path needs dask.distributed: pip install 'probekit-lab[dask]'") from None

    @contextlib.contextmanager
    def _ctx():
        if scheduler:
            with Client(scheduler) as client:
                yield DaskExecutor(client, resources)
        else:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                              resources=resources or None) as cluster, Client(cluster) as client:
                yield DaskExecutor(client, resources)

    return _ctx()
