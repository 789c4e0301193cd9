"""Rays through pixels (origins + unit directions), batched and differentiable, for pinhole and affine cameras.

Pinhole: the origin is the camera centre, ``direction = normalise(R^T K^-1 [u, v, 1])``. Affine: the direction
is the view direction (the same for every pixel) and the origin is the ray's point at depth 0 (in the plane
through the world origin perpendicular to the view direction), so that ray length = depth along the view.
"""

from __future__ import annotations

import torch

from geoimplicit.geometry.checks import check_shape
from geoimplicit.geometry.projection import affine_view_direction, homogeneous

__all__ = ["pixel_grid", "pixel_uv", "pinhole_rays", "affine_rays"]


def pixel_grid(width: int, height: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Homogeneous pixel centres (3, H*W), row-major: u = col, v = row.

    >>> pixel_grid(2, 1).tolist()
    [[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    """
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width, device=device, dtype=dtype)])


def pixel_uv(width: int, height: int, device="cpu", dtype=torch.float64) -> torch.Tensor:
    """Pixel centres (H*W, 2) as (u, v), row-major (the order of ``image.reshape(-1, C)``)."""
    return pixel_grid(width, height, device, dtype)[:2].T


def pinhole_rays(K: torch.Tensor, E: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of pixels ``uv`` (*, N, 2) of pinhole cameras (K (*, 3, 3), world-to-camera E (*, 4, 4)): origins
    (*, N, 3) and unit directions (*, N, 3) in world coordinates.

    >>> K = torch.tensor([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]], dtype=torch.float64)
    >>> o, d = pinhole_rays(K, torch.eye(4, dtype=torch.float64), torch.tensor([[50.0, 50.0]], dtype=torch.float64))
    >>> (o + 0.0).tolist(), d.tolist()
    ([[0.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]])
    """
    check_shape(K, ["*", 3, 3], "K")
    check_shape(E, ["*", 4, 4], "E")
    check_shape(uv, ["*", "N", 2], "uv")
    R, t = E[..., :3, :3], E[..., :3, 3]
    d = homogeneous(uv) @ torch.linalg.inv(K).transpose(-1, -2) @ R  # (R^T K^-1 p)^T
    d = d / torch.linalg.norm(d, dim=-1, keepdim=True)
    centre = -(R.transpose(-1, -2) @ t[..., None])[..., 0]
    return centre[..., None, :].expand_as(d), d


def affine_rays(P: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of pixels ``uv`` (*, N, 2) of affine cameras P (*, 2, 4): origins at depth 0 (*, N, 3), unit view
    directions (*, N, 3)."""
    check_shape(P, ["*", 2, 4], "P")
    check_shape(uv, ["*", "N", 2], "uv")
    M = P[..., :3]
    pinv = M.transpose(-1, -2) @ torch.linalg.inv(M @ M.transpose(-1, -2))  # (*, 3, 2)
    origins = (uv - P[..., None, :, 3]) @ pinv.transpose(-1, -2)
    d = affine_view_direction(P)[..., None, :]
    return origins, d.expand_as(origins)
