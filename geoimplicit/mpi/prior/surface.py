"""A surface (height and colour per texel) as an MPI on any plane set of the same texture grid.

Each texel's surface lies between two planes (heights high to low); it is split between them linearly (a tent),
which over-compositing from above renders as a surface at that height: the upper plane gets ``alpha = w`` (its
tent weight), the lower one what is left, ``alpha = 1``. Alphas are clipped to ``[alpha_min, alpha_max]``
(the fit starts from 0.02 / 0.95 like the plane-sweep start, so every plane still gets gradients) and turned into
densities over each plane's gap to the next. Every plane takes the texel's colour.
"""

from __future__ import annotations

import numpy as np
import torch

from geoimplicit.mpi.planes import PlaneSet, geo_planes

__all__ = ["surface_weights", "surface_alpha", "surface_mpi", "init_from_surface", "planes_at_surface",
           "views_colour_at_surface"]


def plane_gaps(planes: PlaneSet) -> np.ndarray:
    """Distance (D,) from each plane to the next one down; the last plane gets the mean spacing."""
    return np.append(np.abs(np.diff(planes.values)), planes.spacing)


def surface_weights(values, height: torch.Tensor) -> torch.Tensor:
    """Tent weights (D, h, w) of heights ``height`` (h, w) on the planes at ``values`` (D,), high to low; they
    sum to 1 where the height lies within the planes' range."""
    v = torch.as_tensor(np.asarray(values, np.float64), dtype=torch.float32, device=height.device)[:, None, None]
    up = torch.cat([torch.full_like(v[:1], float("inf")), v[:-1] - v[1:]])  # gap to the plane above
    down = torch.cat([v[:-1] - v[1:], torch.full_like(v[:1], float("inf"))])  # gap to the plane below
    z = height[None].float()
    above = (1.0 - (z - v) / up).clamp_min(0.0)
    below = (1.0 - (v - z) / down).clamp_min(0.0)
    return torch.where(z >= v, above, below)


def surface_alpha(values, height: torch.Tensor, alpha_min: float = 0.0, alpha_max: float = 0.995) -> torch.Tensor:
    """Per-plane alpha (D, h, w) that composites, seen from above, to the surface at ``height``."""
    w = surface_weights(values, height)
    before = torch.cumsum(w, 0) - w  # weight of the planes above
    alpha = w / (1.0 - before).clamp_min(1e-6)
    return alpha.clamp(alpha_min, alpha_max)


def surface_mpi(planes: PlaneSet, height: torch.Tensor, colour: torch.Tensor, alpha_min: float = 0.0,
                alpha_max: float = 0.995) -> torch.Tensor:
    """The MPI (D, 4, h, w) (colour, density in 1 / world units) of a surface on ``planes`` (differentiable)."""
    alpha = surface_alpha(planes.values, height, alpha_min, alpha_max)
    gaps = torch.as_tensor(plane_gaps(planes), dtype=torch.float32, device=height.device)[:, None, None]
    density = -torch.log1p(-alpha) / gaps
    D = planes.num_planes
    return torch.cat([colour[None].expand(D, -1, -1, -1), density[:, None]], 1)


@torch.no_grad()
def init_from_surface(model, planes: PlaneSet, height: torch.Tensor, colour: torch.Tensor,
                      alpha_min: float = 0.02, alpha_max: float = 0.95) -> None:
    """Start a generator (``init_colour`` / ``init_density``) from a surface: every plane the texel's colour,
    densities (softplus units, before ``density_scale = 1 / spacing``) from :func:`surface_alpha`."""
    alpha = surface_alpha(planes.values, height, alpha_min, alpha_max)
    ratio = torch.as_tensor(plane_gaps(planes) / planes.spacing, dtype=torch.float32, device=height.device)
    dens = -torch.log1p(-alpha) / ratio[:, None, None]
    model.init_colour(colour[None].expand(planes.num_planes, -1, -1, -1).contiguous())
    model.init_density(dens)


def planes_at_surface(planes: PlaneSet, height: torch.Tensor, mix: float, seen: torch.Tensor | None = None) -> PlaneSet:
    """``planes`` (geo) with their heights at the quantiles of the surface heights (``mix`` of them, the rest
    uniform: :func:`geoimplicit.mpi.fit.quantile_heights`), over the texels some view sees."""
    from geoimplicit.mpi.fit import quantile_heights

    h = height if seen is None or not bool((seen > 0).any()) else height[seen > 0]
    est = h.detach().float().cpu().numpy().astype(np.float64)
    h_hi, h_lo = float(planes.values.max()), float(planes.values.min())
    heights = quantile_heights(est, h_lo, h_hi, planes.num_planes, mix)
    res = planes.resolution
    bounds = (planes.left, planes.top - planes.height * res, planes.left + planes.width * res, planes.top)
    return geo_planes(bounds, res, h_lo, h_hi, origin=planes.origin, crs=planes.crs, heights=heights)


@torch.no_grad()
def views_colour_at_surface(planes: PlaneSet, cams, images, height: torch.Tensor,
                            fallback: float | torch.Tensor = 0.5) -> torch.Tensor:
    """The train views' mean colour (3, h, w) at the surface ``height`` on ``planes`` (their plane-sweep means,
    tent-weighted between the two planes around it); ``fallback`` (grey, or a (3, h, w) colour) where the views
    do not see it."""
    from geoimplicit.mpi.fit import plane_sweep_mean

    mean, _, cnt = plane_sweep_mean(planes, cams, images, height.device, return_variance=True)
    w = surface_weights(planes.values, height) * (cnt > 0)  # only planes some view sees
    seen = w.sum(0)
    colour = (w[:, None] * mean).sum(0) / seen.clamp_min(1e-6)
    fallback = torch.as_tensor(fallback, dtype=colour.dtype, device=colour.device).expand_as(colour)
    return torch.where(seen[None] > 0.5, colour, fallback)
