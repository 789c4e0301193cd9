"""Batched, differentiable projection and back-projection in torch (float64 for geometry).

Shapes: ``*`` is any batch shape (cameras), ``N`` the number of points per camera. Conventions as in
:mod:`geoimplicit.geometry.cameras` (world-to-camera extrinsics, OpenCV axes, pixel centres at integers).
"""

from __future__ import annotations

import torch

from geoimplicit.geometry.checks import check_shape

__all__ = [
    "transform_points",
    "project_pinhole",
    "unproject_pinhole",
    "project_affine",
    "unproject_affine",
    "affine_view_direction",
    "homogeneous",
]


def homogeneous(x: torch.Tensor) -> torch.Tensor:
    """Append a 1 to the last dimension: (*, N, k) -> (*, N, k + 1)."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def transform_points(E: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Rigid transform ``E`` (*, 4, 4) or (*, 3, 4) of points (*, N, 3): ``R @ x + t``.

    >>> E = torch.eye(4, dtype=torch.float64); E[:3, 3] = torch.tensor([1.0, 2, 3])
    >>> transform_points(E, torch.zeros(1, 3, dtype=torch.float64)).tolist()
    [[1.0, 2.0, 3.0]]
    """
    if E.shape[-2:] != (3, 4):
        check_shape(E, ["*", 4, 4], "E")
    check_shape(xyz, ["*", "N", 3], "xyz")
    return xyz @ E[..., :3, :3].transpose(-1, -2) + E[..., None, :3, 3]


def project_pinhole(K: torch.Tensor, E: torch.Tensor, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (*, N, 3) through intrinsics K (*, 3, 3) and world-to-camera E (*, 4, 4) -> pixels
    ``uv`` (*, N, 2) and depth ``z_cam`` (*, N).

    >>> K = torch.tensor([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]], dtype=torch.float64)
    >>> uv, z = project_pinhole(K, torch.eye(4, dtype=torch.float64), torch.tensor([[1.0, 0, 5]], dtype=torch.float64))
    >>> uv.tolist(), z.tolist()
    ([[70.0, 50.0]], [5.0])
    """
    check_shape(K, ["*", 3, 3], "K")
    xc = transform_points(E, xyz)
    proj = xc @ K.transpose(-1, -2)
    depth = proj[..., 2]
    return proj[..., :2] / depth[..., None], xc[..., 2]


def unproject_pinhole(K: torch.Tensor, E: torch.Tensor, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Pixels ``uv`` (*, N, 2) at depths ``z_cam`` (*, N) -> world points (*, N, 3) (inverse of
    :func:`project_pinhole`)."""
    check_shape(K, ["*", 3, 3], "K")
    dims = check_shape(uv, ["*", "N", 2], "uv")
    check_shape(depth, ["*", "N"], "depth", {"N": dims["N"]})
    rays = homogeneous(uv) @ torch.linalg.inv(K).transpose(-1, -2)
    xc = rays * depth[..., None]
    R, t = E[..., :3, :3], E[..., None, :3, 3]
    return (xc - t) @ R  # R^T (x_cam - t)


def affine_view_direction(P: torch.Tensor) -> torch.Tensor:
    """Unit viewing direction (*, 3) of affine cameras P (*, 2, 4), pointing down (negative z)."""
    check_shape(P, ["*", 2, 4], "P")
    d = torch.linalg.cross(P[..., 0, :3], P[..., 1, :3], dim=-1)
    d = d / torch.linalg.norm(d, dim=-1, keepdim=True)
    return torch.where(d[..., 2:3] > 0, -d, d)


def project_affine(P: torch.Tensor, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (*, N, 3) through affine cameras P (*, 2, 4) -> ``uv`` (*, N, 2) and the depth along the
    view direction (*, N)."""
    check_shape(P, ["*", 2, 4], "P")
    check_shape(xyz, ["*", "N", 3], "xyz")
    uv = xyz @ P[..., :3].transpose(-1, -2) + P[..., None, :, 3]
    depth = (xyz * affine_view_direction(P)[..., None, :]).sum(-1)
    return uv, depth


def unproject_affine(P: torch.Tensor, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Pixels ``uv`` (*, N, 2) at depths along the view direction (*, N) -> world points (*, N, 3)."""
    from geoimplicit.geometry.rays import affine_rays

    dims = check_shape(uv, ["*", "N", 2], "uv")
    check_shape(depth, ["*", "N"], "depth", {"N": dims["N"]})
    origins, dirs = affine_rays(P, uv)
    return origins + depth[..., None] * dirs
