"""Where block jobs run: in this process (:class:`SerialExecutor`) or on a dask.distributed
cluster (:class:`DaskExecutor`, made by :func:`dask_executor`). Both map a function over jobs
and sum results as they come, so probing gives the same numbers on either; the cache hands its
write units to :meth:`DaskExecutor.as_completed` (:mod:`probekit.cache.distributed`)."""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator

from probekit.errors import UsageError


class SerialExecutor:
    """Runs block jobs in this process. (``place`` is for :class:`DaskExecutor`.)"""

    layers_in_flight = 1

    def job_blocks(self, n: int, chunk: int) -> list[tuple[int, int]]:
        """The ``(start, stop)`` sample ranges of the block jobs over ``n`` samples: one chunk each."""
        return [(s0, min(n, s0 + chunk)) for s0 in range(0, n, chunk)]

    def pieces(self, array, blocks: list[tuple[int, int]], place: Callable | None = None) -> list:
        """``array``'s rows of each ``(start, stop)`` block, for the block jobs."""
        return [array[a:b] for a, b in blocks]

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

    layers_in_flight = 2  # the client cross-validates one layer while the workers accumulate the next

    SHARED_ARRAYS = 8  # arrays whose pieces stay on the cluster (the least recently used is released)
    JOB_CHUNKS = 4  # chunks per block job at most

    def __init__(self, client, resources: dict | None = None):
        import collections
        import threading

        self.client, self.resources = client, dict(resources or {})
        self._pieces: collections.OrderedDict = collections.OrderedDict()
        self._pieces_lock = threading.Lock()

    def job_blocks(self, n: int, chunk: int) -> list[tuple[int, int]]:
        """Block jobs of up to ``JOB_CHUNKS`` whole chunks (fewer jobs: less of the scheduler's and
        the client's time per byte), while every worker still gets at least 4 jobs per layer."""
        n_chunks = -(-n // chunk)
        workers = max(1, len(self.client.scheduler_info()["workers"]))
        per_job = max(1, min(self.JOB_CHUNKS, n_chunks // (4 * workers)))
        step = per_job * chunk
        return [(s0, min(n, s0 + step)) for s0 in range(0, n, step)]

    def pieces(self, array, blocks: list[tuple[int, int]], place: Callable | None = None) -> list:
        """``array``'s rows of each block, sent to the cluster once per array: futures that block
        jobs take as arguments, on the worker ``place(block)`` chooses (as :meth:`map`'s ``place``
        does for the jobs). Every later call with the same array object and blocks (each layer,
        each pass) reuses them instead of sending the rows with every job. Each piece is a small
        task holding its rows, so a worker that dies takes nothing with it: dask recomputes it."""
        key = (id(array), tuple(blocks))
        with self._pieces_lock:
            hit = self._pieces.get(key)
            if hit is not None and hit[0] is array:
                self._pieces.move_to_end(key)
                return hit[1]
        where = self._placement(place)
        futures = [self.client.submit(_rows, array[a:b], pure=False, **where((a, b))) for a, b in blocks]
        with self._pieces_lock:
            self._pieces[key] = (array, futures)  # the array is held: its id is not reused meanwhile
            while len(self._pieces) > self.SHARED_ARRAYS:
                self._pieces.popitem(last=False)  # its futures are released with it
        return futures

    def map(self, fn: Callable, jobs: list[tuple], place: Callable | None = None) -> list:
        """``fn(*job)`` for each job, in order. ``place(job)`` (any hashable, e.g. the sample block a
        job reads) sends jobs of one place to one worker, so a later pass over the same blocks
        finds them in that worker's read cache (another worker takes a job when that one is gone)."""
        return self.client.gather(self._submit(fn, jobs, place))

    def _submit(self, fn: Callable, jobs: list[tuple], place: Callable | None) -> list:
        where = self._placement(place)
        return [self.client.submit(on_worker, fn, *job, pure=False, resources=self.resources or None, **where(job))
                for job in jobs]

    def _placement(self, place: Callable | None) -> Callable[[object], dict]:
        """``item -> submit keywords`` sending items of one ``place(item)`` to one of the current
        workers (another takes them when that one is gone); no keywords without ``place``."""
        workers = sorted(self.client.scheduler_info()["workers"]) if place is not None else []
        if not workers:
            return lambda item: {}
        return lambda item: {"workers": [workers[hash(place(item)) % len(workers)]], "allow_other_workers": True}

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


def _rows(rows):
    return rows


def on_worker(fn: Callable, *args):
    """Run ``fn(*args)`` on a dask worker, its memory allocator set for array work first."""
    restore_malloc_thresholds()
    return fn(*args)


_MALLOC_RESTORED = False


def restore_malloc_thresholds() -> None:
    """dask starts its worker processes with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand freed memory
    back to the OS). Setting it turns off glibc's dynamic mmap threshold, so every array over 128 kB
    is a fresh mmap whose pages fault in on first touch: a probe ran 2x slower in such a worker than
    in a plain process (measured: 44.9 s vs 23.0 s after this call). Once per process: big
    allocations up to 32 MB come from the heap again, and the heap is trimmed only when 2 GB is free."""
    global _MALLOC_RESTORED
    if _MALLOC_RESTORED or not os.environ.get("MALLOC_TRIM_THRESHOLD_") or not sys.platform.startswith("linux"):
        return
    _MALLOC_RESTORED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to restore
        pass


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
