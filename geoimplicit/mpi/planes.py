"""MPI plane layouts: where each plane lies in the (local) world and how its texture pixels map onto it.

A plane set stores, for each plane ``d``, a 3x3 float64 matrix ``A[d]`` with ``X_local = A[d] @ [a, b, 1]``: the
local-world point of texture pixel ``(a, b)`` (col, row; pixel centres at integers). Two layouts:

- ``fronto`` (ImMPI): planes fronto-parallel to a reference camera, at depths uniform in disparity between the
  camera's ``depth_min`` and ``depth_max``; the texture is the reference image (plus a margin).
- ``geo``: horizontal planes at world heights between ``height_min`` and ``height_max`` (uniform, or given, e.g.
  placed where the scene's surfaces are: ``FitConfig.plane_placement``), textured on a map grid
  (``left``, ``top``, ``resolution``), so that one MPI serves every view of a tile and a nadir orthographic
  render lands straight in map space.

Coordinates are local: ``origin`` (float64, CRS units) was subtracted from the world before anything here.
Planes are ordered from the reference viewpoint's front (near / high) to the back (far / low).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geoimplicit.geometry.cameras import PinholeCamera

__all__ = ["PlaneSet", "fronto_planes", "geo_planes"]


@dataclass
class PlaneSet:
    """Geometry of an MPI's planes (float64, local coordinates)."""

    layout: str
    A: np.ndarray  # (D, 3, 3)
    values: np.ndarray  # (D,) depth (fronto) or height (geo) of each plane, local units
    width: int  # texture width (columns)
    height: int  # texture height (rows)
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    crs: str | None = None
    left: float | None = None  # geo: texture grid, local coordinates
    top: float | None = None
    resolution: float | None = None
    ref_camera: PinholeCamera | None = None  # fronto: reference camera (local coordinates, texture-sized)

    @property
    def num_planes(self) -> int:
        return int(self.A.shape[0])

    @property
    def spacing(self) -> float:
        """Mean distance between neighbouring planes (world units)."""
        return float(np.mean(np.abs(np.diff(self.values)))) if self.num_planes > 1 else 1.0

    def plane_points(self, d: int, ab: np.ndarray) -> np.ndarray:
        """Local-world points (N, 3) of texture pixels ``ab`` (N, 2) on plane ``d``."""
        ab = np.asarray(ab, dtype=np.float64).reshape(-1, 2)
        homo = np.concatenate([ab, np.ones((len(ab), 1))], axis=1)
        return homo @ self.A[d].T

    def to_dict(self) -> dict:
        out = {
            "layout": self.layout,
            "A": self.A.tolist(),
            "values": self.values.tolist(),
            "width": self.width,
            "height": self.height,
            "origin": np.asarray(self.origin, dtype=np.float64).tolist(),
            "crs": self.crs,
            "left": self.left,
            "top": self.top,
            "resolution": self.resolution,
        }
        if self.ref_camera is not None:
            c = self.ref_camera
            out["ref_camera"] = {
                "extrinsic": c.extrinsic.tolist(),
                "intrinsic": c.intrinsic.tolist(),
                "depth_min": c.depth_min,
                "depth_max": c.depth_max,
                "width": c.width,
                "height": c.height,
            }
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "PlaneSet":
        ref = d.get("ref_camera")
        return cls(
            layout=d["layout"],
            A=np.asarray(d["A"], dtype=np.float64),
            values=np.asarray(d["values"], dtype=np.float64),
            width=int(d["width"]),
            height=int(d["height"]),
            origin=np.asarray(d.get("origin", [0, 0, 0]), dtype=np.float64),
            crs=d.get("crs"),
            left=d.get("left"),
            top=d.get("top"),
            resolution=d.get("resolution"),
            ref_camera=None if ref is None else PinholeCamera(**ref),
        )


def fronto_planes(
    ref_camera: PinholeCamera,
    num_planes: int = 32,
    *,
    margin: float = 0.0,
    depth_min: float | None = None,
    depth_max: float | None = None,
    origin=(0.0, 0.0, 0.0),
    crs: str | None = None,
) -> PlaneSet:
    """ImMPI planes fronto-parallel to ``ref_camera`` (local coordinates), uniform in disparity.

    ``margin`` enlarges the texture by that fraction of the image on each side, so that views looking a little
    past the reference image still find planes.
    """
    if ref_camera.width is None or ref_camera.height is None:
        raise ValueError("fronto_planes: the reference camera needs width and height")
    dmin = ref_camera.depth_min if depth_min is None else float(depth_min)
    dmax = ref_camera.depth_max if depth_max is None else float(depth_max)
    mx = int(round(ref_camera.width * margin))
    my = int(round(ref_camera.height * margin))
    cam = ref_camera.cropped(-mx, -my, ref_camera.width + 2 * mx, ref_camera.height + 2 * my)
    disparity = np.linspace(1.0 / dmin, 1.0 / dmax, num_planes) if num_planes > 1 else np.array([2 / (dmin + dmax)])
    depths = 1.0 / disparity
    Kinv = np.linalg.inv(cam.intrinsic)
    Rt = cam.R.T
    A = np.empty((num_planes, 3, 3))
    for i, z in enumerate(depths):
        # X = R^T (z K^-1 [a, b, 1] - t)
        A[i] = z * Rt @ Kinv
        A[i][:, 2] -= Rt @ cam.t
    return PlaneSet("fronto", A, depths, cam.width, cam.height, np.asarray(origin, float), crs, ref_camera=cam)


def geo_planes(
    bounds_local: tuple[float, float, float, float],
    resolution: float,
    height_min: float,
    height_max: float,
    num_planes: int = 32,
    *,
    origin=(0.0, 0.0, 0.0),
    crs: str | None = None,
    heights=None,
) -> PlaneSet:
    """Horizontal planes at local heights from ``height_max`` (front, top) down to ``height_min``: uniform, or
    the given ``heights`` (sorted high to low here; ``num_planes``, ``height_min`` and ``height_max`` are then
    ignored).

    The texture is the map grid of ``bounds_local`` (left, bottom, right, top) at ``resolution``: texture pixel
    (col, row) is the pixel-is-area cell whose centre is ``(left + (col + .5) res, top - (row + .5) res)``.
    """
    left, bottom, right, top = (float(v) for v in bounds_local)
    res = float(resolution)
    width = max(1, int(round((right - left) / res)))
    height = max(1, int(round((top - bottom) / res)))
    if heights is not None:
        heights = np.sort(np.asarray(heights, dtype=np.float64).ravel())[::-1].copy()
        num_planes = len(heights)
    else:
        heights = np.linspace(height_max, height_min, num_planes) if num_planes > 1 else np.array([height_min])
    A = np.zeros((num_planes, 3, 3))
    A[:, 0, 0] = res
    A[:, 0, 2] = left + 0.5 * res
    A[:, 1, 1] = -res
    A[:, 1, 2] = top - 0.5 * res
    A[:, 2, 2] = heights
    return PlaneSet("geo", A, heights, width, height, np.asarray(origin, float), crs, left, top, res)
