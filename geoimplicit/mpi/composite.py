"""Reference PyTorch renderer: bilinear warping of every plane into a target camera and over-compositing.

Front to back over the planes sorted for the target camera, with ``alpha_i = 1 - exp(-density_i * spacing_i)``,
``spacing_i`` the distance along the ray to the next plane (the last plane gets :data:`LAST_SPACING`, i.e. it is
an opaque backdrop wherever its density is positive), transmittance ``T_i = prod_{j<i} (1 - alpha_j)`` and
weights ``w_i = T_i alpha_i``. Outputs: colour ``sum w_i c_i``, accumulated opacity ``sum w_i`` and expected depth
``sum w_i z_i / sum w_i``. Differentiable (fitting) and the reference the fused kernel is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geoimplicit.geometry.rays import pixel_grid
from geoimplicit.geometry.tensors import CameraTensors
from geoimplicit.mpi.warp import PlaneWarp, plane_homographies

__all__ = ["LAST_SPACING", "sample_planes", "composite", "render_mpi"]

LAST_SPACING = 1.0e6


def sample_planes(mpi: torch.Tensor, warp: PlaneWarp) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp every plane of ``mpi`` (D, C, h, w) into the target view, front to back.

    Returns samples (D, C, H, W) (zero outside a plane's texture), depth (D, H, W) and the ray length per unit
    depth (H, W) (1 for affine cameras), all float32 except samples (the MPI's dtype).
    """
    D, C, h, w = mpi.shape
    H, W = warp.height, warp.width
    dev = mpi.device
    order = warp.order.to(dev)
    p = pixel_grid(W, H, device=dev, dtype=torch.float32)  # (3, N)
    Hinv = warp.Hinv.to(dev)[order]
    rows = warp.depth_rows.to(dev)[order]
    # normalise each homography (a projective scale does not change the map) before going to float32
    scale = Hinv.abs().amax(dim=(1, 2), keepdim=True)
    q = (Hinv / scale).to(torch.float32) @ p  # (D, 3, N)
    a = q[:, 0] / q[:, 2]
    b = q[:, 1] / q[:, 2]
    if warp.inverse_depth:
        depth = 1.0 / ((rows / scale[:, 0]).to(torch.float32) @ p) / scale[:, 0, :1].to(torch.float32)
        ray = torch.linalg.norm(warp.Kinv.to(dev).to(torch.float32) @ p, dim=0)
    else:
        depth = rows.to(torch.float32) @ p
        ray = torch.ones(p.shape[1], device=dev)
    grid = torch.stack([(2 * a + 1) / w - 1, (2 * b + 1) / h - 1], dim=-1).reshape(D, H, W, 2)
    if not bool((order == torch.arange(D, device=dev)).all()):  # skip the copy (and its backward) when in order
        mpi = mpi[order]
    samples = F.grid_sample(mpi, grid.to(mpi.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return samples, depth.reshape(D, H, W), ray.reshape(H, W)


def composite(
    rgb: torch.Tensor, density: torch.Tensor, depth: torch.Tensor, ray_scale: torch.Tensor | float = 1.0
) -> dict[str, torch.Tensor]:
    """Over-composite planes already sorted front to back.

    Args:
        rgb: (D, 3, H, W) colours in [0, 1]; density: (D, H, W) >= 0 (1 / world units); depth: (D, H, W);
        ray_scale: (H, W) ray length per unit of depth.
    Returns: ``rgb`` (3, H, W), ``depth`` (H, W) expected depth (0 where nothing is hit), ``opacity`` (H, W),
    ``weights`` (D, H, W).
    """
    rgb = rgb.float()
    density = density.float()
    depth = depth.float()
    spacing = (depth[1:] - depth[:-1]).abs() * ray_scale
    last = torch.full_like(depth[:1], LAST_SPACING)
    spacing = torch.cat([spacing, last], dim=0)
    tau = density * spacing
    alpha = 1.0 - torch.exp(-tau)
    acc = torch.cumsum(tau, dim=0)
    trans = torch.exp(-torch.cat([torch.zeros_like(acc[:1]), acc[:-1]], dim=0))
    weights = trans * alpha
    opacity = weights.sum(0)
    out_rgb = (weights.unsqueeze(1) * rgb).sum(0)
    exp_depth = (weights * depth).sum(0) / opacity.clamp_min(1e-6)
    return {"rgb": out_rgb, "depth": exp_depth, "opacity": opacity, "weights": weights}


def render_mpi(mpi: torch.Tensor, A, cam: CameraTensors) -> dict[str, torch.Tensor]:
    """Render an MPI (D, 4, h, w) (rgb in [0, 1] + density) with plane geometry ``A`` (D, 3, 3) into ``cam``."""
    warp = plane_homographies(A, cam)
    samples, depth, ray = sample_planes(mpi, warp)
    return composite(samples[:, :3], samples[:, 3], depth, ray)
