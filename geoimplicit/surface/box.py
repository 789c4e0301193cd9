"""The volume a surface lives in: a tile's box (its bounds x its height range) about a local origin.

Aerial tiles have no object masks, so the box does their work: rays are clipped to it, and only rays that enter
through the top face and leave through the bottom face (*column rays*) see nothing but the tile between the
scene's lowest and highest heights; those are the rays the photometric loss uses. Rays that leave or enter
through a side may see the neighbouring scene (a neighbouring tile's job) and rays that miss the box see sky.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geoimplicit.geometry.checks import check_shape

__all__ = ["SurfaceBox", "ray_box"]


@dataclass
class SurfaceBox:
    """``origin`` (3,) float64 world coordinates (CRS units) of the local frame; ``lo``, ``hi`` (3,) the box in
    local coordinates; ``crs_wkt`` the CRS."""

    origin: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    crs_wkt: str | None = None

    def __post_init__(self):
        self.origin = np.asarray(self.origin, np.float64).reshape(3)
        self.lo = np.asarray(self.lo, np.float64).reshape(3)
        self.hi = np.asarray(self.hi, np.float64).reshape(3)
        if not np.all(self.hi > self.lo):
            raise ValueError(f"SurfaceBox: empty box {self.lo.tolist()} .. {self.hi.tolist()}")

    @classmethod
    def from_bounds(cls, bounds, height_range, crs_wkt=None) -> "SurfaceBox":
        """A box over world ``bounds`` (left, bottom, right, top) and ``height_range`` (min, max), its origin at
        the centre of the bounds and the middle height."""
        left, bottom, right, top = (float(v) for v in bounds)
        h_lo, h_hi = (float(v) for v in height_range)
        origin = np.array([(left + right) / 2, (bottom + top) / 2, (h_lo + h_hi) / 2])
        lo = np.array([left, bottom, h_lo]) - origin
        hi = np.array([right, top, h_hi]) - origin
        return cls(origin, lo, hi, crs_wkt)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """World (left, bottom, right, top)."""
        lo, hi = self.lo + self.origin, self.hi + self.origin
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    @property
    def height_range(self) -> tuple[float, float]:
        return float(self.lo[2] + self.origin[2]), float(self.hi[2] + self.origin[2])

    @property
    def scale(self) -> float:
        """Half the largest horizontal side (CRS units): what the networks normalise by."""
        return float(0.5 * max(self.hi[0] - self.lo[0], self.hi[1] - self.lo[1]))

    @property
    def centre(self) -> np.ndarray:
        return 0.5 * (self.lo + self.hi)

    def to_dict(self) -> dict:
        return {"origin": self.origin.tolist(), "lo": self.lo.tolist(), "hi": self.hi.tolist(),
                "crs_wkt": self.crs_wkt}

    @classmethod
    def from_dict(cls, d: dict) -> "SurfaceBox":
        return cls(d["origin"], d["lo"], d["hi"], d.get("crs_wkt"))

    def tensors(self, device="cpu", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(self.lo, dtype=dtype, device=device),
                torch.as_tensor(self.hi, dtype=dtype, device=device))

    def uniform(self, n: int, device="cpu", generator=None) -> torch.Tensor:
        """``n`` uniform local points (n, 3) float32 in the box."""
        lo, hi = self.tensors(device)
        return lo + (hi - lo) * torch.rand(n, 3, device=device, generator=generator)


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Slab intersection of rays (origins, unit dirs (N, 3)) with the box [lo, hi].

    Returns ``t_near`` (N,), ``t_far`` (N,) (``t_far <= t_near`` where the ray misses; ``t_near >= 0``),
    ``column`` (N,) bool: the ray enters through the top face and leaves through the bottom face.

    >>> o = torch.tensor([[0.0, 0, 10]]); d = torch.tensor([[0.0, 0, -1]])
    >>> t0, t1, col = ray_box(o, d, torch.tensor([-1.0, -1, -1]), torch.tensor([1.0, 1, 1]))
    >>> t0.tolist(), t1.tolist(), col.tolist()
    ([9.0], [11.0], [True])
    """
    check_shape(origins, ["N", 3], "origins")
    check_shape(dirs, ["N", 3], "dirs", {"N": origins.shape[0]})
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t1 = (lo - origins) / safe
    t2 = (hi - origins) / safe
    tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
    t_near = tmin.max(dim=1).values.clamp_min(0.0)
    t_far = tmax.min(dim=1).values
    enter_axis = tmin.argmax(dim=1)
    leave_axis = tmax.argmin(dim=1)
    column = (t_far > t_near) & (enter_axis == 2) & (leave_axis == 2) & (dirs[:, 2] < 0)
    return t_near, t_far, column
