"""Input support of a tile's output cells: which cells hold a point, and which lie near one.

Both are exact (the same cells as flooring every point and thresholding ``ndimage.distance_transform_edt``)
and cheaper: the framing of a tile does them for every tile of a run, on the CPU, ahead of the device.
"""

from __future__ import annotations

import math

import numpy as np


def point_cells(x, y, left: float, top: float, resolution: float, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) bool: the cells of the grid (top-left corner, cell size) that hold at least one point.

    The same cells as ``floor((x - left) / resolution)`` in range (:func:`cell_index`).
    """
    has = np.zeros(rows * cols, bool)
    has[cell_index(x, y, left, top, resolution, rows, cols)[0]] = True
    return has.reshape(rows, cols)


def cell_index(x, y, left: float, top: float, resolution: float, rows: int, cols: int):
    """(flat cell index of each point inside the grid, the indices of those points or None when all are).

    The cells of ``floor((x - left) / resolution)`` and ``floor((top - y) / resolution)`` in range;
    ``u >= 0 and u < cols`` is that test before flooring, so only the points inside are converted (truncation is
    the floor there). The points inside are gathered by index: a boolean mask of a tile's points (two thirds
    inside, in no order) costs about three times as much per array.
    """
    u = np.subtract(x, left)
    u /= resolution
    v = np.subtract(top, y)
    v /= resolution
    inside = (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
    idx = None if inside.all() else np.flatnonzero(inside)
    if idx is not None:
        u, v = u.take(idx), v.take(idx)
    flat = v.astype(np.intp)
    flat *= cols
    flat += u.astype(np.intp)
    return flat, idx


def near_cells(has: np.ndarray, radius_px: float) -> np.ndarray:
    """Cells within ``radius_px`` (between cell centres) of a True cell: ``distance_transform_edt(~has) <=
    radius_px``, exactly, in squared integer distances.

    A cell whose column has a True cell within the radius is near; only the others (few, where the points are
    dense) look along their row, at each column offset within the radius. Sparse or mostly far cells: scipy's
    transform, which costs less then.
    """
    if has.all() or not has.any():
        return has.copy()
    d2_max = _max_square_distance(radius_px)
    reach = math.isqrt(d2_max)
    window = 2 * reach + 1
    if np.count_nonzero(has) * window >= has.size:  # else under one True cell per column window
        near = _column_near(has, reach)
        r, c = np.nonzero(~near)
        if r.size * window <= 8 * has.size:
            near[r, c] = _row_scan(has, r, c, reach, d2_max)
            return near
    from scipy import ndimage

    return ndimage.distance_transform_edt(~has) <= radius_px


def _row_scan(has: np.ndarray, r: np.ndarray, c: np.ndarray, reach: int, d2_max: int) -> np.ndarray:
    """For the cells (r, c): a cell at a column offset within ``reach`` has a squared distance <= ``d2_max``."""
    # squared column distances, padded so that every offset indexes inside (the pad is never near)
    down = _column_distance(has, reach + 1)
    d2 = np.pad(down.astype(np.int64) ** 2, ((0, 0), (reach, reach)), constant_values=d2_max + 1)
    hit = np.zeros(r.size, bool)
    for dc in range(-reach, reach + 1):
        hit |= d2[r, c + reach + dc] <= d2_max - dc * dc
    return hit


def _max_square_distance(radius_px: float) -> int:
    """The largest integer d2 with float64 ``sqrt(d2) <= radius_px`` (what the transform's distances are)."""
    d2 = int(radius_px * radius_px) + 2
    while math.sqrt(d2) > radius_px:
        d2 -= 1
    return d2


def _column_near(has: np.ndarray, reach: int) -> np.ndarray:
    """(rows, cols) bool: a True cell at most ``reach`` cells up or down the same column (running counts)."""
    rows = has.shape[0]
    counts = np.zeros((rows + 1,) + has.shape[1:], np.int32)
    np.cumsum(has, axis=0, out=counts[1:])
    row = np.arange(rows)
    return counts[np.minimum(row + reach + 1, rows)] > counts[np.maximum(row - reach, 0)]


def _column_distance(has: np.ndarray, cap: int) -> np.ndarray:
    """(rows, cols) int32: cells to the nearest True cell up or down the same column, at most ``cap``."""
    rows = has.shape[0]
    row = np.arange(rows, dtype=np.int32)[:, None]
    far = np.int32(rows + cap)
    above = np.maximum.accumulate(np.where(has, row, -far), axis=0)
    below = np.minimum.accumulate(np.where(has, row, far)[::-1], axis=0)[::-1]
    return np.minimum(np.minimum(row - above, below - row), cap)
