"""Interchangeable executors for tile jobs: local (the default) and Dask distributed.

A tile job is a picklable, module-level function applied to a small picklable job description (paths and
numbers, not arrays): it reads its own inputs, writes its tile atomically and returns a small result. So
the same job runs in this process, in a thread, or on a Dask worker on another machine that sees the same
file system. The executors only differ in where the calls happen:

- :class:`LocalExecutor` runs jobs in turn in this process (one GPU, one model in memory), while a thread
  pool prepares the next jobs' inputs ahead (``prefetch``), so reading and cropping overlap the compute.
- :class:`DaskExecutor` submits every job as a task to a ``distributed`` cluster (a scheduler address, or a
  local cluster of N worker processes), with a ``GPU`` resource annotation when the job needs one and
  retries, so a worker that dies has its tiles run again elsewhere.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from typing import Any, Callable, Iterable, Iterator, Sequence

from geoimplicit.errors import GeoImplicitError, InputError
from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel

log = logging.getLogger(__name__)

JobFn = Callable[[Any], Any]


class LocalExecutor:
    """Jobs in turn in this process; ``prefetch(job)`` for the next ``lookahead`` jobs runs in threads.

    ``fn`` then receives ``(job, prefetched)`` when ``prefetch`` is given, else ``job``.
    """

    name = "local"

    def __init__(self, lookahead: int = 2, threads: int = 2):
        self.lookahead = max(0, lookahead)
        self.threads = max(1, threads)

    def map(
        self,
        fn: JobFn,
        jobs: Sequence[Any],
        *,
        prefetch: Callable[[Any], Any] | None = None,
        needs_gpu: bool = False,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(job, result)`` in job order."""
        del needs_gpu  # one process: the job picks its device itself
        jobs = list(jobs)
        if prefetch is None or self.lookahead == 0:
            for i, job in enumerate(jobs):
                check_cancel(cancel)
                yield job, (fn(job) if prefetch is None else fn(job, prefetch(job)))
            return
        with cf.ThreadPoolExecutor(self.threads, thread_name_prefix="prefetch") as pool:
            pending: dict[int, cf.Future] = {}
            for i, job in enumerate(jobs):
                for j in range(i, min(len(jobs), i + 1 + self.lookahead)):
                    if j not in pending:
                        pending[j] = pool.submit(prefetch, jobs[j])
                check_cancel(cancel)
                data = pending.pop(i).result()
                yield job, fn(job, data)
            for fut in pending.values():
                fut.cancel()

    def close(self) -> None:
        pass


class DaskExecutor:
    """Jobs as tasks on a Dask ``distributed`` cluster.

    Args:
        scheduler: ``tcp://HOST:8786`` of a running scheduler, or None to start a local cluster.
        n_workers: worker processes of the local cluster (ignored with ``scheduler``).
        gpus_per_worker: the ``GPU`` resource each local worker offers (0: jobs need no GPU resource).
        retries: how often a job is re-run after its worker died or it failed.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, n_workers: int = 2, *, threads_per_worker: int = 1,
                 gpus_per_worker: int = 0, retries: int = 3, memory_limit: str | int | None = "auto"):
        try:
            from distributed import Client, LocalCluster
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
            resources = {"GPU": gpus_per_worker} if gpus_per_worker else None
            self._cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                dashboard_address=None, resources=resources, memory_limit=memory_limit,
            )
            self.client = Client(self._cluster)
        self.has_gpu_resource = any(
            "GPU" in (w.get("resources") or {})
            for w in self.client.scheduler_info().get("workers", {}).values()
        )

    def map(
        self,
        fn: JobFn,
        jobs: Sequence[Any],
        *,
        prefetch: Callable[[Any], Any] | None = None,
        needs_gpu: bool = False,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(job, result)`` as tasks complete (any order)."""
        from distributed import as_completed

        jobs = list(jobs)
        task = fn if prefetch is None else _with_prefetch(fn, prefetch)
        resources = {"GPU": 1} if (needs_gpu and self.has_gpu_resource) else None
        futures = {}
        for job in jobs:
            key = f"tile-{getattr(job, 'tile_id', id(job))}-{self.client.id[-8:]}"
            fut = self.client.submit(task, job, key=key, resources=resources, retries=self.retries, pure=False)
            futures[fut] = job
        try:
            for fut in as_completed(futures):
                check_cancel(cancel)
                try:
                    result = fut.result()
                except GeoImplicitError:
                    raise
                except Exception as exc:
                    raise GeoImplicitError(f"tile job {futures[fut]!r} failed on a Dask worker: {exc}") from exc
                yield futures[fut], result
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def worker_pids(self) -> list[int]:
        """Process ids of the local cluster's workers (for tests and diagnostics)."""
        return [int(pid) for pid in self.client.run(_getpid).values()]

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _getpid() -> int:
    import os

    return os.getpid()


class _with_prefetch:
    """``fn(job, prefetch(job))`` as one picklable callable (the worker does both)."""

    def __init__(self, fn, prefetch):
        self.fn, self.prefetch = fn, prefetch

    def __call__(self, job):
        return self.fn(job, self.prefetch(job))


def make_executor(scheduler: str | None = None, dask_workers: int | None = None, **kw):
    """The executor a CLI run asked for: Dask with ``--scheduler`` or ``--dask-workers``, else local."""
    if scheduler or dask_workers:
        return DaskExecutor(scheduler, n_workers=dask_workers or 2, **kw)
    return LocalExecutor()


def run_all(executor, fn: JobFn, jobs: Iterable[Any], **kw) -> list[tuple[Any, Any]]:
    """Run every job and return the ``(job, result)`` pairs (a convenience over ``executor.map``)."""
    return list(executor.map(fn, list(jobs), **kw))
