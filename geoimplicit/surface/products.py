"""Products of a fitted surface: the field for meshing, a DSM, renders and depth maps, Iso-Points as LAS/LAZ.

- :func:`sdf_field`: the SDF as a batched callable in the mesh library's field protocol (``origin``, ``level``,
  ``inside="below"``, ``device``, ``__call__(p (N, 3) float32 local offsets) -> (N,)``): what
  ``geoimplicit mesh --method sdf`` extracts (MISE + marching cubes at ``level``).
- :func:`dsm_heights` / :func:`dsm_tile`: the highest zero crossing per cell: each cell column is sampled
  downwards from the box's top and the first + to - change of sign refined by bisection.
- :func:`render_views`: images (PNG) and depth maps (float TIFF, z_cam) for camera files.
- :func:`export_iso_points`: Iso-Points on the final surface to LAS/LAZ 1.4 with normals and colours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geoimplicit.errors import EmptyTileError
from geoimplicit.outputs import check_output
from geoimplicit.progress import check_cancel
from geoimplicit.surface.model import SurfaceModel, load_surface

log = logging.getLogger(__name__)

__all__ = ["SDFField", "sdf_field", "dsm_heights", "cell_centres", "dsm_tile", "write_dsm", "render_views", "export_iso_points",
           "NODATA"]

NODATA = -9999.0


@dataclass
class SDFField:
    """The SDF of a surface model in the mesh library's field protocol (see the module docstring)."""

    model: SurfaceModel
    origin: tuple
    level: float = 0.0
    inside: str = "below"
    batch: int = 262144

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def bounds(self) -> tuple:
        """World (left, bottom, right, top) where the field is defined (the model's box)."""
        return self.model.box.bounds

    @property
    def height_range(self) -> tuple:
        return self.model.box.height_range

    @torch.no_grad()
    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        """SDF (N,) CRS units at offsets ``p`` (N, 3) from ``origin``."""
        shift = torch.as_tensor(np.asarray(self.origin) - self.model.box.origin, dtype=torch.float32,
                                device=self.model.device)
        p = p.to(self.model.device, torch.float32) + shift
        out = [self.model.sdf(p[i:i + self.batch]) for i in range(0, p.shape[0], self.batch)]
        return torch.cat(out) if out else p.new_zeros(0)


def sdf_field(model, origin=None) -> SDFField:
    """The SDF of ``model`` (a :class:`SurfaceModel` or a model folder) as a field about ``origin`` (default:
    the model's local origin)."""
    if not isinstance(model, SurfaceModel):
        model = load_surface(model)
    return SDFField(model, tuple(model.box.origin if origin is None else np.asarray(origin, np.float64)))


@torch.no_grad()
def dsm_heights(model: SurfaceModel, xy_world: np.ndarray, *, step_m: float | None = None,
                bisect: int = 12) -> np.ndarray:
    """Height of the highest zero crossing above world points ``xy_world`` (N, 2); NaN where a column has
    none (or lies outside the box). ``step_m``: sample spacing down the column (default: a 64th of the box's
    height, at most 0.5 CRS units)."""
    box = model.box
    dev = model.device
    xy = np.asarray(xy_world, np.float64)[:, :2] - box.origin[:2]
    z_lo, z_hi = float(box.lo[2]), float(box.hi[2])
    step = float(step_m or min(0.5, (z_hi - z_lo) / 64))
    zs = torch.arange(z_hi, z_lo - 1e-9, -step, device=dev, dtype=torch.float32)
    out = np.full(len(xy), np.nan)
    inside = (xy[:, 0] >= box.lo[0]) & (xy[:, 0] <= box.hi[0]) & (xy[:, 1] >= box.lo[1]) & (xy[:, 1] <= box.hi[1])
    idx_all = np.nonzero(inside)[0]
    per = max(1, 262144 // len(zs))
    for i in range(0, len(idx_all), per):
        idx = idx_all[i:i + per]
        c = torch.as_tensor(xy[idx], dtype=torch.float32, device=dev)
        n, s = c.shape[0], zs.shape[0]
        pts = torch.cat([c[:, None].expand(n, s, 2), zs[None, :, None].expand(n, s, 1)], 2).reshape(-1, 3)
        f = torch.cat([model.sdf(pts[j:j + 262144]) for j in range(0, pts.shape[0], 262144)]).reshape(n, s)
        change = (f[:, :-1] > 0) & (f[:, 1:] <= 0)
        has = change.any(1)
        k = change.float().argmax(1)
        hi_z, lo_z = zs[k], zs[k + 1]  # hi: outside (f > 0), lo: inside
        for _ in range(bisect):
            mid = 0.5 * (hi_z + lo_z)
            fm = model.sdf(torch.cat([c, mid[:, None]], 1))
            hi_z, lo_z = torch.where(fm > 0, mid, hi_z), torch.where(fm > 0, lo_z, mid)
        z = 0.5 * (hi_z + lo_z)
        res = np.where(has.cpu().numpy(), z.cpu().numpy().astype(np.float64) + box.origin[2], np.nan)
        out[idx] = res
    return out


def cell_centres(grid) -> tuple[np.ndarray, tuple[int, int]]:
    """World (x, y) of every cell centre of a map grid (anything with ``bounds`` and ``resolution``), row-major
    from the top-left, (N, 2); and the grid's (rows, cols)."""
    left, bottom, right, top = grid.bounds
    res = float(grid.resolution)
    cols, rows = int(round((right - left) / res)), int(round((top - bottom) / res))
    xx, yy = np.meshgrid(left + (np.arange(cols) + 0.5) * res, top - (np.arange(rows) + 0.5) * res)
    return np.stack([xx.ravel(), yy.ravel()], 1), (rows, cols)


def dsm_tile(model, grid, **kw):
    """Heights on a map grid (a :class:`geoimplicit.tiling.grid.GridSpec` or anything with ``bounds`` and
    ``resolution``) from the SDF: returns (height (rows, cols) float32, valid (rows, cols) bool), the value of
    each cell at its centre. The DSM method and the job layer call this."""
    if not isinstance(model, SurfaceModel):
        model = load_surface(model)
    xy, shape = cell_centres(grid)
    h = dsm_heights(model, xy, **kw).reshape(shape)
    valid = np.isfinite(h)
    return np.where(valid, h, NODATA).astype(np.float32), valid


def render_views(model_dir, cams_dir, out_dir, *, device="auto", width=None, height=None, overwrite=False,
                 progress=None, cancel=None) -> dict:
    """Render every camera file of ``cams_dir`` (a ``Cams/`` or ``Track/`` folder, or a view set) with the
    surface of ``model_dir``: ``out_dir/Images/<id>.png`` and ``out_dir/Depths/<id>.tiff`` (z_cam, 0 where no
    surface). Cameras without an image size take the train images' (or ``width`` x ``height``)."""
    from geoimplicit.device import resolve_device
    from geoimplicit.io.cameras import read_cameras_dir
    from geoimplicit.mpi.render import _camera_folder, write_depth_tiff, write_png
    from geoimplicit.outputs import atomic_output

    out_dir = check_output(out_dir, overwrite)
    model = load_surface(model_dir, resolve_device(device))
    cams = read_cameras_dir(_camera_folder(Path(cams_dir)))
    size = _image_size(model, width, height)
    with atomic_output(out_dir, overwrite) as tmp:
        (tmp / "Images").mkdir(parents=True)
        (tmp / "Depths").mkdir()
        for i, (vid, cam) in enumerate(cams.items()):
            check_cancel(cancel)
            if cam.width is None or width is not None:
                cam.width, cam.height = size
            rgb, depth = model.render_camera(cam)
            write_png(tmp / "Images" / f"{vid}.png", rgb)
            write_depth_tiff(tmp / "Depths" / f"{vid}.tiff", np.nan_to_num(depth, nan=0.0))
            if progress is not None:
                progress(i + 1, len(cams), "render", vid)
    return {"images": out_dir / "Images", "depths": out_dir / "Depths"}


def _image_size(model: SurfaceModel, width, height) -> tuple[int, int]:
    if width is not None and height is not None:
        return int(width), int(height)
    views = model.meta.get("views") if hasattr(model, "meta") else None
    ids = model.meta.get("train_ids", []) if hasattr(model, "meta") else []
    if views and ids:
        from geoimplicit.io.cameras import _image_size as size_of

        for suffix in (".png", ".jpg", ".tif", ".tiff"):
            p = Path(views) / "Images" / f"{ids[0]}{suffix}"
            if p.is_file():
                return size_of(p)
    raise EmptyTileError("the cameras have no image size", hint="pass --size WIDTH HEIGHT")


@torch.no_grad()
def _nadir_colours(model: SurfaceModel, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    from geoimplicit.surface.networks import sdf_and_gradient

    down = torch.tensor([0.0, 0.0, -1.0], device=x.device).expand_as(x)
    out = []
    for i in range(0, x.shape[0], 65536):
        _, g, feat = sdf_and_gradient(model.sdf_net, x[i:i + 65536], create_graph=False)
        out.append(model.colour_net(x[i:i + 65536], g, down[i:i + 65536], feat))
    return torch.cat(out) if out else x.new_zeros(0, 3)


def export_iso_points(model, path, *, count: int = 4096, seeds: torch.Tensor | None = None,
                      overwrite: bool = False) -> Path:
    """Iso-Points of the final surface (projected from ``seeds`` or box samples, spread uniformly) to LAS/LAZ
    1.4 with normals (extra bytes) and colours seen from above, in the model's CRS."""
    from geoimplicit.surface.isopoints import IsoPoints, write_iso_points

    if not isinstance(model, SurfaceModel):
        model = load_surface(model)
    check_output(path, overwrite)
    iso = IsoPoints(count, model.box, model.device)
    iso.initialise(model.sdf_net, seeds)
    rgb = _nadir_colours(model, iso.points, iso.normals)
    return write_iso_points(path, iso.points.cpu().numpy(), iso.normals.cpu().numpy(), model.box,
                            rgb=rgb.cpu().numpy(), overwrite=overwrite)


def write_dsm(model_dir, path, resolution: float, *, device="auto", overwrite: bool = False) -> Path:
    """The DSM of one fitted surface over its box (grid snapped to ``resolution``) as a GeoTIFF."""
    from geoimplicit.device import resolve_device
    from geoimplicit.io.raster import write_geotiff
    from geoimplicit.tiling.grid import GridSpec

    check_output(path, overwrite)
    model = load_surface(model_dir, resolve_device(device))
    box = model.box
    grid = GridSpec.from_bounds(box.bounds, resolution, box.crs_wkt)
    height, _ = dsm_tile(model, grid)
    tags = {"method": "sdf", "model": str(Path(model_dir).resolve())}
    return write_geotiff(path, height, grid.transform, box.crs_wkt, nodata=NODATA, tags=tags, overwrite=overwrite)
