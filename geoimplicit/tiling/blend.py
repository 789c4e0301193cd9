"""Feathered seam weights for blending overlapping tiles.

A tile's weight ramps linearly from (almost) 0 at its outer edge to 1 at ``feather`` pixels inside, separately
in x and y (the weight is the product). Two neighbours overlapping by ``2 * overlap`` pixels with
``feather = 2 * overlap`` have weights that sum to exactly 1 across the overlap, so the blend is a partition of
unity: a constant or planar surface comes back unchanged, and values change smoothly across seams. Weights are
normalised by their sum in the mosaic anyway, so nodata (weight 0) and grid edges need no special case.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ramp", "feather_weights"]


def ramp(n: int, feather_px: float, *, start: bool = True, end: bool = True) -> np.ndarray:
    """(n,) float64 weights: ``(d + 0.5) / feather_px`` clipped to [0, 1], d = pixels to the nearest ramped end.

    ``start``/``end`` False: no ramp at that end (weight 1 up to the edge).
    """
    idx = np.arange(n, dtype=np.float64)
    if feather_px <= 0:
        return np.ones(n)
    w = np.ones(n)
    if start:
        w = np.minimum(w, (idx + 0.5) / feather_px)
    if end:
        w = np.minimum(w, (n - 1 - idx + 0.5) / feather_px)
    return np.clip(w, 0.0, 1.0)


def feather_weights(shape: tuple[int, int], feather_px: float, *, edges=(True, True, True, True)) -> np.ndarray:
    """(rows, cols) float64 blending weights of a tile, > 0 everywhere.

    Args:
        shape: (rows, cols) of the tile.
        feather_px: ramp length in pixels; ``2 * overlap_px`` makes neighbours sum to 1.
        edges: ramp at the (left, bottom, right, top) edge; False for an edge with no neighbour.
    """
    rows, cols = shape
    left, bottom, right, top = edges
    wx = ramp(cols, feather_px, start=left, end=right)
    wy = ramp(rows, feather_px, start=top, end=bottom)
    return wy[:, None] * wx[None, :]
