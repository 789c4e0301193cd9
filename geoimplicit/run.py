"""Tiled DSM runs: a client of the job layer (:mod:`geoimplicit.jobs`).

Layout of a run's work folder (``workdir``)::

    tiles.gpkg        the run index (status of every tile; QGIS opens it)
    tiles/<id>.tif    finished tiles (height + filled bands, overlap included)
    points/           the points routed to each tile (read once from the inputs; removed after success)

A run does: check every input (:func:`plan_run`: headers only, nothing written), build the tile grid over the
AOI, route the points to the tiles (once), run the method on every unfinished tile through the job loop
(:func:`geoimplicit.jobs.loop.run_jobs`, with any executor of :mod:`geoimplicit.jobs.executors`), and merge the
tiles with the raster product kind (the feathered mosaic into a COG). Interrupted at any point, the same
command resumes: tiles whose status is ``done``/``empty`` and whose file exists are not run again.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from geoimplicit.dsm.method import DsmMethod, RunInputs, TileOutput, get_method, method_class
from geoimplicit.errors import AOIError, CRSMismatchError, InputError, MissingCRSError, RunError
from geoimplicit.jobs.index import INDEX_NAME, open_run_index, resume_key
from geoimplicit.jobs.loop import TileOutcome, run_and_merge, unfinished
from geoimplicit.jobs.raster import RasterLayer, RasterProduct, dsm_bands
from geoimplicit.outputs import check_output
from geoimplicit.progress import CancelCallback, ProgressCallback
from geoimplicit.tiling.grid import Tile, TileGrid

log = logging.getLogger(__name__)

__all__ = ["DSM_PRODUCT", "TileJob", "run_dsm", "plan_run", "RunPlan", "MAX_PIXELS"]

# the DSM's product: one 2-band tile file, merged into the DSM and its filled mask
DSM_PRODUCT = RasterProduct((RasterLayer("dsm", "tiles/{id}.tif", ("height", "filled"), mask_output="filled"),))
MAX_PIXELS = 2**31  # pixels of one DSM (8.6 GB of float32): beyond, the resolution is surely a mistake

_METHODS: dict[str, DsmMethod] = {}  # run key -> the method of this process (the driver's is the plan's)
_STATES: dict[str, Any] = {}  # run key -> its prepared state, once per process
_LOCK = threading.RLock()  # builds the method and its state once, whichever thread asks first


@dataclass
class TileJob:
    """One DSM tile to compute (picklable: paths and numbers)."""

    tile: Tile
    method: str
    options: dict
    inputs: RunInputs
    workdir: str
    run_key: str
    product: RasterProduct = DSM_PRODUCT

    @property
    def tile_id(self) -> str:
        return self.tile.id

    @property
    def device_threads(self) -> int:
        """Tiles of this method the local executor may run at once on a GPU (its device work is thread-safe);
        one on the CPU, whose cores the tile's own threads already use."""
        n = int(getattr(method_class(self.method), "device_threads", 1))
        if n > 1:
            from geoimplicit.device import resolve_device

            n = n if resolve_device(self.options.get("device") or "auto").type == "cuda" else 1
        return n

    @property
    def cpu_parallel(self) -> bool:
        """Tiles of this method may run in worker processes (CPU work, no threads or device of its own)."""
        return bool(getattr(method_class(self.method), "parallel_tiles", False))

    def load(self, prepare: bool = True) -> tuple[dict, list, Any]:
        """The tile's points (routed), ortho crops and (``prepare``) the method's ``prepare_tile`` work, where
        it has one; what the local executor prefetches in threads, ahead of the device."""
        from geoimplicit.tiling.route import load_tile_points, wait_routed

        route_dir = Path(self.workdir) / "points"
        wait_routed(route_dir, self.tile.id)  # where the routing runs behind the tiles
        points = load_tile_points(route_dir, self.tile.id, fields=self._method().point_fields)
        ortho = []
        if method_class(self.method).needs_ortho:
            from geoimplicit.io.raster import read_raster

            for path in self.inputs.ortho:
                try:
                    ortho.append(read_raster(path, self.tile.context_bounds, crs=self.inputs.assumed_crs_wkt,
                                             dst_crs=self.inputs.crs_wkt))
                except AOIError:
                    log.info("tile %s: %s does not cover it", self.tile.id, path)
        hook = getattr(self._method(), "prepare_tile", None) if prepare else None
        prepared = hook(self.tile, points, ortho, self._state()) if hook and len(points["x"]) else None
        return points, ortho, prepared

    def compute(self, loaded: tuple[dict, list, Any], progress=None) -> TileOutcome:
        """Heights of the tile; a tile without points or without any valid cell is empty (nothing invented)."""
        points, ortho, prepared = loaded
        n = len(points["x"])
        if n == 0:
            return TileOutcome(None, {"points": 0}, message="no points")
        kw = {} if prepared is None else {"prepared": prepared}
        out: TileOutput = self._method().run_tile(self.tile, points, ortho, self._state(), progress=progress, **kw)
        shape = self.tile.grid.shape
        if out.height.shape != shape or out.valid.shape != shape:
            raise RunError(f"the {self.method} method returned a {out.height.shape} tile, expected the tile grid's "
                           f"{shape}", hint="its run_tile must return arrays on tile.grid (overlap included)")
        stats = dict(out.stats, points=n)
        if not out.valid.any():
            return TileOutcome(None, stats, message="no valid cell")
        bands = dsm_bands(np.asarray(out.height, np.float32), out.valid, out.filled)
        return TileOutcome({"dsm": bands}, stats, tags={"method": self.method})

    def _method(self) -> DsmMethod:
        with _LOCK:  # the prefetch threads ask too
            if self.run_key not in _METHODS:  # a worker process: build it once (this reads a model's checkpoint)
                _METHODS[self.run_key] = get_method(self.method, **self.options)
            return _METHODS[self.run_key]

    def _state(self) -> Any:
        method = self._method()
        with _LOCK:
            if self.run_key not in _STATES:
                _STATES[self.run_key] = method.prepare(self.inputs)
            return _STATES[self.run_key]


# ---------------------------------------------------------------------------------------------------------
# the checked inputs
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
    method_name: str = ""  # the registry name the jobs build the method from
    clip: Any = None  # the AOI polygon the mosaic clips to (an AOI file), or None


def plan_run(points, *, resolution: float, aoi=None, bbox=None, bbox_crs=None, crs=None, assume_crs=None,
             ortho: Sequence = (), method: str = "raster", method_options: dict | None = None,
             tile_size: float | None = None, overlap: float | None = None, workdir=None) -> RunPlan:
    """Check every input and build the tile grid (reads headers only, writes nothing). Arguments: :func:`run_dsm`."""
    from geoimplicit.io.crs import linear_units
    from geoimplicit.io.pointcloud import PointCloudDataset

    if aoi is not None and bbox is not None:
        raise InputError("--aoi and --bbox both give the area of interest", hint="give one of them")
    if not resolution or not resolution > 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    dataset = PointCloudDataset(points, crs=crs, assume_crs=assume_crs)
    area, grid_bounds, snap = _area(dataset, aoi, bbox, bbox_crs)
    units, mpu = linear_units(dataset.crs)
    _check_resolution(resolution, grid_bounds, units)
    options = {k: v for k, v in (method_options or {}).items() if v is not None}
    m = get_method(method, **options)
    ortho = _check_orthos(ortho, dataset.crs, grid_bounds, m, assume_crs=crs)
    if hasattr(m, "check_inputs"):
        m.check_inputs(dataset.crs, grid_bounds)
    b = dataset.bounds
    density = dataset.point_count / max((b[2] - b[0]) * (b[3] - b[1]), resolution * resolution)
    tilegrid = _tile_grid(m, dataset, area if aoi is not None else None, grid_bounds, snap, resolution, density,
                          tile_size, overlap, mpu)
    files = [str(f.path) for f in dataset.files]
    model_files = list(getattr(m, "model_files", ()))
    run_key = resume_key(files + ortho + model_files, {"method": method, "options": options}, tilegrid)
    inputs = RunInputs(points=files, ortho=ortho, crs_wkt=dataset.crs.to_wkt(), resolution=float(resolution),
                       bounds=tilegrid.grid.bounds, density=float(density), z_range=tuple(dataset.z_range),
                       point_count=int(dataset.point_count), workdir=str(workdir) if workdir else "",
                       metres_per_unit=float(mpu), assumed_crs_wkt=None if crs is None else dataset.crs.to_wkt())
    _METHODS[run_key] = m  # this process runs its tiles with this method (one checkpoint read per run)
    clip = area.geometry if (area is not None and aoi is not None) else None
    return RunPlan(dataset, area, tilegrid, m, options, inputs, Path(workdir) if workdir else None, run_key,
                   method, clip)


def _area(dataset, aoi, bbox, bbox_crs):
    """(the AOI or None, the grid's bounds, whether to snap them to the resolution)."""
    import shapely

    from geoimplicit.io.crs import crs_name
    from geoimplicit.io.vector import read_aoi

    if aoi is None and bbox is None:
        return None, dataset.bounds, True
    area = read_aoi(aoi, bbox=bbox, bbox_crs=bbox_crs, crs=dataset.crs)
    if not area.geometry.intersects(shapely.box(*dataset.bounds)):
        b = ", ".join(f"{v:.2f}" for v in dataset.bounds)
        raise AOIError(f"the area of interest does not overlap the point clouds (data bounds {b})",
                       path=aoi if aoi is not None else "--bbox",
                       hint=f"check the AOI and its CRS (the points are in {crs_name(dataset.crs)})")
    return area, area.geometry.bounds, aoi is not None or bbox_crs is not None  # an exact bbox keeps its corner


def _check_resolution(resolution: float, bounds, units: str) -> None:
    """A resolution that gives at least one whole pixel across the area, and not more pixels than one DSM holds."""
    width, height = bounds[2] - bounds[0], bounds[3] - bounds[1]
    if resolution > min(width, height):
        raise InputError(f"resolution {resolution:g} {units} is larger than the area ({width:.4g} x {height:.4g} "
                         f"{units})", hint="give a resolution smaller than the area, e.g. 0.5")
    n = (width / resolution) * (height / resolution)
    if n > MAX_PIXELS:
        raise InputError(f"resolution {resolution:g} {units} is too small for an area of {width:.4g} x {height:.4g} "
                         f"{units}: {n:.3g} pixels, more than one DSM can hold ({MAX_PIXELS:.3g})",
                         hint="use a coarser --resolution or a smaller area")


def _check_orthos(paths: Sequence, crs, bounds, method: DsmMethod, *, assume_crs=None) -> list[str]:
    """Every ortho: a raster, in the points' CRS, over the area; with the bands the method needs. An ortho the
    method does not use is named in a warning; one that covers only part of the area too."""
    import shapely

    from geoimplicit.io.crs import crs_equal, crs_name
    from geoimplicit.io.raster import raster_info

    area = shapely.box(*bounds)
    for p in paths:
        info = raster_info(p, crs=assume_crs)
        if info["crs"] is None:
            raise MissingCRSError("the ortho image has no CRS", path=p,
                                  hint="georeference it, pass --crs with its CRS (the points' CRS), or put its WKT in "
                                       f"{Path(p).with_suffix('.prj').name}")
        if not crs_equal(info["crs"], crs):
            raise CRSMismatchError(f"the ortho image is in {crs_name(info['crs'])} but the points are in "
                                   f"{crs_name(crs)}", path=p, hint="reproject it into the points' CRS "
                                   f"(e.g. gdalwarp -t_srs {_srs(crs)} {Path(p).name} ortho_reprojected.tif)")
        need = getattr(method, "ortho_bands", 3)
        if method.needs_ortho and info["count"] < need:
            raise InputError(f"the ortho image has {info['count']} band(s); the {method.name} method needs {need} "
                             "(red, green, blue; or near infrared, red, green)", path=p,
                             hint="give an RGB or IRC ortho")
        covered = shapely.box(*info["bounds"]).intersection(area).area / area.area
        if covered <= 0:
            b = ", ".join(f"{v:.2f}" for v in info["bounds"])
            raise AOIError(f"the ortho image does not overlap the area of the DSM (ortho bounds {b})", path=p,
                           hint="check the ortho and the AOI/bbox")
        if covered < 0.999:
            log.warning("%s covers %.0f %% of the area; the rest is made without it", p, 100 * covered)
    if paths and not method.needs_ortho:
        log.warning("the %s method does not use ortho images: %s ignored", method.name, ", ".join(map(str, paths)))
    return [str(p) for p in paths]


def _srs(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else "points.wkt"


def _tile_grid(m: DsmMethod, dataset, aoi, bounds, snap: bool, resolution: float, density: float, tile_size,
               overlap, mpu: float) -> TileGrid:
    """The tile grid: the method's tiling in CRS units (metres converted) unless given; tiles clipped to the area."""
    d_ts, d_ov = m.default_tiling(resolution, density, mpu)
    units = dataset.units
    if tile_size is None and overlap is None and d_ov > d_ts:
        raise InputError(f"resolution {resolution:g} {units} is too small for the {m.name} method: its tiles of "
                         f"{d_ts:g} {units} (pixels) are smaller than the {d_ov:g} {units} it needs around each "
                         "cell", hint="use a coarser --resolution, or give --tile-size")
    if tile_size is not None and overlap is None and d_ov > tile_size:
        raise InputError(f"--tile-size {tile_size:g} {units} is smaller than the {d_ov:g} {units} the {m.name} "
                         "method needs around each cell (its overlap)",
                         hint=f"use a --tile-size of at least {d_ov:g}, or give --overlap")
    tile_size = d_ts if tile_size is None else float(tile_size)
    overlap = d_ov if overlap is None else float(overlap)
    if overlap < d_ov - 1e-9:
        log.warning("overlap %.3g is less than the %.3g the %s method reaches; tiles may not blend exactly",
                    overlap, d_ov, m.name)
    geometry = aoi.geometry if aoi is not None else bounds
    return TileGrid.from_aoi(geometry, tile_size=tile_size, overlap=overlap, resolution=resolution,
                             crs=dataset.crs, snap=snap)


# ---------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------
def run_dsm(points, output, *, resolution: float, aoi=None, bbox=None, bbox_crs=None, crs=None,
            assume_crs=None, ortho: Sequence = (), method: str = "raster", method_options: dict | None = None,
            tile_size: float | None = None, overlap: float | None = None, workdir=None, overwrite: bool = False,
            keep_points: bool = False, executor=None, progress: ProgressCallback | None = None,
            cancel: CancelCallback | None = None) -> dict[str, Path]:
    """Make a DSM GeoTIFF (COG) from point clouds, tile by tile, resumable.

    Args:
        points: LAS/LAZ files, folders or globs.
        output: the DSM COG; a ``<stem>_filled.tif`` mask (1 = filled hole) is written beside it.
        resolution: pixel size in CRS units.
        aoi: polygon file (GeoJSON/GPKG/SHP); or ``bbox`` (left, bottom, right, top) in ``bbox_crs`` or the
            working CRS (not both). Neither: the points' extent. A bbox in the working CRS keeps its exact
            corner; otherwise the grid is snapped to multiples of the resolution.
        crs, assume_crs: working CRS (also assumed for orthos without one); CRS of point files that have none.
        ortho: ortho GeoTIFFs for methods that use them (checked for every method).
        method, method_options: the DSM method (:mod:`geoimplicit.dsm.method`) and its options.
        tile_size, overlap: CRS units (default: the method's, its metres converted into the CRS's units).
        workdir: work folder (default ``<output stem>_work`` beside the output); a re-run with the same inputs
            and options resumes there. A new work folder is removed again when an input turns out unusable.
        overwrite: replace existing outputs.
        keep_points: keep the routed points after success (they are removed by default).
        executor: any executor of :mod:`geoimplicit.jobs.executors` (default: local).

    Returns:
        {"dsm": path, "filled": path, "tiles": tile index path}.
    """
    output = Path(output)
    outputs = {"dsm": output, "filled": output.with_name(f"{output.stem}_filled{output.suffix or '.tif'}")}
    for path in outputs.values():
        check_output(path, overwrite)
    workdir = Path(workdir) if workdir else output.with_name(f"{output.stem}_work")
    plan = plan_run(points, resolution=resolution, aoi=aoi, bbox=bbox, bbox_crs=bbox_crs, crs=crs,
                    assume_crs=assume_crs, ortho=ortho, method=method, method_options=method_options,
                    tile_size=tile_size, overlap=overlap, workdir=workdir)
    try:
        with _new_work_folder_removed_on_input_error(workdir):
            tg = plan.tilegrid
            tags = {**plan.method.tags(), "inputs": list(plan.inputs.points) + list(plan.inputs.ortho),
                    "tile_size": tg.tile_size, "overlap": tg.overlap}
            _run_tiles_and_merge(plan, tags, outputs, executor, overwrite, progress, cancel)
    finally:
        _METHODS.pop(plan.run_key, None), _STATES.pop(plan.run_key, None)
    if not keep_points and (workdir / "points").exists():
        shutil.rmtree(workdir / "points", ignore_errors=True)
    return {**outputs, "tiles": workdir / INDEX_NAME}


def _run_tiles_and_merge(plan: RunPlan, tags: dict, outputs: dict, executor, overwrite: bool, progress,
                         cancel) -> None:
    """Open the run index (resuming; ``tags`` kept in it for ``geoimplicit mosaic``), route the points to the
    unfinished tiles, run their jobs while the mosaic is written behind them, block by block as the tiles over
    each block finish (:meth:`RasterProduct.start_merge`); the merge alone where every tile was finished."""
    tg, workdir = plan.tilegrid, plan.workdir
    statuses = open_run_index(workdir, tg, plan.run_key, reset=("tiles", "points"),
                              metadata={"product": DSM_PRODUCT.to_dict(), "method": plan.method.name, "tags": tags})
    todo = unfinished(workdir, tg.tiles, statuses, DSM_PRODUCT)
    log.info("%d tiles of %g %s (overlap %g), %d to do", len(tg.tiles), tg.tile_size, plan.dataset.units,
             tg.overlap, len(todo))
    jobs = [TileJob(t, plan.method_name, plan.options, plan.inputs, str(workdir), plan.run_key) for t in todo]
    behind = routes_behind(plan, jobs, executor)
    if behind:  # the tiles in the order their points are routed
        from geoimplicit.tiling.route import routing_order

        jobs = [jobs[i] for i in routing_order(plan.dataset, [j.tile for j in jobs])]

    def nothing(results):
        excluded = sum(int(r.stats.get("excluded_by_class", 0)) for r in results)
        why = getattr(plan.method, "why_empty", lambda stats: None)({"excluded_by_class": excluded})
        return why or ("no tile holds points: the DSM would be empty", "check that the AOI/bbox overlaps the point "
                       "clouds")

    run_and_merge(jobs, workdir=workdir, tiles=tg.tiles, statuses=statuses, product=DSM_PRODUCT, outputs=outputs,
                  merge_kw=dict(tilegrid=tg, aoi=plan.clip, tags=tags, overwrite=overwrite, progress=progress,
                                cancel=cancel),
                  total=len(tg.tiles), executor=executor, needs_gpu=plan.method.needs_gpu, nothing=nothing,
                  before_jobs=_router(plan, workdir / "points", behind, progress, cancel),
                  progress=progress, cancel=cancel)


def routes_behind(plan: RunPlan, jobs: Sequence, executor) -> bool:
    """Whether the points are routed while the tiles run: tiles in flight on a GPU in this process (the tile
    jobs of a CPU method fork their own workers, a Dask cluster reads the folder from elsewhere) and inputs of
    several files (a tile starts once the files over it are routed; with one file that is the end)."""
    from geoimplicit.jobs.executors import LocalExecutor

    return (bool(jobs) and len(plan.dataset.files) > 1 and (executor is None or isinstance(executor, LocalExecutor))
            and jobs[0].device_threads > 1)


def _router(plan: RunPlan, route_dir: Path, behind: bool, progress, cancel):
    """The run's ``before_jobs``: route the points, or start routing them behind the tiles (then the
    :class:`~geoimplicit.tiling.route.RoutingBehind` is what the jobs loop joins)."""
    from geoimplicit.tiling.route import RoutingBehind, route_points

    kw = dict(fields=plan.method.point_fields, progress=progress, cancel=cancel)
    if behind:
        return lambda: RoutingBehind(plan.dataset, plan.tilegrid.tiles, route_dir, **kw)
    return lambda: route_points(plan.dataset, plan.tilegrid.tiles, route_dir, **kw)


@contextlib.contextmanager
def _new_work_folder_removed_on_input_error(workdir: Path):
    """A work folder this run creates is removed again when an input error stops it (nothing to resume)."""
    fresh = not workdir.exists()
    try:
        yield
    except InputError:
        if fresh:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
