"""Homographies induced by world planes, for any projective camera (pinhole ``K [R | t]``, affine ``[P; 0 0 0 1]``).

A world plane is given by a map ``B`` (4, 3) from plane coordinates ``[a, b, 1]`` to homogeneous world points
(``plane_basis`` builds one for ``n . X = d``; an MPI plane's texture map is another). A camera with 3x4 matrix
``P`` sees the plane through ``G = P @ B`` (plane -> pixels), so a plane maps pixels of camera ``a`` to pixels of
camera ``b`` by ``H = (P_b B) (P_a B)^-1``. This is exact for affine cameras as well (no pinhole algebra needed).
"""

from __future__ import annotations

import numpy as np
import torch

from geoimplicit.geometry.checks import check_shape
from geoimplicit.geometry.projection import homogeneous

__all__ = ["plane_basis", "plane_to_image", "homography_from_plane", "apply_homography", "camera_homography"]


def plane_basis(normal: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """A map B (*, 4, 3) from plane coordinates ``[a, b, 1]`` (world units along two orthonormal in-plane axes,
    about the plane's point nearest the origin) to homogeneous world points of the plane ``n . X = d``
    (normal (*, 3), distance (*); the normal need not be unit).

    >>> B = plane_basis(torch.tensor([0.0, 0, 1], dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64))
    >>> (B @ torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64))[2:].tolist()
    [5.0, 1.0]
    """
    check_shape(normal, ["*", 3], "normal")
    norm = torch.linalg.norm(normal, dim=-1, keepdim=True)
    n = normal / norm
    d = distance[..., None] / norm
    helper = torch.zeros_like(n)
    use_x = n[..., 0:1].abs() < 0.9
    helper[..., 0:1] = use_x.to(n.dtype)
    helper[..., 1:2] = (~use_x).to(n.dtype)
    e1 = torch.linalg.cross(helper, n, dim=-1)
    e1 = e1 / torch.linalg.norm(e1, dim=-1, keepdim=True)
    e2 = torch.linalg.cross(n, e1, dim=-1)
    top = torch.stack([e1, e2, n * d], dim=-1)  # (*, 3, 3)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 2] = 1.0
    return torch.cat([top, bottom], dim=-2)


def plane_to_image(P: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Homography (*, 3, 3) from plane coordinates to pixels of cameras P (*, 3, 4): ``P @ B``."""
    check_shape(P, ["*", 3, 4], "P")
    check_shape(B, ["*", 4, 3], "B")
    return P @ B


def homography_from_plane(P_src: torch.Tensor, P_dst: torch.Tensor, normal: torch.Tensor,
                          distance: torch.Tensor) -> torch.Tensor:
    """Homography H (*, 3, 3) taking pixels of camera ``P_src`` (*, 3, 4) to pixels of ``P_dst`` (*, 3, 4) through
    the world plane ``normal . X = distance`` (normal (*, 3), distance (*)), differentiable in all of them.

    For pinhole cameras with the source at ``[I | 0]`` this is the textbook ``K_b (R - t n^T / d) K_a^-1``.
    """
    B = plane_basis(normal, distance)
    return plane_to_image(P_dst, B) @ torch.linalg.inv(plane_to_image(P_src, B))


def apply_homography(H: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Map pixels ``uv`` (*, N, 2) by homographies H (*, 3, 3) -> (*, N, 2)."""
    check_shape(H, ["*", 3, 3], "H")
    check_shape(uv, ["*", "N", 2], "uv")
    q = homogeneous(uv) @ H.transpose(-1, -2)
    return q[..., :2] / q[..., 2:3]


def camera_homography(src, dst, normal, distance) -> np.ndarray:
    """numpy float64 convenience: the (3, 3) homography from ``src``'s pixels to ``dst``'s pixels through the plane
    ``normal . X = distance`` (world coordinates of the cameras); cameras with ``projection_matrix()``."""
    f64 = dict(dtype=torch.float64)
    H = homography_from_plane(torch.as_tensor(src.projection_matrix(), **f64),
                              torch.as_tensor(dst.projection_matrix(), **f64),
                              torch.as_tensor(np.asarray(normal, np.float64), **f64),
                              torch.as_tensor(float(distance), **f64))
    return H.numpy()
