"""Write a synthetic scene to a folder: truth rasters, ortho, point cloud, AOI, view set, metadata."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from geoimplicit.outputs import atomic_output
from geoimplicit.progress import CancelCallback, ProgressCallback

log = logging.getLogger(__name__)

# what a scene folder holds (its manifest): --overwrite replaces these names and nothing else in the folder
CITY_PRODUCTS = ("truth_dsm.tif", "dtm.tif", "classes.tif", "ortho.tif", "points.laz", "aoi.geojson",
                 "scene.json", "views")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def write_city(
    scene,
    out_dir,
    *,
    seed: int,
    points: bool = True,
    views: bool = False,
    density: float = 10.0,
    noise: float = 0.08,
    holes: float = 0.05,
    outliers: float = 0.005,
    n_views: int = 20,
    view_size: int = 512,
    n_track: int = 60,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> dict[str, Path]:
    """Write ``scene`` into ``out_dir`` (created atomically: a partial folder never looks finished).

    Into an existing folder (``overwrite``) only :data:`CITY_PRODUCTS` are replaced; other files stay.

    Files: ``truth_dsm.tif``, ``dtm.tif`` (float32, nodata -9999), ``classes.tif`` (uint8 LAS codes),
    ``ortho.tif`` (RGB uint8), ``points.laz`` (LAS 1.4 point format 7 with a ``defect`` extra byte),
    ``aoi.geojson`` (the scene's outline), ``truth_mesh.ply`` (the true surface with walls, CRS coordinates),
    ``scene.json`` (seed, parameters, buildings, timings), and with
    ``views`` a LEVIR-NVS view set in ``views/``.

    Args:
        scene: a :class:`~geoimplicit.synthetic.city.CityScene`.
        seed: seed of the point cloud and views (usually the scene's seed).
        points, views: which optional products to write.
        density, noise, holes, outliers: see :func:`~geoimplicit.synthetic.points.sample_points`.
        n_views, view_size, n_track: see :func:`~geoimplicit.synthetic.views.render_view_set`.

    Returns:
        name -> final path of each product.
    """
    from shapely.geometry import box

    from geoimplicit.io.crs import height_unit
    from geoimplicit.io.raster import write_geotiff
    from geoimplicit.io.vector import write_aoi

    out_dir = Path(out_dir)
    timings = {}
    with atomic_output(out_dir, overwrite=overwrite, products=CITY_PRODUCTS) as tmp:
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        big = max(scene.shape) > 1024
        tags = {"generator": "geoimplicit.synthetic", "seed": seed}
        common = dict(transform=scene.transform, crs=scene.crs, overviews=big)
        unit = height_unit(scene.crs)
        write_geotiff(tmp / "truth_dsm.tif", scene.dsm.astype(np.float32), tags=tags, band_units=unit, **common)
        write_geotiff(tmp / "dtm.tif", scene.dtm.astype(np.float32), tags=tags, band_units=unit, **common)
        write_geotiff(tmp / "classes.tif", scene.classes, nodata=None, tags=tags, **common)
        write_geotiff(tmp / "ortho.tif", scene.ortho, nodata=None, tags=tags,
                      band_descriptions=("red", "green", "blue"), **common)
        write_aoi(tmp / "aoi.geojson", box(*scene.bounds), scene.crs)
        from geoimplicit.synthetic.mesh import write_truth_mesh  # the true surface, walls included

        write_truth_mesh(scene, tmp / "truth_mesh.ply")
        timings["rasters_s"] = time.perf_counter() - t0
        n_points = 0
        if points:
            from geoimplicit.synthetic.points import iter_point_chunks, write_points

            t0 = time.perf_counter()
            zmin = float(scene.dsm.min()) - 40.0 * scene.units_per_m
            left, bottom, _, _ = scene.bounds
            chunks = iter_point_chunks(scene, seed, density=density, noise=noise, holes=holes,
                                       outliers=outliers, progress=progress, cancel=cancel)
            _, n_points = write_points(tmp / "points.laz", chunks, scene.crs, bounds_xyz=(left, bottom, zmin))
            timings["points_s"] = time.perf_counter() - t0
        if views:
            from geoimplicit.synthetic.views import render_view_set

            t0 = time.perf_counter()
            render_view_set(scene, tmp / "views", seed=seed, n_views=n_views, size=view_size,
                            n_track=n_track, progress=progress, cancel=cancel)
            timings["views_s"] = time.perf_counter() - t0
        meta = {
            "seed": seed, "crs": scene.crs.to_string(), "bounds": scene.bounds, "resolution": scene.resolution,
            "shape": scene.shape, "units_per_m": scene.units_per_m,
            "sun_azimuth_deg": scene.sun_azimuth_deg, "sun_elevation_deg": scene.sun_elevation_deg,
            "params": scene.params,
            "points": {"written": bool(points), "count": n_points, "density_per_m2": density, "noise_m": noise,
                       "holes": holes, "outliers": outliers,
                       "defect_codes": {"0": "clean", "1": "edge", "2": "outlier"}},
            "views": {"written": bool(views), "count": n_views if views else 0, "size": view_size},
            "buildings": scene.buildings, "trees": scene.trees,
        }
        (tmp / "scene.json").write_text(json.dumps(meta, indent=1, default=_json_default), encoding="utf-8")
        log.info("wrote %s (%s)", out_dir, ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    names = ["truth_dsm.tif", "dtm.tif", "classes.tif", "ortho.tif", "aoi.geojson", "scene.json", "truth_mesh.ply"]
    out = {Path(n).stem: out_dir / n for n in names}
    if points:
        out["points"] = out_dir / "points.laz"
    if views:
        out["views"] = out_dir / "views"
    return out
