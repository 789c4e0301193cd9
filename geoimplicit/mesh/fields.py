"""Fields to extract surfaces from: analytic ones (tests, benchmarks) and the trained occupancy network.

Every field follows the protocol of :mod:`.extract`: ``origin`` (float64 CRS coordinates of its local frame:
keep it near the data, the queries are float32 offsets from it), ``level``, ``inside`` ("above" for
occupancies, "below" for signed distances), ``device`` and ``__call__(p (N, 3)) -> (N,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class FunctionField:
    """A field given by a torch function of local offsets (N, 3) float32 -> (N,)."""

    fn: Callable
    origin: tuple
    level: float = 0.0
    inside: str = "above"
    device: str = "cpu"

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        return self.fn(p)


def sphere_field(centre, radius: float, device: str = "cpu") -> FunctionField:
    """Signed distance to a sphere (negative inside, level 0), centred on its local origin."""
    return FunctionField(lambda p: p.norm(dim=1) - radius, tuple(centre), 0.0, "below", device)


def box_field(centre, half_size, device: str = "cpu") -> FunctionField:
    """Signed distance (exact outside, max-norm inside) to an axis-aligned box of half sizes (hx, hy, hz)."""
    h = torch.as_tensor(np.asarray(half_size, np.float32), device=device)

    def sdf(p):
        q = p.abs() - h
        return q.clamp_min(0).norm(dim=1) + q.max(1).values.clamp_max(0)

    return FunctionField(sdf, tuple(centre), 0.0, "below", device)


def height_field(height: Callable, origin, device: str = "cpu") -> FunctionField:
    """A 2.5D occupancy: inside below ``height(x, y)`` (local offsets -> local height), value = height - z."""
    return FunctionField(lambda p: height(p[:, 0], p[:, 1]) - p[:, 2], tuple(origin), 0.0, "above", device)
