"""Cameras as float64 torch tensors in local coordinates: what renderers and fits use.

:func:`camera_tensors` turns a numpy camera (world coordinates) into a :class:`CameraTensors` about a local
origin, optionally with a pose correction (a rigid world motion ``M``, from :mod:`geoimplicit.geometry.pose`)
applied before anything is projected: the corrected camera sees the world as the original saw ``M^-1 X``, so
``P' = P @ M^-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geoimplicit.geometry.cameras import AffineCamera, PinholeCamera
from geoimplicit.geometry.checks import check_shape
from geoimplicit.geometry.projection import project_affine, project_pinhole
from geoimplicit.geometry.rays import affine_rays, pinhole_rays, pixel_uv

__all__ = ["CameraTensors", "camera_tensors"]


@dataclass
class CameraTensors:
    """One camera as float64 tensors in local coordinates.

    ``kind``: ``"pinhole"`` or ``"affine"``. ``P`` (3, 4): ``K [R | t]``, or ``[P_affine; 0 0 0 1]``. Pinhole
    only: ``K`` (3, 3), ``E`` (4, 4) world-to-camera. Affine only: ``view_dir`` (3,), unit, pointing away from the
    sensor.
    """

    kind: str
    P: torch.Tensor
    K: torch.Tensor | None
    E: torch.Tensor | None
    view_dir: torch.Tensor | None
    width: int
    height: int

    @property
    def Kinv(self) -> torch.Tensor | None:
        return None if self.K is None else torch.linalg.inv(self.K)

    @property
    def center(self) -> torch.Tensor | None:
        """Pinhole camera centre (3,) in local coordinates."""
        if self.E is None:
            return None
        return -self.E[:3, :3].T @ self.E[:3, 3]

    def project(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local points (N, 3) -> pixels (N, 2) and depth (N,) (``z_cam``, or along the view direction)."""
        check_shape(xyz, ["N", 3], "xyz")
        if self.kind == "pinhole":
            return project_pinhole(self.K, self.E, xyz)
        return project_affine(self.P[:2], xyz)

    def rays(self, uv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and unit directions (N, 3) of pixels ``uv`` (N, 2); all pixel centres, row-major, if None."""
        if uv is None:
            uv = pixel_uv(self.width, self.height, self.P.device, self.P.dtype)
        if self.kind == "pinhole":
            return pinhole_rays(self.K, self.E, uv)
        return affine_rays(self.P[:2], uv)

    def moved(self, motion_inv: torch.Tensor) -> "CameraTensors":
        """The camera after a rigid world motion whose inverse is ``motion_inv`` (4, 4): ``P' = P @ M^-1``."""
        check_shape(motion_inv, [4, 4], "motion_inv")
        m = motion_inv.to(self.P)
        E = None if self.E is None else self.E @ m
        P = self.P @ m if E is None else self.K @ E[:3]
        vd = self.view_dir if self.view_dir is None else m[:3, :3].T @ self.view_dir
        return CameraTensors(self.kind, P, self.K, E, vd, self.width, self.height)


def camera_tensors(
    cam: PinholeCamera | AffineCamera,
    origin=None,
    *,
    device="cpu",
    motion_inv: torch.Tensor | None = None,
    width: int | None = None,
    height: int | None = None,
) -> CameraTensors:
    """Tensors of ``cam`` re-expressed about ``origin`` (world coordinates, float64), optionally moved by a pose
    correction (``motion_inv``: the inverse rigid motion (4, 4) in local coordinates, differentiable)."""
    if origin is not None:
        cam = cam.with_origin(origin)
    w = width if width is not None else cam.width
    h = height if height is not None else cam.height
    if w is None or h is None:
        raise ValueError("camera_tensors: image size unknown; pass width and height")
    f64 = dict(dtype=torch.float64, device=device)
    if isinstance(cam, PinholeCamera):
        E = torch.as_tensor(cam.extrinsic, **f64)
        K = torch.as_tensor(cam.intrinsic, **f64)
        out = CameraTensors("pinhole", K @ E[:3], K, E, None, int(w), int(h))
    elif isinstance(cam, AffineCamera):
        P = torch.zeros(3, 4, **f64)
        P[:2] = torch.as_tensor(cam.P, **f64)
        P[2, 3] = 1.0
        out = CameraTensors("affine", P, None, None, torch.as_tensor(cam.view_direction, **f64), int(w), int(h))
    else:
        raise TypeError(f"camera_tensors: unsupported camera type {type(cam).__name__}")
    return out if motion_inv is None else out.moved(motion_inv)
