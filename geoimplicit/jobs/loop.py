"""The tile-job loop: run the unfinished tiles of a run through an executor, write each tile's product, record
every tile's status (``running``, ``done``, ``empty``, ``failed`` with the error) in the run index, report
progress (also from inside a tile) and honour cancel.

A tile job is a small picklable object (paths and numbers) with the :class:`TileJob` interface; the loop's
:func:`execute` runs one, here or on a Dask worker, and is the only place that writes a tile's product or
status. A run (the DSM run, the tiled NVS fit) is a client: it plans its tile grid and its jobs, calls
:func:`run_jobs`, then :func:`finished_tiles` and its product kind's ``merge``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from geoimplicit.errors import CancelledError, GeoImplicitError, NoDataError, RunError
from geoimplicit.jobs.index import FINISHED, INDEX_NAME, read_failures, read_statuses, update_status
from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel

log = logging.getLogger(__name__)

__all__ = ["TileJob", "TileOutcome", "TileResult", "execute", "is_finished", "unfinished", "run_jobs",
           "finished_tiles"]

TileProgress = Callable[[float, str], None]  # (fraction of the tile done, message)


@dataclass
class TileOutcome:
    """What a job computed for its tile: the product ``data`` in its kind's form, or None for an empty tile
    (nothing is written; the merge leaves it nodata)."""

    data: Any = None
    stats: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    message: str = ""


@dataclass
class TileResult:
    tile_id: str
    status: str
    seconds: float
    stats: dict = field(default_factory=dict)


class TileJob(Protocol):
    """One tile to make (picklable). ``tile_id`` keys the tile in the index and its Dask task."""

    tile: Any  # geoimplicit.tiling.grid.Tile
    workdir: str  # the run's folder, holding the index (tiles.gpkg)
    product: Any  # its ProductKind

    @property
    def tile_id(self) -> str: ...

    def load(self) -> Any:
        """Read the tile's inputs (the local executor does it ahead, in a thread); may return None."""

    def compute(self, loaded: Any, progress: TileProgress | None) -> TileOutcome:
        """Make the tile's product from ``loaded``; ``progress(fraction, message)`` reports progress within it."""


class _LoadFailed:
    """A prefetch that raised: re-raised inside :func:`execute`, so that the tile's failure is recorded."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def load_inputs(job: TileJob) -> Any:
    """``job.load()``, run ahead by the local executor; an error is kept for :func:`execute` to record."""
    try:
        return job.load()
    except Exception as exc:
        return _LoadFailed(exc)


_UNSET = object()


def execute(job: TileJob, loaded: Any = _UNSET, progress: TileProgress | None = None) -> TileResult:
    """Run one job: status ``running``, compute, write its product atomically, status ``done`` or ``empty``;
    ``failed`` with the error (``pending`` when interrupted) if it raises."""
    t0 = time.perf_counter()
    index = Path(job.workdir) / INDEX_NAME
    try:
        update_status(index, job.tile_id, "running")
        if isinstance(loaded, _LoadFailed):
            raise loaded.exc
        outcome = job.compute(job.load() if loaded is _UNSET else loaded, progress)
        status = "empty" if outcome.data is None else "done"
        if outcome.data is not None:
            job.product.write(job.workdir, job.tile, outcome.data, outcome.tags)
        update_status(index, job.tile_id, status, outcome.message)
        return TileResult(job.tile_id, status, time.perf_counter() - t0, outcome.stats)
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, CancelledError))
        try:
            update_status(index, job.tile_id, "pending" if interrupted else "failed",
                          "interrupted" if interrupted else f"{type(exc).__name__}: {exc}")
        except Exception:  # the index itself is the problem: keep the original error
            pass
        raise


def is_finished(workdir, tile_id: str, status: str | None, product) -> bool:
    """``empty``, or ``done`` with its product complete."""
    return status == "empty" or (status == "done" and product.finished(workdir, tile_id))


def unfinished(workdir, tiles: Sequence, statuses: dict, product) -> list:
    """The tiles a (resumed) run still has to make."""
    return [t for t in tiles if not is_finished(workdir, t.id, statuses.get(t.id), product)]


def run_jobs(jobs: Sequence[TileJob], *, total: int, executor=None, needs_gpu: bool = False,
             progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
             on_result: Callable[[TileResult], None] | None = None,
             on_abort: Callable[[], None] | None = None) -> list[TileResult]:
    """Run ``jobs`` through ``executor`` (default: local); ``progress(done, total, "tiles", ...)`` counts the
    ``total`` tiles of the run (those finished before included) and moves within a tile where a job reports it;
    ``on_result`` is told each tile's result as it comes (e.g. a streaming merge's ``tile_finished``);
    ``on_abort()`` when a tile fails or the run is interrupted, before the executor waits for the tiles still
    running (the executor's ``map`` takes it)."""
    if not jobs:
        return []
    if executor is None:
        from geoimplicit.jobs.executors import LocalExecutor

        executor = LocalExecutor()
    done = total - len(jobs)

    def within(job, fraction: float, message: str = "") -> None:
        check_cancel(cancel)
        if progress is not None:
            progress(round(done + min(max(float(fraction), 0.0), 1.0), 4), total, "tiles", f"{job.tile_id} {message}")

    results = []
    try:
        abort = {} if on_abort is None else {"on_abort": on_abort}
        for _, res in executor.map(execute, jobs, prefetch=load_inputs, needs_gpu=needs_gpu, job_progress=within,
                                   cancel=cancel, **abort):
            done += 1
            results.append(res)
            if on_result is not None:
                on_result(res)
            if progress is not None:
                progress(done, total, "tiles", f"{res.tile_id} {res.status}")
    except (GeoImplicitError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a method's or a kind's own error: name the tile; the run resumes
        said = f"{type(exc).__name__}: {exc}"[:500]
        failed = [k for k, v in read_failures(Path(jobs[0].workdir) / INDEX_NAME).items() if v == said]
        raise RunError(f"tile {failed[0] if failed else '?'} failed: {said}", hint="re-run the same command to "
                       "resume (the finished tiles are kept; -v shows the traceback)") from exc
    return results


def finished_tiles(workdir, tiles: Sequence, product, *, nothing: str = "every tile is empty: nothing to merge",
                   hint: str | None = None) -> list[str]:
    """The ids of the tiles with a product, once every tile is finished; raises :class:`RunError` naming the
    unfinished ones, :class:`NoDataError` (``nothing``, ``hint``) when every tile is empty."""
    index = Path(workdir) / INDEX_NAME
    statuses = read_statuses(index)
    left = [t.id for t in tiles if not is_finished(workdir, t.id, statuses.get(t.id), product)]
    if left:
        failures = read_failures(index)
        why = "; ".join(f"{k}: {failures[k]}" for k in left[:3] if failures.get(k))
        raise RunError(f"{len(left)} of {len(tiles)} tiles are not finished ({', '.join(left[:5])}"
                       f"{'; ' + why if why else ''})", path=index, hint="re-run the same command to resume")
    done = [t.id for t in tiles if statuses.get(t.id) == "done"]
    if not done:
        raise NoDataError(nothing, path=index, hint=hint)
    log.debug("%d tiles done, %d empty", len(done), sum(statuses.get(t.id) in FINISHED for t in tiles) - len(done))
    return done


def run_and_merge(jobs: Sequence[TileJob], *, workdir, tiles: Sequence, statuses: dict, product, outputs: dict,
                  merge_kw: dict, total: int, executor=None, needs_gpu: bool = False,
                  before_jobs: Callable[[], None] | None = None,
                  nothing: Callable[[list], tuple] = lambda results: ("every tile is empty: nothing to merge", None),
                  progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> dict:
    """The tiled run's common end: ``jobs`` (the unfinished tiles; ``before_jobs()`` first, e.g. routing the
    points) run while the product is merged behind them where the kind can (``start_merge``: each part of the
    output as soon as its tiles are finished), else merged afterwards; the outputs written.

    ``before_jobs`` may return an object with ``join()`` and ``stop()`` (the routing going on behind the jobs):
    joined after them, stopped if they fail, and its error raised in place of theirs.
    ``statuses``: the index's statuses when the run began (the tiles finished before); ``nothing(results)``: the
    message and hint when every tile is empty; ``merge_kw``: the merge's options (tilegrid, aoi, tags, ...).
    """
    stream, behind, results = None, None, []
    try:
        if jobs:
            check_cancel(cancel)
            if before_jobs is not None:  # before the merge's threads: the routing forks its workers
                behind = before_jobs()  # may go on behind the jobs: then an object with join() and stop()
                behind = behind if hasattr(behind, "join") else None
            start = getattr(product, "start_merge", None)
            if start is not None:
                stream = start(workdir, tiles, outputs, **merge_kw)
                left = {job.tile_id for job in jobs}
                for t in tiles:
                    if t.id not in left:
                        stream.finished_before(t.id, statuses.get(t.id) == "done")
            told = None if stream is None else (lambda r: stream.tile_finished(r.tile_id, r.status == "done"))
            results = run_jobs(jobs, total=total, executor=executor, needs_gpu=needs_gpu, progress=progress,
                               cancel=cancel, on_result=told, on_abort=None if behind is None else behind.stop)
            if behind is not None:
                behind, running = None, behind
                running.join()
        check_cancel(cancel)
        message, hint = nothing(results)
        done = finished_tiles(workdir, tiles, product, nothing=message, hint=hint)
        if stream is not None:
            return stream.finish()
        return product.merge(workdir, done, outputs, **merge_kw)
    except BaseException as exc:
        if stream is not None:
            stream.abort()
        if behind is not None:  # the routing's own error explains the tiles that waited for it
            behind.stop()
            behind.join_error(exc)
        raise

