"""What a surface fit reads, checked before anything is written: the view set, its CRS, the box, the points.

:func:`prepare_inputs` validates every input (views and cameras, ``crs.txt``, AOI overlap, points' CRS) and
returns a :class:`SurfaceInputs` holding the train views at the fit's scale, their cameras about the box's
local origin, and the surface points (local coordinates) with optional normals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from geoimplicit.errors import AOIError, CameraFileError, CRSMismatchError, EmptyTileError, MissingCRSError
from geoimplicit.geometry.cameras import PinholeCamera
from geoimplicit.io.cameras import ViewSet
from geoimplicit.surface.box import SurfaceBox

log = logging.getLogger(__name__)

__all__ = ["SurfaceInputs", "load_view_set", "prepare_inputs", "default_box", "nadir_footprint"]

NORMAL_FIELDS = ("NormalX", "NormalY", "NormalZ")


@dataclass
class SurfaceInputs:
    views: ViewSet
    train_ids: list[str]
    box: SurfaceBox
    cameras: list[PinholeCamera]
    """Train cameras at the fit's image scale, in the box's local coordinates."""
    points: np.ndarray | None = None
    """(N, 3) float64 local coordinates of surface points (``--points``), or None."""
    normals: np.ndarray | None = None
    point_files: list = field(default_factory=list)


def _crs_wkt(crs) -> str:
    return crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)


def nadir_footprint(cam: PinholeCamera, height: float) -> tuple[float, float, float, float]:
    """World bounds of the image of ``cam`` on the horizontal plane at ``height``."""
    w, h = cam.width, cam.height
    uv = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]], float)
    o, d = cam.rays(uv)
    s = (height - o[:, 2]) / d[:, 2]
    p = o + s[:, None] * d
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


def default_box(views: ViewSet, ids, height_range, margin_m: float = 0.0, aoi_bounds=None) -> SurfaceBox:
    """The box of a view set: ``aoi_bounds`` or the most nadir train camera's footprint at the mean height (so
    most train rays over it are column rays), by ``height_range``."""
    from geoimplicit.mpi.tiled import _most_nadir

    if aoi_bounds is None:
        cam = _most_nadir(views.cameras, ids)
        aoi_bounds = nadir_footprint(cam, 0.5 * (height_range[0] + height_range[1]))
    left, bottom, right, top = aoi_bounds
    m = float(margin_m)
    return SurfaceBox.from_bounds((left - m, bottom - m, right + m, top + m), height_range,
                                  _crs_wkt(views.crs) if views.crs is not None else None)


def _read_points(paths, crs, bounds):
    from geoimplicit.io.crs import crs_equal, crs_name
    from geoimplicit.io.pointcloud import PointCloudDataset

    ds = PointCloudDataset(paths, crs=None)
    for f in ds.files:
        if not crs_equal(f.crs, crs):
            raise CRSMismatchError(f"the points are in {crs_name(f.crs)}, the views in {crs_name(crs)}",
                                   path=f.path, hint="reproject the points into the views' CRS (crs.txt) first")
    has_normals = all(all(n in f.fields for n in NORMAL_FIELDS) for f in ds.files)
    fields = ("x", "y", "z", *NORMAL_FIELDS) if has_normals else ("x", "y", "z")
    try:
        pts = ds.read(bounds, fields=fields)
    except AOIError:
        raise AOIError("the points do not overlap the surface's box", path=str(paths[0]),
                       hint="pass points of the views' area (or an --aoi inside both)") from None
    xyz = np.stack([pts["x"], pts["y"], pts["z"]], 1)
    normals = np.stack([pts[n] for n in NORMAL_FIELDS], 1).astype(np.float64) if has_normals else None
    return ds, xyz, normals


def load_view_set(views_dir) -> ViewSet:
    """A view set that says which CRS its cameras are in (``crs.txt``); else MissingCRSError."""
    views = ViewSet.load(views_dir)
    if views.crs is None:
        raise MissingCRSError("the view set has no crs.txt", path=views.root,
                              hint="write the CRS of the cameras' world coordinates (e.g. EPSG:2154) into crs.txt")
    return views


def prepare_inputs(views_dir, cfg, *, points=None, aoi=None, bounds=None, points_xyz=None,
                   train_ids=None) -> SurfaceInputs:
    """Load and check every input of a fit (see the module docstring). Raises :mod:`geoimplicit.errors`.

    ``bounds`` (left, bottom, right, top in the views' CRS) bounds the box as an AOI does (a tile's context);
    ``points_xyz`` (N, 3) world points (a tile's routed points) instead of ``points`` files."""
    from geoimplicit.mpi.tiled import scene_height_range

    views = load_view_set(views_dir)
    ids = list(train_ids or views.train_ids)
    if not ids:
        raise CameraFileError("no train views", path=views.root, hint="list train ids in view_split.txt")
    missing = [i for i in ids if i not in views.cameras]
    if missing:
        raise CameraFileError(f"train views without image or camera: {', '.join(missing[:5])}", path=views.root)
    h_lo, h_hi = scene_height_range(views)
    aoi_bounds = None
    if aoi is not None:
        from geoimplicit.io.vector import read_aoi

        region = read_aoi(aoi, crs=views.crs)
        probe = default_box(views, ids, (h_lo, h_hi))
        region.require_overlap(probe.bounds, "the nadir view's footprint")
        aoi_bounds = region.bounds
    elif bounds is not None:
        aoi_bounds = tuple(float(v) for v in bounds)
    xyz = normals = None
    files = []
    if points_xyz is not None and len(points_xyz):
        xyz = np.asarray(points_xyz, np.float64).reshape(-1, 3)
    elif points:
        probe = default_box(views, ids, (h_lo, h_hi), cfg.margin_m, aoi_bounds)
        ds, xyz, normals = _read_points(list(points), views.crs, probe.bounds)
        if len(xyz) == 0:
            raise EmptyTileError("no points inside the surface's box", path=str(points[0]),
                                 hint="pass points of the views' area")
        files = [str(f.path) for f in ds.files]
    if xyz is not None:
        z_lo, z_hi = np.percentile(xyz[:, 2], [0.1, 99.9])
        h_lo, h_hi = min(h_lo, float(z_lo)), max(h_hi, float(z_hi))
    hm = cfg.height_margin_m
    box = default_box(views, ids, (h_lo - hm, h_hi + hm), cfg.margin_m, aoi_bounds)
    cams = [views.cameras[i].scaled(cfg.image_scale) if cfg.image_scale != 1 else views.cameras[i] for i in ids]
    cams = [c.with_origin(box.origin) for c in cams]
    local = None if xyz is None else xyz - box.origin
    return SurfaceInputs(views, ids, box, cams, local, normals, files)
