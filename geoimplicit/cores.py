"""How many cores this process may use: the worker counts of the run path default from it."""

from __future__ import annotations

import contextlib
import functools
import os


def usable_cores() -> int:
    """``os.cpu_count()``, less where the CPU affinity or a cgroup quota (a container's ``--cpus``) allows fewer."""
    n = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        n = min(n, len(os.sched_getaffinity(0)))
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def thread_workers(cap: int = 8) -> int:
    """Threads for GIL-sharing work (mosaic blocks, GDAL compression): the cores up to ``cap``; 1 on two
    cores or fewer, where they only contended with the main work (measured on a shared 2-core machine)."""
    n = usable_cores()
    return 1 if n <= 2 else min(cap, n)


def process_workers() -> int:
    """Worker processes for CPU work (routing, raster tiles): one per core; 1 (in this process, as before) on
    two cores or fewer, where lazrs' decoder already takes both and two processes did not run faster
    (measured on a shared 2-core machine)."""
    n = usable_cores()
    return 1 if n <= 2 else n


@contextlib.contextmanager
def forked_pool(workers: int):
    """A ``ProcessPoolExecutor`` of ``workers`` forked processes (they inherit the run's state: no reload).

    The parent's objects are frozen (``gc.freeze``) while the pool forks and runs: a worker's full garbage
    collection would otherwise write to every object it inherited, copying the parent's pages into each worker
    (one collection copied 258 MB of a 365 MB parent; frozen, 11 MB). Workers that run more tasks collect more
    often, so without it the copies grew with the area.
    """
    import concurrent.futures as cf
    import gc
    import multiprocessing

    gc.freeze()
    try:
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            yield pool
    finally:
        gc.unfreeze()


def trim_heap() -> None:
    """Give the freed heap back to the system where glibc kept it (``malloc_trim``): a worker otherwise held its
    largest task's memory for the rest of the run. A no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class HeapTrimmed:
    """``fn(arg)``, then the freed heap given back (:func:`trim_heap`): a forked worker runs many tasks and
    would otherwise keep its largest one's memory (16 raster workers held 1.5 GB more at the end of their tiles
    on 4 km², growing with the tiles each ran). Picklable when ``fn`` is."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, arg):
        try:
            return self.fn(arg)
        finally:
            trim_heap()


@functools.lru_cache(maxsize=1)
def _glibc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None
