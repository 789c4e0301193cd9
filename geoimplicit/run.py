"""Tiled DSM runs: one tile job, the run driver, resumable through the tile index.

Layout of a run's work folder (``workdir``)::

    tiles.gpkg        the tile index (status of every tile; QGIS opens it)
    tiles/<id>.tif    finished tiles (height + filled bands, overlap included)
    points/           the points routed to each tile (read once from the inputs; removed after success)

A run does: check the inputs, build the tile grid over the AOI, route the points to the tiles (once), run the
method on every unfinished tile through an executor (local by default; anything with the
:class:`geoimplicit.executors.LocalExecutor` ``map`` interface, e.g. the Dask one), and mosaic the tiles.
Interrupted at any point, the same command resumes: tiles whose status is ``done``/``empty`` and whose file
exists are not run again. A tile job is a module-level function of a picklable :class:`TileJob`, so it runs
the same in this process or on a Dask worker.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geoimplicit.dsm.method import DsmMethod, RunInputs, TileOutput, get_method
from geoimplicit.errors import AOIError, InputError
from geoimplicit.outputs import check_output, input_fingerprint
from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel
from geoimplicit.tiling.grid import FINISHED, Tile, TileGrid, open_run_index, read_statuses, update_status

log = logging.getLogger(__name__)

__all__ = ["TileJob", "TileResult", "run_tile_job", "run_dsm", "plan_run"]


@dataclass
class TileJob:
    """One tile to compute (picklable)."""

    tile: Tile
    method: str
    options: dict
    inputs: RunInputs
    workdir: str
    run_key: str


@dataclass
class TileResult:
    tile_id: str
    status: str
    seconds: float
    stats: dict = field(default_factory=dict)


_STATE: dict[str, tuple[DsmMethod, Any]] = {}  # run key -> (method, state), once per process


def _method_state(job: TileJob):
    cached = _STATE.get(job.run_key)
    if cached is None:
        method = get_method(job.method, **job.options)
        cached = _STATE[job.run_key] = (method, method.prepare(job.inputs))
    return cached


def tile_path(workdir, tile_id: str) -> Path:
    return Path(workdir) / "tiles" / f"{tile_id}.tif"


def load_tile_inputs(job: TileJob) -> tuple[dict, list]:
    """The tile's points (routed) and ortho crops; what the executor prefetches in a thread."""
    from geoimplicit.tiling.route import load_tile_points

    points = load_tile_points(Path(job.workdir) / "points", job.tile.id)
    ortho = []
    method, _ = _method_state(job)
    if method.needs_ortho and job.inputs.ortho:
        from geoimplicit.io.raster import read_raster

        for path in job.inputs.ortho:
            try:
                ortho.append(read_raster(path, job.tile.bounds, crs=job.inputs.assumed_crs_wkt,
                                         dst_crs=job.inputs.crs_wkt))
            except AOIError:
                log.info("tile %s: %s does not cover it", job.tile.id, path)
    return points, ortho


def run_tile_job(job: TileJob, prefetched: tuple[dict, list] | None = None) -> TileResult:
    """Compute one tile: read its inputs, run the method, write ``tiles/<id>.tif`` atomically, record status.

    A tile with no points is recorded ``empty`` and writes no file (the mosaic leaves it nodata: nothing is
    invented where there is no data).
    """
    from geoimplicit.mosaic import write_tile

    t0 = time.perf_counter()
    index = Path(job.workdir) / "tiles.gpkg"
    try:
        points, ortho = prefetched if prefetched is not None else load_tile_inputs(job)
        n = len(points["x"])
        if n == 0:
            update_status(index, job.tile.id, "empty")
            return TileResult(job.tile.id, "empty", time.perf_counter() - t0, {"points": 0})
        method, state = _method_state(job)
        out: TileOutput = method.run_tile(job.tile, points, ortho, state)
        shape = job.tile.grid.shape
        if out.height.shape != shape or out.valid.shape != shape:
            raise RuntimeError(f"method {job.method} returned {out.height.shape}, expected the tile grid {shape}")
        if not out.valid.any():
            update_status(index, job.tile.id, "empty")
            return TileResult(job.tile.id, "empty", time.perf_counter() - t0, dict(out.stats, points=n))
        write_tile(tile_path(job.workdir, job.tile.id), np.asarray(out.height, np.float32), out.valid, job.tile,
                   filled=out.filled, tags={"method": job.method}, overwrite=True)
        update_status(index, job.tile.id, "done")
        return TileResult(job.tile.id, "done", time.perf_counter() - t0, dict(out.stats, points=n))
    except BaseException as exc:
        try:
            update_status(index, job.tile.id, "failed", f"{type(exc).__name__}: {exc}")
        except Exception:  # the index itself is the problem: keep the original error
            pass
        raise


# ---------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """The checked inputs of a run (built by :func:`plan_run`)."""

    dataset: Any
    aoi: Any
    tilegrid: TileGrid
    method: DsmMethod
    options: dict
    inputs: RunInputs
    workdir: Path
    run_key: str


def plan_run(points, *, resolution: float, aoi=None, bbox=None, bbox_crs=None, crs=None, assume_crs=None,
             ortho: Sequence = (), method: str = "raster", method_options: dict | None = None,
             tile_size: float | None = None, overlap: float | None = None, workdir=None) -> RunPlan:
    """Check the inputs and build the tile grid (reads headers only). See :func:`run_dsm` for the arguments."""
    import shapely

    from geoimplicit.io.crs import crs_name
    from geoimplicit.io.pointcloud import PointCloudDataset
    from geoimplicit.io.vector import read_aoi

    if not resolution or resolution <= 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    dataset = PointCloudDataset(points, crs=crs, assume_crs=assume_crs)
    work_crs = dataset.crs
    if aoi is None and bbox is None:
        area = None
        grid_bounds = dataset.bounds
        snap = True
    else:
        area = read_aoi(aoi, bbox=bbox, bbox_crs=bbox_crs, crs=work_crs)
        grid_bounds = area.geometry.bounds
        snap = aoi is not None or bbox_crs is not None  # an exact bbox keeps its corner
    data_box = shapely.box(*dataset.bounds)
    if area is not None and not area.geometry.intersects(data_box):
        b = ", ".join(f"{v:.2f}" for v in dataset.bounds)
        raise AOIError(f"the area of interest does not overlap the point clouds (data bounds {b})",
                       path=aoi if aoi is not None else "--bbox",
                       hint=f"check the AOI and its CRS (the points are in {crs_name(work_crs)})")
    options = {k: v for k, v in (method_options or {}).items() if v is not None}
    m = get_method(method, **options)
    b = dataset.bounds
    area_xy = max((b[2] - b[0]) * (b[3] - b[1]), resolution * resolution)
    density = dataset.point_count / area_xy
    d_ts, d_ov = m.default_tiling(resolution, density)
    tile_size = d_ts if tile_size is None else float(tile_size)
    overlap = d_ov if overlap is None else float(overlap)
    if overlap < d_ov - 1e-9:
        log.warning("overlap %.3g is less than the %.3g the %s method reaches; tiles may not blend exactly",
                    overlap, d_ov, method)
    geometry = area.geometry if (area is not None and aoi is not None) else grid_bounds
    tilegrid = TileGrid.from_aoi(geometry, tile_size=tile_size, overlap=overlap, resolution=resolution,
                                 crs=work_crs, snap=snap)
    files = [str(f.path) for f in dataset.files]
    ortho = [str(p) for p in (ortho or ())]
    for p in ortho:
        if not Path(p).exists():
            from geoimplicit.errors import InputFileNotFoundError

            raise InputFileNotFoundError("ortho image not found", path=p)
    model_files = list(getattr(m, "model_files", ()))
    run_key = input_fingerprint(files + ortho + model_files,
                                {"method": method, "options": options, **tilegrid.metadata()})
    inputs = RunInputs(points=files, ortho=ortho, crs_wkt=work_crs.to_wkt(), resolution=float(resolution),
                       bounds=tilegrid.grid.bounds, density=float(density), z_range=tuple(dataset.z_range),
                       point_count=int(dataset.point_count), workdir=str(workdir) if workdir else "",
                       assumed_crs_wkt=work_crs.to_wkt() if crs is not None else None)
    return RunPlan(dataset, area, tilegrid, m, options, inputs, Path(workdir) if workdir else None, run_key)


def run_dsm(
    points,
    output,
    *,
    resolution: float,
    aoi=None,
    bbox=None,
    bbox_crs=None,
    crs=None,
    assume_crs=None,
    ortho: Sequence = (),
    method: str = "raster",
    method_options: dict | None = None,
    tile_size: float | None = None,
    overlap: float | None = None,
    workdir=None,
    overwrite: bool = False,
    keep_points: bool = False,
    executor=None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> dict[str, Path]:
    """Make a DSM GeoTIFF (COG) from point clouds, tile by tile, resumable.

    Args:
        points: LAS/LAZ files, folders or globs.
        output: the DSM COG; a ``<stem>_filled.tif`` mask (1 = filled hole) is written beside it.
        resolution: pixel size in CRS units.
        aoi: polygon file (GeoJSON/GPKG/SHP); or ``bbox`` (left, bottom, right, top) in ``bbox_crs`` or the
            working CRS. Neither: the points' extent. A bbox in the working CRS keeps its exact corner;
            otherwise the grid is snapped to multiples of the resolution.
        crs, assume_crs: working CRS; CRS of point files that have none.
        ortho: ortho GeoTIFFs for methods that use them.
        method, method_options: the DSM method (:mod:`geoimplicit.dsm.method`) and its options.
        tile_size, overlap: CRS units (default: the method's).
        workdir: work folder (default ``<output stem>_work`` beside the output); a re-run with the same inputs
            and options resumes there.
        overwrite: replace existing outputs.
        keep_points: keep the routed points after success (they are removed by default).
        executor: an executor with ``map(fn, jobs, prefetch=, needs_gpu=, progress=, cancel=)`` (default:
            :class:`geoimplicit.executors.LocalExecutor`).

    Returns:
        {"dsm": path, "filled": path, "tiles": tile index path}.
    """
    from geoimplicit.mosaic import mosaic

    output = Path(output)
    filled_output = output.with_name(f"{output.stem}_filled{output.suffix or '.tif'}")
    check_output(output, overwrite)
    check_output(filled_output, overwrite)
    workdir = Path(workdir) if workdir else output.with_name(f"{output.stem}_work")
    plan = plan_run(points, resolution=resolution, aoi=aoi, bbox=bbox, bbox_crs=bbox_crs, crs=crs,
                    assume_crs=assume_crs, ortho=ortho, method=method, method_options=method_options,
                    tile_size=tile_size, overlap=overlap, workdir=workdir)
    tg = plan.tilegrid
    index = workdir / "tiles.gpkg"
    tags = {**plan.method.tags(), "inputs": [str(p) for p in plan.inputs.points] + list(plan.inputs.ortho),
            "tile_size": tg.tile_size, "overlap": tg.overlap}
    statuses = open_run_index(workdir, tg, plan.run_key, reset=("tiles", "points"), extra={"tags": tags})
    log.info("%d tiles of %g %s (overlap %g), %d to do", len(tg.tiles), tg.tile_size, plan.dataset.units,
             tg.overlap, sum(statuses.get(t.id) not in FINISHED for t in tg.tiles))

    todo = [t for t in tg.tiles if not _finished(workdir, t.id, statuses.get(t.id))]
    if todo:
        from geoimplicit.tiling.route import route_points

        check_cancel(cancel)
        route_points(plan.dataset, tg.tiles, workdir / "points", fields=plan.method.point_fields,
                     progress=progress, cancel=cancel)
    jobs = [TileJob(t, method, plan.options, plan.inputs, str(workdir), plan.run_key) for t in todo]
    excluded = 0  # points the method left out for their class, to explain an empty DSM
    if jobs:
        if executor is None:
            from geoimplicit.executors import LocalExecutor

            executor = LocalExecutor()
        n_total, n_done = len(tg.tiles), len(tg.tiles) - len(jobs)
        for _, res in executor.map(run_tile_job, jobs, prefetch=load_tile_inputs, needs_gpu=plan.method.needs_gpu,
                                   cancel=cancel):
            n_done += 1
            excluded += int(res.stats.get("excluded_by_class", 0))
            if progress is not None:
                progress(n_done, n_total, "tiles", f"{res.tile_id} {res.status}")
    statuses = read_statuses(index)
    not_done = [t.id for t in tg.tiles if not _finished(workdir, t.id, statuses.get(t.id))]
    if not_done:
        raise RuntimeError(f"tiles not finished: {', '.join(not_done[:5])}; re-run the command to resume")
    tiles = [tile_path(workdir, t.id) for t in tg.tiles if statuses.get(t.id) == "done"]
    if not tiles:
        from geoimplicit.errors import NoDataError

        why = getattr(plan.method, "why_empty", lambda stats: None)({"excluded_by_class": excluded})
        message, hint = why or ("no tile holds points: the DSM would be empty",
                                "check that the AOI/bbox overlaps the point clouds")
        raise NoDataError(message, path=index, hint=hint)
    clip = plan.aoi.geometry if (plan.aoi is not None and aoi is not None) else None
    mosaic(tiles, output, grid=tg.grid, aoi=clip, tags=tags, filled_output=filled_output, overwrite=overwrite,
           progress=progress, cancel=cancel)
    if not keep_points and (workdir / "points").exists():
        shutil.rmtree(workdir / "points", ignore_errors=True)
    return {"dsm": output, "filled": filled_output, "tiles": index}


def _finished(workdir: Path, tile_id: str, status: str | None) -> bool:
    if status == "empty":
        return True
    return status == "done" and tile_path(workdir, tile_id).exists()
