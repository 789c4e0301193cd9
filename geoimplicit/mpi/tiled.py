"""Tiled geo-MPI fitting over an area of interest: one geo-layout MPI per tile, from the views that see it; a
client of the job layer (:mod:`geoimplicit.jobs`).

Layout of the output folder (``out_dir``)::

    tiles.gpkg                  the run index (status of every tile; QGIS opens it)
    tiles/<id>/views/           the tile's view set: the views that see the tile, cropped to it (LEVIR-NVS)
    tiles/<id>/model.pt         the tile's MPI (``geoimplicit nvs render/eval tiles/<id> ...`` work on it)
    tiles/<id>/config.json      its resolved fit settings
    tiles/<id>/true_ortho.tif   nadir render on the tile's grid (RGB uint8, nodata 0)
    tiles/<id>/height.tif       height of the nadir render on the tile's grid (float32, nodata -9999)
    true_ortho.tif, height.tif  the tiles blended on the AOI's pixel grid (COGs; true_ortho.tif RGB + alpha)

A view *sees* a tile when at least ``min_view_coverage`` of the tile's box (its bounds, overlap included, between
the lowest and the highest height of the scene; a 5 x 5 grid of points at both heights) projects inside its image
with positive depth; with 1.0, when all 8 corners of the box do. Each view is cropped to the bounding box of
those projections plus a margin (its intrinsics shifted with :meth:`PinholeCamera.cropped`), so a view that sees
part of a tile serves that part; the tile's MPI texture covers the tile's bounds (besides the most nadir view's
crop, the geo layout's ``extent``).
Every tile uses the same plane heights (the scene's height range), so neighbouring tiles agree in their
overlap. The product grid starts at the AOI's top-left corner (the AOI's pixel grid).

Tile jobs are picklable :class:`MPITileJob` objects run by the job loop through any executor
(:mod:`geoimplicit.jobs.executors`); the run resumes through the run index: tiles whose status is
``done``/``empty`` (and whose products exist) are not fitted again, and a tile interrupted during its fit
continues from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from geoimplicit.errors import AOIError, CameraFileError, InputError
from geoimplicit.io.cameras import PinholeCamera, ViewSet, write_camera
from geoimplicit.jobs.index import INDEX_NAME, open_run_index, read_statuses, resume_key
from geoimplicit.jobs.loop import TileOutcome, run_and_merge, unfinished
from geoimplicit.jobs.raster import RasterLayer, RasterProduct
from geoimplicit.outputs import atomic_output, check_output
from geoimplicit.progress import CancelCallback, ProgressCallback

log = logging.getLogger(__name__)

__all__ = ["MPITileJob", "NVS_PRODUCT", "fit_tiled", "select_views", "sees", "coverage", "crop_window",
           "scene_height_range", "default_resolution", "render_tile"]

ORTHO_NODATA = 0
HEIGHT_NODATA = -9999.0
NVS_PRODUCT = RasterProduct((
    RasterLayer("height", "tiles/{id}/height.tif", ("height",), "float32", HEIGHT_NODATA, (1,), tags={"band": "height"}),
    RasterLayer("ortho", "tiles/{id}/true_ortho.tif", ("red", "green", "blue"), "uint8", ORTHO_NODATA, (1, 2, 3),
                alpha=True),
))


# ---------------------------------------------------------------------------------------------------------
# geometry: which views see a tile, and where
# ---------------------------------------------------------------------------------------------------------
def _box_corners(bounds, height_range) -> np.ndarray:
    left, bottom, right, top = bounds
    return np.array([[x, y, z] for z in height_range for x in (left, right) for y in (bottom, top)], np.float64)


def _inside(cam: PinholeCamera, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return ((depth > 0) & np.isfinite(uv).all(axis=1) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= cam.width - 0.5)
                & (uv[:, 1] >= -0.5) & (uv[:, 1] <= cam.height - 0.5))


def _box_points(bounds, height_range, n: int = 5) -> np.ndarray:
    left, bottom, right, top = bounds
    x, y, z = np.meshgrid(np.linspace(left, right, n), np.linspace(bottom, top, n), np.asarray(height_range, float),
                          indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)


def coverage(cam: PinholeCamera, bounds, height_range) -> float:
    """Fraction of the tile box ``bounds`` x ``height_range`` (a 5 x 5 grid of points at both heights) that
    projects inside the image of ``cam`` with positive depth; 1.0 exactly when all 8 corners do."""
    uv, depth = cam.project(_box_points(bounds, height_range))
    return float(_inside(cam, uv, depth).mean())


def sees(cam: PinholeCamera, bounds, height_range, min_coverage: float = 1.0) -> bool:
    """Whether ``cam`` sees at least ``min_coverage`` of the tile box (1.0: its 8 corners project inside the image
    with positive depth)."""
    if min_coverage >= 1.0:
        uv, depth = cam.project(_box_corners(bounds, height_range))
        return bool(_inside(cam, uv, depth).all())
    return coverage(cam, bounds, height_range) >= min_coverage - 1e-9


def select_views(cameras: dict[str, PinholeCamera], bounds, height_range, min_coverage: float = 1.0) -> list[str]:
    """The ids of the cameras that see the tile box (see :func:`sees`), in id order."""
    return [vid for vid, cam in sorted(cameras.items()) if sees(cam, bounds, height_range, min_coverage)]


def crop_window(cam: PinholeCamera, bounds, height_range, margin_px: int = 8) -> tuple[int, int, int, int]:
    """(col_off, row_off, width, height) of the pixels of ``cam`` that see the tile box, plus ``margin_px``
    (clipped to the image)."""
    uv, depth = cam.project(_box_points(bounds, height_range))
    uv = uv[depth > 0]
    c0 = max(0, int(math.floor(uv[:, 0].min() + 0.5)) - margin_px)
    r0 = max(0, int(math.floor(uv[:, 1].min() + 0.5)) - margin_px)
    c1 = min(cam.width, int(math.floor(uv[:, 0].max() + 0.5)) + 1 + margin_px)
    r1 = min(cam.height, int(math.floor(uv[:, 1].max() + 0.5)) + 1 + margin_px)
    return c0, r0, c1 - c0, r1 - r0


def _most_nadir(cameras: dict[str, PinholeCamera], ids) -> PinholeCamera:
    return max((cameras[i] for i in ids), key=lambda c: abs(c.R[2, 2]))


def scene_height_range(views: ViewSet) -> tuple[float, float]:
    """(lowest, highest) world height of the scene: where the most nadir camera's central ray crosses its
    ``DEPTH_MAX`` and ``DEPTH_MIN`` (the rule of the geo layout of :func:`geoimplicit.mpi.fit.scene_geometry`)."""
    cam = _most_nadir(views.cameras, views.train_ids or views.ids)
    centre = np.array([[(cam.width - 1) / 2, (cam.height - 1) / 2]] * 2)
    top, bottom = cam.unproject(centre, np.array([cam.depth_min, cam.depth_max]))[:, 2]
    if not top > bottom:
        raise CameraFileError("cannot derive the scene's height range from the most nadir camera's depth range",
                              path=views.root, hint="pass --height-range MIN MAX")
    return float(bottom), float(top)


def default_resolution(views: ViewSet) -> float:
    """The ground sample distance of the most nadir camera at the middle of its depth range (2 significant
    digits)."""
    cam = _most_nadir(views.cameras, views.train_ids or views.ids)
    gsd = 0.5 * (cam.depth_min + cam.depth_max) / cam.K[0, 0]
    return float(f"{gsd:.2g}")


def _footprint(cam: PinholeCamera, height: float):
    """The ground polygon (shapely) that ``cam`` sees at ``height``, or None when its corners miss it."""
    import shapely

    W, H = cam.width, cam.height
    uv = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]])
    rays = np.concatenate([uv, np.ones((4, 1))], 1) @ np.linalg.inv(cam.K).T @ cam.R  # world directions
    c = cam.center
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (height - c[2]) / rays[:, 2]
    if not (np.isfinite(s).all() and (s > 0).all()):
        return None
    return shapely.Polygon(c[:2] + s[:, None] * rays[:, :2])


# ---------------------------------------------------------------------------------------------------------
# one tile
# ---------------------------------------------------------------------------------------------------------
@dataclass
class MPITileJob:
    """One tile to fit (picklable: paths and numbers)."""

    tile: object  # geoimplicit.tiling.grid.Tile
    views_dir: str
    train_ids: list
    test_ids: list
    crops: dict  # view id -> (col_off, row_off, width, height)
    config: dict  # FitConfig fields
    workdir: str  # the output folder
    device: str = "auto"
    product: RasterProduct = NVS_PRODUCT

    @property
    def tile_id(self) -> str:
        return self.tile.id

    def load(self) -> None:
        return None  # the fit reads its own (cropped) views

    def compute(self, loaded, progress=None) -> TileOutcome:
        """Write the tile's cropped view set, fit its MPI (continuing a checkpoint), render its products."""
        from geoimplicit.mpi.fit import FitConfig, fit_mpi

        if not self.train_ids:
            return TileOutcome(None, {"views": 0}, message="no train view sees enough of the tile")
        folder = tile_dir(self.workdir, self.tile_id)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "model.pt").exists():  # the views of a fitted model are left as they are
            _write_tile_views(self, folder / "views")
        cfg = FitConfig.from_dict(dict(self.config))
        cfg.device = self.device
        report = None if progress is None else (lambda done, total, *_: progress(0.95 * done / max(total, 1), "fit"))
        fit = fit_mpi(folder / "views", folder, cfg, resume=True, progress=report)
        height, rgb, valid_fraction = render_tile(folder, self.tile, device=self.device)
        stats = {"views": len(self.train_ids), "train_psnr": fit.train_psnr, "fit_seconds": fit.seconds,
                 "valid_fraction": valid_fraction}
        (folder / "tile.json").write_text(json.dumps({"id": self.tile_id, **stats}, indent=2), encoding="utf-8")
        return TileOutcome({"height": height, "ortho": rgb}, stats,
                           tags={"software": "geoimplicit nvs fit --aoi (geo-MPI nadir render)"})


def tile_dir(out_dir, tile_id: str) -> Path:
    return Path(out_dir) / "tiles" / tile_id


def _write_tile_views(job: MPITileJob, dest: Path) -> Path:
    """The tile's view set: cropped images (and depths), shifted cameras, split and CRS."""
    from PIL import Image

    from geoimplicit.io.cameras import read_depth
    from geoimplicit.mpi.render import write_depth_tiff

    views = ViewSet.load(job.views_dir)
    with atomic_output(dest, overwrite=True) as tmp:
        for sub in ("Images", "Cams"):
            (tmp / sub).mkdir(parents=True)
        for vid in job.train_ids + job.test_ids:
            c0, r0, w, h = job.crops[vid]
            src = views.image_paths[vid]
            with Image.open(src) as im:
                arr = np.asarray(im)
            Image.fromarray(np.ascontiguousarray(arr[r0:r0 + h, c0:c0 + w])).save(tmp / "Images" / src.name)
            write_camera(tmp / "Cams" / f"{vid}.txt", views.cameras[vid].cropped(c0, r0, w, h))
            if vid in views.depth_paths:
                (tmp / "Depths").mkdir(exist_ok=True)
                depth = read_depth(views.depth_paths[vid])[r0:r0 + h, c0:c0 + w]
                write_depth_tiff(tmp / "Depths" / f"{vid}.tiff", depth)
        split = [str(len(job.train_ids)), " ".join(job.train_ids), str(len(job.test_ids)), " ".join(job.test_ids)]
        (tmp / "view_split.txt").write_text("\n".join(split) + "\n", encoding="utf-8")
        crs = views.crs
        (tmp / "crs.txt").write_text((crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)) + "\n", encoding="utf-8")
    return dest


def render_tile(model_dir, tile, *, device="auto") -> tuple[np.ndarray, np.ndarray, float]:
    """Nadir orthographic render of a geo-MPI on the tile's grid: (height (1, rows, cols) float32, RGB (3, rows,
    cols) uint8, valid fraction); a pixel is valid where the render's opacity exceeds 0.5."""
    from geoimplicit.device import resolve_device
    from geoimplicit.mpi.render import nadir_camera
    from geoimplicit.mpi.scene import MPIScene

    scene = MPIScene.load(model_dir, resolve_device(device))
    grid = tile.grid
    left, _, _, top = grid.bounds
    out = scene.render(nadir_camera(left, top, grid.resolution, grid.width, grid.height))
    valid = out["opacity"] > 0.5
    height_m = np.where(valid, -out["depth"], HEIGHT_NODATA).astype(np.float32)  # depth along (0, 0, -1) is -Z
    rgb = np.clip(np.rint(np.clip(out["rgb"], 0, 1) * 255), 1, 255).astype(np.uint8).transpose(2, 0, 1)
    rgb[:, ~valid] = ORTHO_NODATA
    return height_m[None], rgb, float(valid.mean())


# ---------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    views: ViewSet
    geometry: object  # the AOI (shapely)
    tilegrid: object
    fit: dict  # FitConfig fields for every tile
    height_range: tuple
    run_key: str


def fit_tiled(views_dir, aoi, out_dir, *, config=None, resolution: float | None = None,
              tile_size: float | None = None, overlap: float | None = None,
              height_range: tuple[float, float] | None = None, crop_margin_px: int = 8,
              min_view_coverage: float = 0.1, device: str = "auto", overwrite: bool = False, executor=None,
              progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> dict:
    """Fit one geo-MPI per tile of a tile grid over ``aoi`` and mosaic their nadir products.

    Args:
        views_dir: a LEVIR-NVS view set with ``crs.txt`` (cameras in that projected CRS).
        aoi: polygon file (GeoJSON/GPKG/SHP, any CRS), or (left, bottom, right, top) in the views' CRS.
        out_dir: output folder (layout in the module docstring); a re-run with the same inputs resumes there.
        config: :class:`geoimplicit.mpi.fit.FitConfig` or dict for every tile (its layout is forced to ``geo``,
            its ``height_range`` to the scene's; its texture covers at least the tile's bounds).
        resolution: pixel size of the products (default: the most nadir view's ground sample distance).
        tile_size, overlap: CRS units (default 256 and 16 pixels).
        height_range: (min, max) world heights of the planes (default from the most nadir camera).
        crop_margin_px: pixels kept around each view's crop.
        min_view_coverage: a view is used for a tile when at least this fraction of the tile box projects into
            its image (:func:`coverage`); 1.0: only views that see all 8 corners of the box.
        device: ``auto``, ``cpu`` or ``cuda`` (``auto`` is resolved on the worker).
        overwrite: replace existing mosaics (fitted tiles are kept while the inputs and settings are the same).
        executor: any executor of :mod:`geoimplicit.jobs.executors` (default: local).

    Returns:
        {"ortho": true_ortho.tif, "height": height.tif, "tiles": tiles.gpkg, "tiles_done": n, "tiles_empty": n}.

    Raises:
        AOIError: the AOI is empty, or no view sees any part of it. CameraFileError: no ``crs.txt``.
        NoDataError: no tile is seen by a train view.
    """
    from geoimplicit.device import resolve_device

    out_dir = Path(out_dir)
    outputs = {"height": out_dir / "height.tif", "ortho": out_dir / "true_ortho.tif"}
    for path in outputs.values():
        check_output(path, overwrite)
    plan = _plan(views_dir, aoi, config, resolution, tile_size, overlap, height_range, crop_margin_px,
                 min_view_coverage)
    tg = plan.tilegrid
    statuses = open_run_index(out_dir, tg, plan.run_key, metadata={"kind": "nvs fit --aoi",
                                                                    "product": NVS_PRODUCT.to_dict()})
    jobs = [_job(plan, t, crop_margin_px, min_view_coverage, out_dir, device)
            for t in unfinished(out_dir, tg.tiles, statuses, NVS_PRODUCT)]
    log.info("%d tiles of %g (overlap %g) at %g, %d to fit", len(tg.tiles), tg.tile_size, tg.overlap,
             tg.grid.resolution, len(jobs))
    needs_gpu = device != "cpu" and resolve_device("auto").type == "cuda"
    clip = plan.geometry if not _is_box(plan.geometry) else None
    tags = {"inputs": str(plan.views.root), "tile_size": tg.tile_size, "overlap": tg.overlap, "method": "geo-MPI",
            "height_range": list(plan.height_range)}
    run_and_merge(jobs, workdir=out_dir, tiles=tg.tiles, statuses=statuses, product=NVS_PRODUCT, outputs=outputs,
                  merge_kw=dict(tilegrid=tg, aoi=clip, tags=tags, overwrite=overwrite, progress=progress,
                                cancel=cancel),
                  total=len(tg.tiles), executor=executor, needs_gpu=needs_gpu,
                  nothing=lambda results: ("no tile is seen by a train view: nothing was fitted",
                                           "lower --min-view-coverage, or give an AOI inside the views' footprints"),
                  progress=progress, cancel=cancel)
    done = [t for t, st in read_statuses(out_dir / INDEX_NAME).items() if st == "done"]
    return {"ortho": outputs["ortho"], "height": outputs["height"], "tiles": out_dir / INDEX_NAME,
            "tiles_done": len(done), "tiles_empty": len(tg.tiles) - len(done)}


def _plan(views_dir, aoi, config, resolution, tile_size, overlap, height_range, crop_margin_px,
          min_view_coverage) -> _Plan:
    """Check the views, the fit settings and the AOI; the tile grid on the AOI's pixel grid; the resume key."""
    from geoimplicit.mpi.fit import FitConfig
    from geoimplicit.tiling.grid import TileGrid

    views = ViewSet.load(views_dir)
    if views.crs is None:
        raise CameraFileError("the view set has no crs.txt, so its cameras cannot be placed on a map",
                              path=views.root, hint="add crs.txt (e.g. EPSG:2154) to the views folder")
    if not 0 < min_view_coverage <= 1:
        raise InputError(f"min_view_coverage must be in (0, 1], got {min_view_coverage}")
    cfg = config if isinstance(config, FitConfig) else FitConfig.from_dict(dict(config or {}))
    cfg.layout = "geo"
    cfg.plane_placement = "uniform"  # every tile gets the same plane heights, so that tiles agree in overlaps
    if height_range is None:
        height_range = cfg.height_range if cfg.height_range is not None else scene_height_range(views)
    h_lo, h_hi = (float(v) for v in height_range)
    if not h_hi > h_lo:
        raise InputError(f"height range ({h_lo}, {h_hi}) is empty", hint="give --height-range MIN MAX with MIN < MAX")
    cfg.height_range = (h_lo, h_hi)
    cfg.validate()
    resolution = float(default_resolution(views) if resolution is None else resolution)
    geometry = _aoi_seen(views, aoi, (h_lo, h_hi))
    tg = TileGrid.from_aoi(geometry, tile_size=256 * resolution if tile_size is None else float(tile_size),
                           overlap=16 * resolution if overlap is None else float(overlap), resolution=resolution,
                           crs=views.crs, snap=False)  # the products start at the AOI's corner
    fit = asdict(cfg)
    fit.pop("device", None)
    files = [views.image_paths[v] for v in views.ids] + [views.root / "Cams" / f"{v}.txt" for v in views.ids]
    key = resume_key(files, {"fit": fit, "margin": crop_margin_px, "coverage": min_view_coverage,
                             "aoi": geometry.wkt}, tg)
    return _Plan(views, geometry, tg, fit, (h_lo, h_hi), key)


def _aoi_seen(views: ViewSet, aoi, height_range):
    """The AOI polygon in the views' CRS; it must meet the ground footprint of at least one view."""
    import shapely

    from geoimplicit.io.crs import crs_name

    if isinstance(aoi, (str, os.PathLike)):
        from geoimplicit.io.vector import read_aoi

        geometry, aoi_name = read_aoi(aoi, crs=views.crs).geometry, str(aoi)
    else:
        geometry, aoi_name = shapely.box(*(float(v) for v in aoi)), "bounds"
    mid = 0.5 * (height_range[0] + height_range[1])
    prints = [p for p in (_footprint(views.cameras[v], mid) for v in views.ids) if p is not None]
    seen = shapely.union_all(prints) if prints else None
    if seen is None or not geometry.intersects(seen):
        b = "none" if seen is None else ", ".join(f"{v:.2f}" for v in seen.bounds)
        raise AOIError(f"no view sees the area of interest (the views' ground footprints span {b})",
                       path=aoi_name, hint=f"check the AOI and its CRS (the cameras are in {crs_name(views.crs)})")
    return geometry


def _job(plan: _Plan, tile, crop_margin_px: int, min_view_coverage: float, out_dir, device) -> MPITileJob:
    """The tile's job: the views that see it, each cropped to it."""
    cams, hr = plan.views.cameras, plan.height_range
    seen_by = select_views({v: cams[v] for v in plan.views.ids}, tile.bounds, hr, min_view_coverage)
    crops = {v: crop_window(cams[v], tile.bounds, hr, crop_margin_px) for v in seen_by}
    train, test = set(plan.views.train_ids), set(plan.views.test_ids)
    return MPITileJob(tile, str(plan.views.root), [v for v in seen_by if v in train],
                      [v for v in seen_by if v in test], crops, {**plan.fit, "texture_bounds": list(tile.bounds)},
                      str(out_dir), device)


def _is_box(geometry) -> bool:
    import shapely

    return geometry.geom_type == "Polygon" and abs(geometry.area - shapely.box(*geometry.bounds).area) <= 1e-9 * max(
        geometry.area, 1.0)
