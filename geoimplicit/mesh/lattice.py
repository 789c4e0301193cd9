"""The global lattice every tile extracts on, and integer keys for its nodes and edges.

Node ``(i, j, k)`` sits at ``origin + (i, j, k) * spacing`` (CRS units, float64). Tiles of one run share the
lattice, so a vertex on a tile seam has the same key (edge key: lower node and axis) in both tiles, and the
pieces weld by key, exactly, whatever the floating-point positions. Keys pack (i, j, k, axis) into one int64:
21 bits each for i and j (2 million cells: 1,000 km at 0.5 m), 19 for k, 2 for the axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from geoimplicit.errors import InputError

_BITS_IJ, _BITS_K = 21, 19
_MAX_IJ, _MAX_K = 1 << _BITS_IJ, 1 << _BITS_K


@dataclass(frozen=True)
class Lattice:
    """A regular 3D lattice in the working CRS.

    Attributes:
        origin: (x, y, z) float64 CRS coordinates of node (0, 0, 0).
        spacing: node spacing in CRS units (the mesh resolution), the same on all three axes.
    """

    origin: tuple
    spacing: float

    def __post_init__(self):
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        if not (self.spacing > 0 and math.isfinite(self.spacing)):
            raise InputError(f"mesh resolution must be a positive number, got {self.spacing}")

    @classmethod
    def around(cls, bounds, z_min: float, spacing: float, margin_cells: int = 4, offset: float = 0.0) -> "Lattice":
        """A lattice whose nodes fall on multiples of ``spacing`` plus ``offset`` spacings in x and y (0.5: on
        the centres of a grid of that resolution), starting a few cells west/south of ``bounds`` (left, bottom,
        right, top) and below ``z_min``."""
        s = float(spacing)
        left, bottom = bounds[0], bounds[1]
        return cls(((math.floor(left / s) + offset - margin_cells) * s,
                    (math.floor(bottom / s) + offset - margin_cells) * s,
                    math.floor(z_min / s) * s - margin_cells * s), s)

    def index_of(self, x, y, z=None, rounding=np.floor) -> np.ndarray:
        """Integer node indices of CRS coordinates (rounded by ``rounding``), (..., 2) or (..., 3)."""
        coords = [x, y] if z is None else [x, y, z]
        out = [rounding((np.asarray(c, np.float64) - o) / self.spacing + 1e-9) for c, o in zip(coords, self.origin)]
        return np.stack(out, -1).astype(np.int64)

    def position(self, ijk) -> np.ndarray:
        """float64 CRS coordinates of (possibly fractional) node indices (..., 3)."""
        return np.asarray(self.origin) + np.asarray(ijk, np.float64) * self.spacing

    def to_dict(self) -> dict:
        return {"origin": list(self.origin), "spacing": self.spacing}


def check_range(ijk_lo, ijk_hi) -> None:
    """Refuse node boxes the keys cannot hold."""
    lo, hi = np.asarray(ijk_lo), np.asarray(ijk_hi)
    if (lo < 0).any() or hi[0] >= _MAX_IJ or hi[1] >= _MAX_IJ or hi[2] >= _MAX_K:
        raise InputError(f"the area is too large for one mesh at this resolution (lattice box {lo}..{hi})",
                         hint="use a coarser --resolution or a smaller AOI")


def node_key(ijk):
    """(..., 3) int64 node indices (torch or numpy) -> (...,) int64 keys (axis bits 0)."""
    return ((ijk[..., 0] << (_BITS_IJ + _BITS_K)) | (ijk[..., 1] << _BITS_K) | ijk[..., 2]) << 2


def edge_key(ijk: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Key of the lattice edge from node ``ijk`` along ``axis`` (0 x, 1 y, 2 z)."""
    return node_key(ijk) | axis


def key_to_ijk(key):
    """Inverse of :func:`edge_key`: (..., 3) node indices and (...,) axis (torch tensors, or numpy arrays for
    numpy keys: the stitch decodes on the CPU without a round trip through torch)."""
    axis = key & 3
    n = key >> 2
    k = n & (_MAX_K - 1)
    j = (n >> _BITS_K) & (_MAX_IJ - 1)
    i = n >> (_BITS_IJ + _BITS_K)
    stack = np.stack if isinstance(key, np.ndarray) else torch.stack
    return stack([i, j, k], -1), axis
