"""Tiled geo-MPI fitting over an area of interest: one geo-layout MPI per tile, from the views that see it.

Layout of the output folder (``out_dir``)::

    tiles.gpkg                  the tile index (status of every tile; QGIS opens it)
    tiles/<id>/views/           the tile's view set: the views that see the tile, cropped to it (LEVIR-NVS)
    tiles/<id>/model.pt         the tile's MPI (``geoimplicit nvs render/eval tiles/<id> ...`` work on it)
    tiles/<id>/config.json      its resolved fit settings
    tiles/<id>/true_ortho.tif   nadir render on the tile's grid (RGB uint8, nodata 0)
    tiles/<id>/height.tif       height of the nadir render on the tile's grid (float32, nodata -9999)
    true_ortho.tif, height.tif  the tiles blended on the tile grid's mosaic grid (COGs)

A view *sees* a tile when at least ``min_view_coverage`` of the tile's box (its bounds, overlap included, between
the lowest and the highest height of the scene; a 5 x 5 grid of points at both heights) projects inside its image
with positive depth; with 1.0, when all 8 corners of the box do. Each view is cropped to the bounding
box of those projections plus a margin (its intrinsics shifted with :meth:`PinholeCamera.cropped`). Every tile
uses the same plane heights (the scene's height range), so neighbouring tiles agree in their overlap.

Tile jobs are module-level functions of a picklable :class:`MPITileJob` run through the executors of the DSM
run (:mod:`geoimplicit.executors`); the run resumes through the tile index: tiles whose status is
``done``/``empty`` (and whose products exist) are not fitted again, and a tile interrupted during its fit
continues from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from geoimplicit.errors import AOIError, CameraFileError, InputError, NoDataError
from geoimplicit.io.cameras import PinholeCamera, ViewSet, write_camera
from geoimplicit.outputs import atomic_output, check_output, input_fingerprint
from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel

log = logging.getLogger(__name__)

__all__ = ["MPITileJob", "TileFitResult", "fit_tiled", "select_views", "sees", "coverage", "crop_window", "scene_height_range",
           "default_resolution", "run_mpi_tile"]

ORTHO_NODATA = 0
HEIGHT_NODATA = -9999.0


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
    out_dir: str
    device: str = "auto"

    @property
    def tile_id(self) -> str:
        return self.tile.id


@dataclass
class TileFitResult:
    tile_id: str
    status: str
    seconds: float
    stats: dict = field(default_factory=dict)


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


def _write_tile_tif(path: Path, array: np.ndarray, tile, nodata, band_names: Sequence[str]) -> Path:
    """A tile GeoTIFF on the tile's grid, tagged with its core bounds and overlap (for the mosaic's feather)."""
    import rasterio

    from geoimplicit.io.crs import to_rasterio_crs
    from geoimplicit.mosaic import TAG_CORE, TAG_ID, TAG_OVERLAP

    grid = tile.grid
    arr = array if array.ndim == 3 else array[None]
    tags = {TAG_ID: tile.id, TAG_CORE: json.dumps(list(tile.core_bounds)),
            TAG_OVERLAP: str(int(round(tile.overlap / grid.resolution))), "AREA_OR_POINT": "Area",
            "software": "geoimplicit nvs fit --aoi (geo-MPI nadir render)"}
    profile = dict(driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=arr.dtype.name,
                   nodata=nodata, crs=None if grid.crs is None else to_rasterio_crs(grid.crs),
                   transform=grid.transform, compress="deflate")
    if arr.shape[0] == 3 and arr.dtype == np.uint8:
        profile["photometric"] = "RGB"
    with atomic_output(path, overwrite=True) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr)
            dst.update_tags(**tags)
            for k, name in enumerate(band_names):
                dst.set_band_description(k + 1, name)
    return path


def render_tile_products(model_dir, tile, *, device="auto") -> dict[str, Path]:
    """Nadir orthographic render of a geo-MPI on the tile's grid: ``true_ortho.tif`` and ``height.tif`` in
    ``model_dir`` (a pixel is valid where the render's opacity exceeds 0.5)."""
    from geoimplicit.device import resolve_device
    from geoimplicit.mpi.render import nadir_camera
    from geoimplicit.mpi.scene import MPIScene

    scene = MPIScene.load(model_dir, resolve_device(device))
    grid = tile.grid
    left, _, _, top = grid.bounds
    cam = nadir_camera(left, top, grid.resolution, grid.width, grid.height)
    out = scene.render(cam)
    valid = out["opacity"] > 0.5
    height_m = np.where(valid, -out["depth"], HEIGHT_NODATA).astype(np.float32)  # depth along (0, 0, -1) is -Z
    rgb = np.clip(np.rint(np.clip(out["rgb"], 0, 1) * 255), 1, 255).astype(np.uint8).transpose(2, 0, 1)
    rgb[:, ~valid] = ORTHO_NODATA
    model_dir = Path(model_dir)
    return {
        "ortho": _write_tile_tif(model_dir / "true_ortho.tif", rgb, tile, ORTHO_NODATA, ("red", "green", "blue")),
        "height": _write_tile_tif(model_dir / "height.tif", height_m, tile, HEIGHT_NODATA, ("height",)),
        "valid_fraction": float(valid.mean()),
    }


def run_mpi_tile(job: MPITileJob) -> TileFitResult:
    """Fit one tile: write its cropped view set, fit the MPI (continuing a checkpoint), render its products,
    record its status in the index. A tile that no train view sees is recorded ``empty``."""
    from geoimplicit.mpi.fit import FitConfig, fit_mpi
    from geoimplicit.tiling.grid import update_status

    t0 = time.perf_counter()
    index = Path(job.out_dir) / "tiles.gpkg"
    tid = job.tile.id
    try:
        if not job.train_ids:
            update_status(index, tid, "empty", "no train view sees enough of the tile")
            return TileFitResult(tid, "empty", time.perf_counter() - t0, {"views": 0})
        update_status(index, tid, "running")
        folder = tile_dir(job.out_dir, tid)
        folder.mkdir(parents=True, exist_ok=True)
        views_dir = folder / "views"
        if not (folder / "model.pt").exists():  # the views of a fitted model are left as they are
            _write_tile_views(job, views_dir)
        cfg = FitConfig.from_dict(dict(job.config))
        cfg.device = job.device
        fit = fit_mpi(views_dir, folder, cfg, resume=True)
        products = render_tile_products(folder, job.tile, device=job.device)
        stats = {"views": len(job.train_ids), "train_psnr": fit.train_psnr, "fit_seconds": fit.seconds,
                 "valid_fraction": products["valid_fraction"]}
        (folder / "tile.json").write_text(json.dumps({"id": tid, **stats}, indent=2), encoding="utf-8")
        update_status(index, tid, "done")
        return TileFitResult(tid, "done", time.perf_counter() - t0, stats)
    except BaseException as exc:
        try:
            update_status(index, tid, "failed", f"{type(exc).__name__}: {exc}")
        except Exception:  # the index itself is the problem: keep the original error
            pass
        raise


# ---------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------
def _finished(out_dir: Path, tile_id: str, status: str | None) -> bool:
    if status == "empty":
        return True
    d = tile_dir(out_dir, tile_id)
    return status == "done" and (d / "height.tif").exists() and (d / "true_ortho.tif").exists()


def fit_tiled(
    views_dir,
    aoi,
    out_dir,
    *,
    config=None,
    resolution: float | None = None,
    tile_size: float | None = None,
    overlap: float | None = None,
    height_range: tuple[float, float] | None = None,
    crop_margin_px: int = 8,
    min_view_coverage: float = 0.5,
    device: str = "auto",
    overwrite: bool = False,
    executor=None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> dict:
    """Fit one geo-MPI per tile of a tile grid over ``aoi`` and mosaic their nadir products.

    Args:
        views_dir: a LEVIR-NVS view set with ``crs.txt`` (cameras in that projected CRS).
        aoi: polygon file (GeoJSON/GPKG/SHP, any CRS), or (left, bottom, right, top) in the views' CRS.
        out_dir: output folder (layout in the module docstring); a re-run with the same inputs resumes there.
        config: :class:`geoimplicit.mpi.fit.FitConfig` or dict for every tile (its layout is forced to ``geo``
            and its ``height_range`` to the scene's).
        resolution: pixel size of the products (default: the most nadir view's ground sample distance).
        tile_size, overlap: CRS units (default 256 and 16 pixels).
        height_range: (min, max) world heights of the planes (default from the most nadir camera).
        crop_margin_px: pixels kept around each view's crop.
        min_view_coverage: a view is used for a tile when at least this fraction of the tile box projects into
            its image (:func:`coverage`); 1.0: only views that see all 8 corners of the box.
        device: ``auto``, ``cpu`` or ``cuda`` (``auto`` is resolved on the worker).
        overwrite: replace existing mosaics (fitted tiles are kept while the inputs and settings are the same).
        executor: anything with the ``map`` of :class:`geoimplicit.executors.LocalExecutor` (the default).

    Returns:
        {"ortho": true_ortho.tif, "height": height.tif, "tiles": tiles.gpkg, "tiles_done": n, "tiles_empty": n}.

    Raises:
        AOIError: the AOI is empty, or no view sees any part of it. CameraFileError: no ``crs.txt``.
        NoDataError: no tile is seen by a train view.
    """
    import shapely

    from geoimplicit.io.crs import crs_name
    from geoimplicit.mosaic import mosaic
    from geoimplicit.device import resolve_device
    from geoimplicit.mpi.fit import FitConfig
    from geoimplicit.tiling.grid import TileGrid, open_run_index, read_statuses

    out_dir = Path(out_dir)
    ortho_path, height_path = out_dir / "true_ortho.tif", out_dir / "height.tif"
    check_output(ortho_path, overwrite)
    check_output(height_path, overwrite)
    views = ViewSet.load(views_dir)
    if views.crs is None:
        raise CameraFileError("the view set has no crs.txt, so its cameras cannot be placed on a map",
                              path=views.root, hint="add crs.txt (e.g. EPSG:2154) to the views folder")
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
    if resolution is None:
        resolution = default_resolution(views)
    resolution = float(resolution)
    if not 0 < min_view_coverage <= 1:
        raise InputError(f"min_view_coverage must be in (0, 1], got {min_view_coverage}")
    tile_size = 256 * resolution if tile_size is None else float(tile_size)
    overlap = 16 * resolution if overlap is None else float(overlap)

    if isinstance(aoi, (str, os.PathLike)):
        from geoimplicit.io.vector import read_aoi

        geometry = read_aoi(aoi, crs=views.crs).geometry
        aoi_name = str(aoi)
    else:
        geometry = shapely.box(*(float(v) for v in aoi))
        aoi_name = "bounds"
    cams = {vid: views.cameras[vid] for vid in views.ids}
    prints = [p for p in (_footprint(c, 0.5 * (h_lo + h_hi)) for c in cams.values()) if p is not None]
    seen = shapely.union_all(prints) if prints else None
    if seen is None or not geometry.intersects(seen):
        b = "none" if seen is None else ", ".join(f"{v:.2f}" for v in seen.bounds)
        raise AOIError(f"no view sees the area of interest (the views' ground footprints span {b})",
                       path=aoi_name, hint=f"check the AOI and its CRS (the cameras are in {crs_name(views.crs)})")
    tg = TileGrid.from_aoi(geometry, tile_size=tile_size, overlap=overlap, resolution=resolution, crs=views.crs)

    fit_dict = asdict(cfg)
    fit_dict.pop("device", None)
    files = [views.image_paths[v] for v in views.ids] + [views.root / "Cams" / f"{v}.txt" for v in views.ids]
    run_key = input_fingerprint(files, {"fit": fit_dict, "margin": crop_margin_px, "coverage": min_view_coverage, "aoi": geometry.wkt,
                                   **tg.metadata()})
    index = out_dir / "tiles.gpkg"
    statuses = open_run_index(out_dir, tg, run_key, extra={"kind": "nvs fit --aoi"})

    train, test = set(views.train_ids), set(views.test_ids)
    jobs = []
    for t in tg.tiles:
        if _finished(out_dir, t.id, statuses.get(t.id)):
            continue
        seen_by = select_views(cams, t.bounds, (h_lo, h_hi), min_view_coverage)
        crops = {v: crop_window(cams[v], t.bounds, (h_lo, h_hi), crop_margin_px) for v in seen_by}
        jobs.append(MPITileJob(t, str(views.root), [v for v in seen_by if v in train],
                               [v for v in seen_by if v in test], crops, fit_dict, str(out_dir), device))
    log.info("%d tiles of %g (overlap %g) at %g, %d to fit", len(tg.tiles), tg.tile_size, tg.overlap,
             resolution, len(jobs))
    if jobs:
        if executor is None:
            from geoimplicit.executors import LocalExecutor

            executor = LocalExecutor()
        needs_gpu = device != "cpu" and resolve_device("auto").type == "cuda"
        n_total, n_done = len(tg.tiles), len(tg.tiles) - len(jobs)
        for _, res in executor.map(run_mpi_tile, jobs, needs_gpu=needs_gpu, cancel=cancel):
            n_done += 1
            if progress is not None:
                progress(n_done, n_total, "tiles", f"{res.tile_id} {res.status}")
    check_cancel(cancel)
    statuses = read_statuses(index)
    not_done = [t.id for t in tg.tiles if not _finished(out_dir, t.id, statuses.get(t.id))]
    if not_done:
        raise RuntimeError(f"tiles not finished: {', '.join(not_done[:5])}; re-run the command to resume")
    done = [t for t in tg.tiles if statuses.get(t.id) == "done"]
    if not done:
        raise NoDataError("no tile is seen by a train view: nothing was fitted", path=index,
                          hint="use smaller tiles (--tile-size) or an AOI inside the views' common footprint")
    clip = geometry if not _is_box(geometry) else None
    tags = {"inputs": str(views.root), "tile_size": tg.tile_size, "overlap": tg.overlap, "method": "geo-MPI",
            "height_range": [h_lo, h_hi]}
    mosaic([tile_dir(out_dir, t.id) / "height.tif" for t in done], height_path, grid=tg.grid, aoi=clip,
           tags={**tags, "band": "height"}, overwrite=overwrite, progress=progress, cancel=cancel)
    mosaic([tile_dir(out_dir, t.id) / "true_ortho.tif" for t in done], ortho_path, grid=tg.grid, aoi=clip,
           tags=tags, bands=(1, 2, 3), dtype="uint8", nodata=ORTHO_NODATA, overwrite=overwrite,
           progress=progress, cancel=cancel)
    return {"ortho": ortho_path, "height": height_path, "tiles": index, "tiles_done": len(done),
            "tiles_empty": sum(statuses.get(t.id) == "empty" for t in tg.tiles)}


def _is_box(geometry) -> bool:
    import shapely

    return geometry.geom_type == "Polygon" and abs(geometry.area - shapely.box(*geometry.bounds).area) <= 1e-9 * max(
        geometry.area, 1.0)
