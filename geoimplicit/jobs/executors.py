"""Interchangeable executors for tile jobs: local (the default) and Dask distributed.

A tile job is a picklable, module-level function applied to a small picklable job description (paths and
numbers, not arrays): it reads its own inputs, writes its tile atomically and returns a small result. So
the same job runs in this process, in a thread, or on a Dask worker on another machine that sees the same
file system. The executors only differ in where the calls happen:

- :class:`LocalExecutor` runs GPU jobs in turn in this process (one GPU, one model in memory), while a thread
  pool prepares the next jobs' inputs ahead (``prefetch``), so reading and cropping overlap the compute;
  ``cpu_parallel`` jobs go to forked worker processes, one per core.
- :class:`DaskExecutor` submits every job as a task to a ``distributed`` cluster (a scheduler address, or a
  local cluster of N worker processes), with a ``GPU`` resource annotation when the job needs one and
  retries, so a worker that dies has its tiles run again elsewhere. With ``gpus_per_worker`` a local cluster
  gets one worker per GPU (or per group of GPUs), each pinned to its devices through ``CUDA_VISIBLE_DEVICES``
  set in the worker process before anything initialises CUDA.

Every executor has ``map(fn, jobs, *, prefetch=None, needs_gpu=False, job_progress=None, cancel=None)``,
yielding ``(job, result)``; ``job_progress(job, fraction, message)`` receives progress from inside a job where
the executor can deliver it (in this process: the local executor).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
from typing import Any, Callable, Iterator, Sequence

from geoimplicit.errors import GeoImplicitError, InputError, RunError
from geoimplicit.progress import CancelCallback, check_cancel

log = logging.getLogger(__name__)

__all__ = ["LocalExecutor", "DaskExecutor", "make_executor", "gpu_assignment"]

JobFn = Callable[..., Any]
JobProgress = Callable[[Any, float, str], None]


class LocalExecutor:
    """Jobs on this machine. A job that needs the GPU runs in turn in this process, while ``threads`` threads
    read the next ``lookahead`` jobs' inputs (``prefetch(job)``) ahead. Jobs that say ``cpu_parallel`` (pure
    CPU work without threads of its own, e.g. the raster method's tiles) run in ``processes`` forked worker
    processes (each does ``fn(job, prefetch(job))``; default :func:`geoimplicit.cores.process_workers`, 1: in
    turn here).

    Jobs whose ``device_threads`` is N > 1 (a method whose device work is thread-safe) run up to N at once in
    threads, so that one tile's CPU work (writing it, its index status) overlaps another's device work; results
    still come in job order. ``device_threads`` here overrides what the jobs say.

    ``fn`` then receives ``(job, prefetched)`` when ``prefetch`` is given, else ``job``; and with
    ``job_progress`` also ``progress=`` a callback ``(fraction, message)`` bound to the job (in this process).
    """

    name = "local"

    def __init__(self, lookahead: int | None = None, threads: int | None = None, processes: int | None = None,
                 device_threads: int | None = None):
        from geoimplicit.cores import process_workers, usable_cores

        self.device_threads = device_threads  # None: as the jobs say (``device_threads``, default 1)

        self.threads = max(1, threads if threads is not None else min(4, max(2, usable_cores() // 2)))
        self.lookahead = max(0, lookahead if lookahead is not None else 2 * self.threads)
        self.processes = max(1, processes if processes is not None else process_workers())

    def map(self, fn: JobFn, jobs: Sequence[Any], *, prefetch: Callable[[Any], Any] | None = None,
            needs_gpu: bool = False, job_progress: JobProgress | None = None,
            cancel: CancelCallback | None = None, on_abort: Callable[[], None] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(job, result)`` in job order. ``on_abort()``: called when a job fails or the run is
        interrupted, before waiting for the jobs still running in threads (it releases what they may wait on,
        e.g. the routing behind the tiles)."""
        jobs = list(jobs)
        if (not needs_gpu and self.processes > 1 and len(jobs) > 1 and getattr(jobs[0], "cpu_parallel", False)
                and _can_fork()):
            yield from _in_processes(fn, jobs, prefetch, min(self.processes, len(jobs)), cancel)
            return

        def call(job, *data):
            if job_progress is None:
                return fn(job, *data)
            return fn(job, *data, progress=lambda fraction, message="": job_progress(job, fraction, message))

        if prefetch is None or self.lookahead == 0:
            for job in jobs:
                check_cancel(cancel)
                yield job, (call(job) if prefetch is None else call(job, prefetch(job)))
            return
        in_flight = max(1, int(self.device_threads or getattr(jobs[0], "device_threads", 1)))
        with cf.ThreadPoolExecutor(self.threads, thread_name_prefix="prefetch") as pool:
            pending: dict[int, cf.Future] = {}
            submitted = threading.Lock()  # device threads ask for their inputs concurrently

            started: set[int] = set()

            def loaded(i):
                with submitted:
                    for j in range(i, min(len(jobs), i + 1 + self.lookahead)):
                        if j not in started:
                            started.add(j)
                            pending[j] = pool.submit(prefetch, jobs[j])
                    fut = pending.pop(i)
                return fut.result()

            try:
                if in_flight == 1:
                    for i, job in enumerate(jobs):
                        check_cancel(cancel)
                        yield job, call(job, loaded(i))
                else:
                    yield from _overlapped(jobs, lambda i: call(jobs[i], loaded(i)), in_flight, cancel, on_abort)
            except BaseException:
                _tell(on_abort)
                raise
            finally:
                for fut in pending.values():
                    fut.cancel()

    def close(self) -> None:
        pass


def _overlapped(jobs, run, in_flight: int, cancel, on_abort=None) -> Iterator[tuple[Any, Any]]:
    """``run(i)`` for every job with up to ``in_flight`` of them at once in threads; results in job order.
    Used for device jobs that say ``device_threads`` > 1: one tile's writing overlaps the next one's compute."""
    with cf.ThreadPoolExecutor(in_flight, thread_name_prefix="device") as device:
        running: dict[int, cf.Future] = {}
        try:
            for i, job in enumerate(jobs):
                while len(running) < in_flight and i + len(running) < len(jobs):
                    check_cancel(cancel)
                    k = i + len(running)
                    running[k] = device.submit(run, k)
                yield job, running.pop(i).result()
        except BaseException:
            _tell(on_abort)  # before the pool waits for its threads
            raise
        finally:
            for fut in running.values():
                fut.cancel()


def _tell(callback) -> None:
    if callback is not None:
        callback()


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _in_processes(fn, jobs, prefetch, processes: int, cancel) -> Iterator[tuple[Any, Any]]:
    """``fn(job[, prefetch(job)])`` in forked processes (they inherit the run's method: no reload); in order."""
    from geoimplicit.cores import HeapTrimmed, forked_pool

    task = HeapTrimmed(fn if prefetch is None else _with_prefetch(fn, prefetch))
    with forked_pool(processes) as pool:
        futures = [pool.submit(task, job) for job in jobs]
        try:
            for job, fut in zip(jobs, futures):
                check_cancel(cancel)
                yield job, fut.result()
        finally:
            for fut in futures:
                fut.cancel()


class DaskExecutor:
    """Jobs as tasks on a Dask ``distributed`` cluster.

    Args:
        scheduler: ``tcp://HOST:8786`` of a running scheduler, or None to start a local cluster.
        n_workers: worker processes of the local cluster (ignored with ``scheduler``).
        gpus_per_worker: the ``GPU`` resource each local worker offers (0: jobs need no GPU resource).
        pin_gpus: give each local worker its own ``gpus_per_worker`` devices (``CUDA_VISIBLE_DEVICES``, see
            :func:`gpu_assignment`); without it every worker sees every GPU.
        retries: how often a job is re-run after its worker died or it failed.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, n_workers: int = 2, *, threads_per_worker: int = 1,
                 gpus_per_worker: int = 0, pin_gpus: bool = False, retries: int = 3,
                 memory_limit: str | int | None = "auto"):
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - a dependency
            raise InputError("dask.distributed is not installed", hint="pip install 'dask[distributed]'") from exc
        self.retries = retries
        self._cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc})",
                                 hint="start `dask scheduler` there or check --scheduler") from exc
        else:
            self._cluster = _local_cluster(n_workers, threads_per_worker, gpus_per_worker, pin_gpus, memory_limit)
            self.client = Client(self._cluster)
        self.has_gpu_resource = any(
            "GPU" in (w.get("resources") or {})
            for w in self.client.scheduler_info().get("workers", {}).values()
        )

    def map(self, fn: JobFn, jobs: Sequence[Any], *, prefetch: Callable[[Any], Any] | None = None,
            needs_gpu: bool = False, job_progress: JobProgress | None = None,
            cancel: CancelCallback | None = None, on_abort: Callable[[], None] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(job, result)`` as tasks complete (any order); progress inside a job stays on its worker.
        ``on_abort`` is accepted for the local executor's interface (nothing here waits in this process)."""
        from distributed import as_completed

        del job_progress
        task = fn if prefetch is None else _with_prefetch(fn, prefetch)
        resources = {"GPU": 1} if (needs_gpu and self.has_gpu_resource) else None
        futures = {}
        for job in jobs:
            key = f"tile-{job.tile_id}-{self.client.id[-8:]}"
            futures[self.client.submit(task, job, key=key, resources=resources, retries=self.retries,
                                       pure=False)] = job
        try:
            for fut in as_completed(futures):
                check_cancel(cancel)
                try:
                    result = fut.result()
                except GeoImplicitError:
                    raise
                except Exception as exc:
                    raise RunError(f"tile {futures[fut].tile_id} failed on a Dask worker: {type(exc).__name__}: "
                                   f"{exc}", hint="re-run the same command to resume") from exc
                yield futures[fut], result
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def worker_pids(self) -> list[int]:
        """Process ids of the cluster's workers (for tests and diagnostics)."""
        return [int(pid) for pid in self.client.run(os.getpid).values()]

    def worker_environ(self, name: str) -> dict[str, str | None]:
        """Worker address -> the value of the environment variable ``name`` in that worker's process."""
        return self.client.run(_environ, name)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _environ(name: str) -> str | None:
    return os.environ.get(name)  # read in the worker (os.environ.get itself would pickle the caller's environ)


def gpu_assignment(n_workers: int | None, gpus_per_worker: int, visible: str | None = None,
                   device_count: int | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each local worker: ``gpus_per_worker`` devices each, in order.

    The devices are those this process sees (``visible``: its ``CUDA_VISIBLE_DEVICES``, else ``device_count``
    GPUs 0, 1, ...). ``n_workers`` None: as many workers as the devices fill. With no GPU at all the workers get
    devices 0, 1, ... anyway (a warning says so; their jobs then run on the CPU).
    """
    if gpus_per_worker < 1:
        raise InputError(f"--gpus-per-worker must be at least 1 to pin GPUs, got {gpus_per_worker}")
    if visible is not None:
        ids = [s.strip() for s in visible.split(",") if s.strip()]
    else:
        ids = [str(i) for i in range(_cuda_device_count() if device_count is None else device_count)]
    if n_workers is None:
        n_workers = max(1, len(ids) // gpus_per_worker)
    need = n_workers * gpus_per_worker
    if not ids:
        log.warning("no CUDA GPU is visible: the %d workers are pinned to devices 0-%d anyway and run on the CPU",
                    n_workers, need - 1)
        ids = [str(i) for i in range(need)]
    if len(ids) < need:
        raise InputError(f"{n_workers} workers x {gpus_per_worker} GPU need {need} GPUs, {len(ids)} are visible "
                         f"({','.join(ids)})", hint="use fewer --dask-workers or --gpus-per-worker")
    return [",".join(ids[i * gpus_per_worker:(i + 1) * gpus_per_worker]) for i in range(n_workers)]


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return torch.cuda.device_count()


def _local_cluster(n_workers, threads_per_worker, gpus_per_worker, pin_gpus, memory_limit):
    """A LocalCluster of worker processes; pinned: one Nanny per GPU group with its own environment."""
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    resources = {"GPU": gpus_per_worker} if gpus_per_worker else None
    if not pin_gpus:
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address=None, resources=resources, memory_limit=memory_limit)
    devices = gpu_assignment(n_workers, gpus_per_worker, os.environ.get("CUDA_VISIBLE_DEVICES"))
    cpu_threads = str(max(1, (os.cpu_count() or 1) // len(devices)))  # the rest of the cores, shared out
    workers = {
        f"gpu{d.replace(',', '-')}": {"cls": Nanny, "options": {
            "nthreads": threads_per_worker, "resources": resources, "memory_limit": memory_limit, "host": "127.0.0.1",
            "env": {"CUDA_VISIBLE_DEVICES": d, "OMP_NUM_THREADS": cpu_threads, "MKL_NUM_THREADS": cpu_threads}}}
        for d in devices
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler)


class _with_prefetch:
    """``fn(job, prefetch(job))`` as one picklable callable (the worker does both)."""

    def __init__(self, fn, prefetch):
        self.fn, self.prefetch = fn, prefetch

    def __call__(self, job):
        return self.fn(job, self.prefetch(job))


def make_executor(scheduler: str | None = None, dask_workers: int | None = None, *,
                  gpus_per_worker: int | None = None, needs_gpu: bool = False, **kw):
    """The executor a CLI run asked for: Dask with ``--scheduler``, ``--dask-workers`` or
    ``--gpus-per-worker``, else local.

    ``gpus_per_worker`` given: a local cluster with one worker per that many GPUs, each pinned to its own
    (``dask_workers`` of them, default: as many as the visible GPUs fill). Not given: a ``GPU`` resource of 1
    per worker when ``needs_gpu`` and CUDA is available (the workers share the GPUs).
    """
    if not (scheduler or dask_workers or gpus_per_worker):
        return LocalExecutor()
    if gpus_per_worker:
        if scheduler:
            raise InputError("--gpus-per-worker starts a local cluster; a running --scheduler has its own workers",
                             hint="start each `dask worker` with --resources GPU=1 and its CUDA_VISIBLE_DEVICES")
        n = dask_workers or len(gpu_assignment(None, gpus_per_worker, os.environ.get("CUDA_VISIBLE_DEVICES")))
        return DaskExecutor(None, n_workers=n, gpus_per_worker=gpus_per_worker, pin_gpus=True, **kw)
    gpus = 1 if (needs_gpu and gpus_per_worker is None and _cuda_device_count() > 0) else 0
    return DaskExecutor(scheduler, n_workers=dask_workers or 2, gpus_per_worker=gpus, **kw)
