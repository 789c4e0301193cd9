"""Plane-to-camera homographies for pinhole (K[R|t]) and affine (2x4) cameras, in float64 torch.

For a plane with ``X = A @ [a, b, 1]`` (texture pixel -> local world) and a camera with 3x4 matrix ``P``
(``K [R | t]``, or ``[P_affine; 0 0 0 1]`` for an affine camera), ``H = P @ [A; 0 0 1]`` maps texture pixels to
target pixels, so ``H^-1`` maps target pixels ``p = [u, v, 1]`` back onto the plane texture: ``q = H^-1 p``,
``(a, b) = q[:2] / q[2]``. For a pinhole camera ``q[2] = 1 / z_cam`` (the plane's depth at that pixel); for an
affine camera ``q[2] = 1`` and the depth along the viewing direction is linear in ``p``.

Everything geometric is float64 and in local coordinates (the MPI's ``origin`` subtracted); the per-pixel maps
handed to the renderer are float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geoimplicit.io.cameras import AffineCamera, PinholeCamera

__all__ = ["RenderCamera", "render_camera", "plane_homographies", "PlaneWarp", "so3_exp", "pixel_grid"]


@dataclass
class RenderCamera:
    """A camera as float64 tensors, in the MPI's local coordinates."""

    kind: str  # "pinhole" | "affine"
    P: torch.Tensor  # (3, 4)
    Kinv: torch.Tensor | None  # (3, 3) pinhole only
    view_dir: torch.Tensor | None  # (3,) affine only, unit, pointing away from the sensor
    width: int
    height: int


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (3, 3) of an axis-angle vector (3,) (Rodrigues; differentiable at 0)."""
    theta2 = (w * w).sum()
    theta = torch.sqrt(theta2 + 1e-30)
    Kx = torch.zeros(3, 3, dtype=w.dtype, device=w.device)
    Kx[0, 1], Kx[0, 2], Kx[1, 0] = -w[2], w[1], w[2]
    Kx[1, 2], Kx[2, 0], Kx[2, 1] = -w[0], -w[1], w[0]
    small = theta2 < 1e-12
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-30))
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * Kx + b * (Kx @ Kx)


def render_camera(
    cam: PinholeCamera | AffineCamera,
    origin=None,
    *,
    device="cpu",
    pose_delta: torch.Tensor | None = None,
    width: int | None = None,
    height: int | None = None,
) -> RenderCamera:
    """Tensors of ``cam`` re-expressed about ``origin`` (world coordinates, float64).

    ``pose_delta`` (6,) = (axis-angle, translation) is a correction applied in the camera frame,
    ``X_cam' = exp(w) X_cam + dt`` (pinhole; for affine cameras, a shift of the image by ``dt[:2]`` pixels and a
    rotation of the image plane by ``w[2]``), differentiable for camera refinement.
    """
    if origin is not None:
        cam = cam.with_origin(origin)
    w = width if width is not None else cam.width
    h = height if height is not None else cam.height
    if w is None or h is None:
        raise ValueError("render_camera: image size unknown; pass width and height")
    f64 = dict(dtype=torch.float64, device=device)
    if isinstance(cam, PinholeCamera):
        ext = torch.as_tensor(cam.extrinsic, **f64)
        K = torch.as_tensor(cam.intrinsic, **f64)
        if pose_delta is not None:
            delta = pose_delta.to(**f64)
            corr = torch.eye(4, **f64)
            corr = torch.cat([torch.cat([so3_exp(delta[:3]), delta[3:6, None]], 1), corr[3:]], 0)
            ext = corr @ ext
        P = K @ ext[:3]
        return RenderCamera("pinhole", P, torch.linalg.inv(K), None, int(w), int(h))
    if isinstance(cam, AffineCamera):
        P = torch.zeros(3, 4, **f64)
        P[:2] = torch.as_tensor(cam.P, **f64)
        P[2, 3] = 1.0
        if pose_delta is not None:
            delta = pose_delta.to(**f64)
            c, s = torch.cos(delta[2]), torch.sin(delta[2])
            M = torch.stack([torch.stack([c, -s, delta[3]]), torch.stack([s, c, delta[4]]),
                             torch.tensor([0.0, 0.0, 1.0], **f64)])
            P = M @ P
        vd = torch.as_tensor(cam.view_direction, **f64)
        return RenderCamera("affine", P, None, vd, int(w), int(h))
    raise TypeError(f"render_camera: unsupported camera type {type(cam).__name__}")


@dataclass
class PlaneWarp:
    """Per-plane maps from target pixels, for one camera.

    ``Hinv`` (D, 3, 3): target pixel -> plane texture (homogeneous). ``depth_rows`` (D, 3): the plane's depth at
    ``p`` is ``1 / (Hinv[2] . p)`` (pinhole, ``inverse_depth``) or ``depth_rows . p`` (affine). ``order``: plane
    indices from front to back for this camera. ``Kinv`` for ray lengths (pinhole), else None.
    """

    Hinv: torch.Tensor
    depth_rows: torch.Tensor
    inverse_depth: bool
    order: torch.Tensor
    Kinv: torch.Tensor | None
    width: int
    height: int


def plane_homographies(A: torch.Tensor | np.ndarray, cam: RenderCamera) -> PlaneWarp:
    """Homographies from ``cam``'s pixels onto each plane (float64), and the front-to-back order."""
    A = torch.as_tensor(A, dtype=torch.float64, device=cam.P.device)
    D = A.shape[0]
    bottom = torch.zeros(D, 1, 3, dtype=torch.float64, device=A.device)
    bottom[:, 0, 2] = 1.0
    A4 = torch.cat([A, bottom], dim=1)  # (D, 4, 3)
    H = cam.P.unsqueeze(0) @ A4  # (D, 3, 3)
    Hinv = torch.linalg.inv(H)
    centre = torch.tensor([(cam.width - 1) / 2, (cam.height - 1) / 2, 1.0], dtype=torch.float64, device=A.device)
    if cam.kind == "pinhole":
        depth_rows = Hinv[:, 2, :]
        depth_c = 1.0 / (depth_rows @ centre)
        inverse = True
    else:
        depth_rows = torch.einsum("i,dij,djk->dk", cam.view_dir, A, Hinv)  # (D, 3): d^T A H^-1
        depth_c = depth_rows @ centre
        inverse = False
    order = torch.argsort(depth_c.detach())
    return PlaneWarp(Hinv, depth_rows, inverse, order, cam.Kinv, cam.width, cam.height)


def pixel_grid(width: int, height: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Homogeneous pixel centres (3, H*W): u = col, v = row."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width, device=device, dtype=dtype)])
