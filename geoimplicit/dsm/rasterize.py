"""The raster DSM baseline: cell statistics of points on an exact grid, outlier removal, hole filling.

Everything is vectorised numpy/scipy and O(n) in the number of points except the ``median`` statistic (a
sort). A tile of ``grid`` is processed as a whole; the tiled run (:mod:`geoimplicit.run`) calls
:func:`rasterize` once per tile with the tile's points (overlap included).

Cells are pixel-is-area: a point at (x, y) falls in column ``floor((x - left) / res)`` and row
``floor((top - y) / res)``; points on the right or bottom edge of the grid fall outside it.

Steps of :func:`rasterize`:

1. **classes**: LAS noise classes 7 (low noise) and 18 (high noise) are dropped when a classification is given.
2. **outliers** (:func:`find_outliers`): a point is an outlier when it is far from the mean of its
   neighbourhood (``k_sigma`` standard deviations plus the radius, on a coarse grid anchored at the CRS origin,
   so the test does not depend on the tiling) *and* isolated: fewer than ``min_neighbors`` other points within
   ``radius`` in 3D. Tall thin structures (poles, chimneys, tree tops) have neighbours and are kept.
3. **statistic** per cell (:func:`grid_statistic`): max (DSM default), min, mean, median, idw (inverse
   distance weighting of the points within ``idw_radius`` of the cell centre), tin (linear interpolation on
   the Delaunay triangulation of the points at the cell centre: how IGN makes its LiDAR HD DSMs), count,
   stdev (population).
4. **holes** (:func:`fill_holes`): empty cells in holes at most ``fill_max_hole`` wide (CRS units) are filled
   by linear interpolation across the hole along four lines, relaxed towards a membrane (no overshoot, no
   ringing, exact on planes, and local: it looks at most twice the hole width away); wider holes stay nodata.
   A mask says which cells were filled.

In the tiled run each tile keeps only the cells at least :meth:`RasterizeConfig.margin` inside its edge (the
outer ones saw a truncated neighbourhood), so the tile size does not change the DSM.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from geoimplicit.tiling.grid import GridSpec

log = logging.getLogger(__name__)

__all__ = ["STATS", "RasterizeConfig", "RasterResult", "cell_indices", "grid_statistic", "find_outliers",
           "fill_holes", "rasterize"]

STATS = ("max", "min", "mean", "median", "idw", "tin", "count", "stdev")
NOISE_CLASSES = (7, 18)


@dataclass
class RasterizeConfig:
    """Options of the raster DSM.

    Attributes:
        stat: cell statistic, one of ``STATS`` (max is the DSM: the highest return in each cell).
        idw_radius: search radius of ``stat="idw"`` in CRS units (default: resolution * sqrt(2)).
        idw_power: distance exponent of ``stat="idw"``.
        idw_max_points: use only the nearest this many points within the radius (as ``gdal_grid invdistnn``'s
            ``max_points``); None: every point within the radius.
        remove_outliers: drop isolated points far above or below their neighbours before gridding.
        outlier_radius: 3D neighbourhood radius of the isolation test, CRS units (default: the larger of
            2 x resolution and 2.5 x the mean point spacing).
        outlier_min_neighbors: fewer neighbours than this within ``outlier_radius`` = isolated.
        outlier_k_sigma: a point is tested only when it is more than this many standard deviations (plus
            ``outlier_radius``) from the mean height of its neighbourhood.
        fill_max_hole: fill holes up to this width (CRS units) with a membrane; 0 disables filling.
        exclude_classes: LAS classes dropped when a classification is given (7 and 18: noise).
    """

    stat: str = "max"
    idw_radius: float | None = None
    idw_power: float = 2.0
    idw_max_points: int | None = None
    remove_outliers: bool = True
    outlier_radius: float | None = None
    outlier_min_neighbors: int = 3
    outlier_k_sigma: float = 3.0
    fill_max_hole: float = 5.0
    exclude_classes: tuple = NOISE_CLASSES

    def __post_init__(self):
        if self.stat not in STATS:
            from geoimplicit.errors import InputError

            raise InputError(f"unknown statistic {self.stat!r}", hint=f"use one of {', '.join(STATS)}")

    def margin(self, resolution: float, density: float | None = None) -> float:
        """How far beyond a grid points influence it (CRS units): the overlap a tile needs at least."""
        return self.point_reach(resolution, density) + self.fill_reach(resolution)

    def point_reach(self, resolution: float, density: float | None = None) -> float:
        """How far a cell's value depends on points beyond it (IDW, TIN, the outlier test)."""
        m = 0.0
        if self.stat == "idw":
            m = max(m, self.idw_radius or resolution * math.sqrt(2))
        if self.stat == "tin":  # a cell's triangle reaches to the nearest points around it
            m = max(m, 4 * resolution)
        if self.remove_outliers:
            r = _outlier_radius(self, resolution, density)
            m = max(m, 2 * _coarse_cell(r) + r)
        return m

    def fill_reach(self, resolution: float) -> float:
        """How far hole filling looks: one pixel beyond the widest hole, then as far again (:func:`fill_holes`)."""
        return 2 * self.fill_max_hole + 2 * resolution if self.fill_max_hole > 0 else 0.0


@dataclass
class RasterResult:
    """A gridded tile.

    Attributes:
        height: (rows, cols) float32, NaN where there is no value.
        valid: (rows, cols) bool, True where ``height`` holds a value (measured or filled).
        filled: (rows, cols) bool, True where the value comes from hole filling.
        count: (rows, cols) int32 points per cell (after outlier removal).
        n_points: points inside the grid used; n_outliers: points removed as outliers; n_excluded: points
            dropped for their class (``exclude_classes``).
    """

    height: np.ndarray
    valid: np.ndarray
    filled: np.ndarray
    count: np.ndarray
    n_points: int = 0
    n_outliers: int = 0
    n_excluded: int = 0

    def with_nodata(self, nodata: float = -9999.0) -> np.ndarray:
        """``height`` with ``nodata`` instead of NaN."""
        return np.where(self.valid, self.height, np.float32(nodata)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# indexing and cell statistics
# ---------------------------------------------------------------------------------------------------------
def cell_indices(x: np.ndarray, y: np.ndarray, grid: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """Flat cell index (row * cols + col) of the points inside ``grid``, and the boolean mask of those points."""
    left, _, _, top = grid.bounds
    rows, cols = grid.shape
    inv = 1.0 / grid.resolution
    u = x - left
    u *= inv
    v = top - y
    v *= inv
    inside = (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
    if inside.all():
        ui, vi = u.astype(np.int64), v.astype(np.int64)
    else:
        ui, vi = u[inside].astype(np.int64), v[inside].astype(np.int64)
    # float error at the very edge: u just below cols can round to cols in the division above
    np.minimum(ui, cols - 1, out=ui)
    np.minimum(vi, rows - 1, out=vi)
    vi *= cols
    vi += ui
    return vi, inside


def grid_statistic(x, y, z, grid: GridSpec, stat: str = "max", *, idw_radius: float | None = None,
                   idw_power: float = 2.0, idw_max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell statistic of the points' z on ``grid``.

    Returns:
        (values float32 (rows, cols), NaN where no point; count int32 (rows, cols) of points in each cell).
        For ``idw`` the count is the number of points within the radius of the cell centre.
        ``tin`` is NaN outside the convex hull of the points.
    """
    if stat not in STATS:
        raise ValueError(f"unknown statistic {stat!r}; one of {STATS}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    rows, cols = grid.shape
    ncell = rows * cols
    if stat == "idw":
        radius = idw_radius or grid.resolution * math.sqrt(2)
        if idw_max_points:
            return _idw_nearest(x, y, z, grid, radius, idw_power, int(idw_max_points))
        return _idw(x, y, z, grid, radius, idw_power)
    idx, inside = cell_indices(x, y, grid)
    zi = z if inside.all() else z[inside]
    count = np.bincount(idx, minlength=ncell)
    if stat == "tin":
        return _tin(x, y, z, grid), count.reshape(rows, cols).astype(np.int32)
    empty = count == 0
    if stat == "max":
        out = np.full(ncell, -np.inf)
        np.maximum.at(out, idx, zi)
    elif stat == "min":
        out = np.full(ncell, np.inf)
        np.minimum.at(out, idx, zi)
    elif stat == "count":
        out = count.astype(np.float64)
        empty = np.zeros(ncell, bool)
    elif stat in ("mean", "stdev"):
        ref = float(np.mean(zi)) if len(zi) else 0.0
        dz = zi - ref
        with np.errstate(invalid="ignore", divide="ignore"):
            s1 = np.bincount(idx, weights=dz, minlength=ncell)
            mean = s1 / count
            if stat == "mean":
                out = mean + ref
            else:
                s2 = np.bincount(idx, weights=dz * dz, minlength=ncell)
                out = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    else:  # median
        order = np.lexsort((zi, idx))
        zs = zi[order]
        starts = np.concatenate(([0], np.cumsum(count)[:-1]))
        occupied = ~empty
        n = count[occupied]
        s = starts[occupied]
        out = np.full(ncell, np.nan)
        out[occupied] = 0.5 * (zs[s + (n - 1) // 2] + zs[s + n // 2])
    out[empty] = np.nan
    return out.reshape(rows, cols).astype(np.float32), count.reshape(rows, cols).astype(np.int32)


def _tin(x, y, z, grid: GridSpec, snap: float = 1e-3) -> np.ndarray:
    """Linear interpolation at the cell centres on the Delaunay triangulation of the points (IGN's DSM product,
    las-digital-models' TIN-linear). Points within ``snap`` (CRS units) of each other in x and y keep the
    highest: the first and last returns of one pulse share an x, y, and the surface is the top one."""
    from scipy.interpolate import LinearNDInterpolator
    from scipy.spatial import QhullError

    rows, cols = grid.shape
    out = np.full((rows, cols), np.nan, np.float32)
    if len(x) < 3:
        return out
    left, bottom, right, top = grid.bounds
    ox, oy = 0.5 * (left + right), 0.5 * (bottom + top)  # local origin: Qhull in small numbers
    kx, ky = np.round((x - ox) / snap).astype(np.int64), np.round((y - oy) / snap).astype(np.int64)
    order = np.lexsort((z, ky, kx))
    kx, ky = kx[order], ky[order]
    top_of_group = np.r_[(kx[1:] != kx[:-1]) | (ky[1:] != ky[:-1]), True]
    keep = order[top_of_group]
    try:
        interp = LinearNDInterpolator(np.c_[x[keep] - ox, y[keep] - oy], z[keep] - z[keep].mean())
    except QhullError:  # fewer than 3 distinct or collinear points: no triangle
        return out
    res = grid.resolution
    cx = left + (np.arange(cols) + 0.5) * res - ox
    cy = top - (np.arange(rows) + 0.5) * res - oy
    gx, gy = np.meshgrid(cx, cy)
    out[:] = interp(gx, gy) + z[keep].mean()
    return out


def _idw(x, y, z, grid: GridSpec, radius: float, power: float):
    """Inverse-distance weighting of the points within ``radius`` of each cell centre (exact search)."""
    rows, cols = grid.shape
    res = grid.resolution
    left, _, _, top = grid.bounds
    k = int(math.ceil(radius / res))
    u = (x - left) / res
    v = (top - y) / res
    near = (u >= -k) & (u < cols + k) & (v >= -k) & (v < rows + k)
    u, v, z = u[near], v[near], z[near]
    c0 = np.floor(u).astype(np.int64)
    r0 = np.floor(v).astype(np.int64)
    ncell = rows * cols
    sw = np.zeros(ncell)
    swz = np.zeros(ncell)
    cnt = np.zeros(ncell)
    exact = np.full(ncell, np.nan)
    r2 = (radius / res) ** 2
    eps2 = 1e-12
    for dr in range(-k, k + 1):
        for dc in range(-k, k + 1):
            rr, cc = r0 + dr, c0 + dc
            d2 = (u - (cc + 0.5)) ** 2 + (v - (rr + 0.5)) ** 2
            ok = (d2 <= r2) & (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
            if not ok.any():
                continue
            flat = rr[ok] * cols + cc[ok]
            dd = d2[ok]
            w = 1.0 / np.maximum(dd * res * res, eps2) ** (power / 2)
            sw += np.bincount(flat, weights=w, minlength=ncell)
            swz += np.bincount(flat, weights=w * z[ok], minlength=ncell)
            cnt += np.bincount(flat, minlength=ncell)
            hit = dd * res * res <= eps2  # a point on the centre: take it
            if hit.any():
                exact[flat[hit]] = z[ok][hit]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = swz / sw
    out = np.where(np.isnan(exact), out, exact)
    out[cnt == 0] = np.nan
    return out.reshape(rows, cols).astype(np.float32), cnt.reshape(rows, cols).astype(np.int32)


def _idw_nearest(x, y, z, grid: GridSpec, radius: float, power: float, max_points: int):
    """Inverse-distance weighting of the ``max_points`` nearest points within ``radius`` of each cell centre."""
    from scipy.spatial import cKDTree

    rows, cols = grid.shape
    res = grid.resolution
    left, _, _, top = grid.bounds
    near = (x >= left - radius) & (x < left + cols * res + radius) & (y > top - rows * res - radius) & (y <= top + radius)
    if not near.any():
        return np.full((rows, cols), np.nan, np.float32), np.zeros((rows, cols), np.int32)
    # coordinates about the grid's corner: no precision lost to 7-digit eastings
    tree = cKDTree(np.column_stack([x[near] - left, top - y[near]]))
    zs = z[near]
    cc, rr = np.meshgrid((np.arange(cols) + 0.5) * res, (np.arange(rows) + 0.5) * res)
    d, idx = tree.query(np.column_stack([cc.ravel(), rr.ravel()]), k=max_points, distance_upper_bound=radius)
    d, idx = d.reshape(-1, max_points), idx.reshape(-1, max_points)
    found = np.isfinite(d)
    cnt = found.sum(axis=1)
    safe = np.where(found, idx, 0)
    w = np.where(found, 1.0 / np.maximum(d, 1e-6) ** power, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (w * zs[safe]).sum(axis=1) / w.sum(axis=1)
    exact = found[:, 0] & (d[:, 0] <= 1e-6)  # a point on the centre: take it
    out[exact] = zs[safe[exact, 0]]
    out[cnt == 0] = np.nan
    return out.reshape(rows, cols).astype(np.float32), cnt.reshape(rows, cols).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------
# outliers
# ---------------------------------------------------------------------------------------------------------
def _outlier_radius(config: RasterizeConfig, resolution: float, density: float | None) -> float:
    if config.outlier_radius:
        return float(config.outlier_radius)
    r = 2.0 * resolution
    if density and density > 0:
        r = max(r, 2.5 / math.sqrt(density))
    return r


def _coarse_cell(radius: float) -> float:
    return 2.0 * radius


def find_outliers(x, y, z, *, radius: float, min_neighbors: int = 3, k_sigma: float = 3.0) -> np.ndarray:
    """Boolean mask of isolated points far above or below their neighbours.

    A point is tested when ``|z - mean| > k_sigma * std + radius``, mean and std being those of the points in
    the 3 x 3 coarse cells (of ``2 * radius``, on a lattice anchored at the CRS origin) around it; it is an
    outlier when fewer than ``min_neighbors`` other points lie within ``radius`` of it in 3D.
    """
    from scipy.ndimage import uniform_filter
    from scipy.spatial import cKDTree

    n = len(x)
    out = np.zeros(n, dtype=bool)
    if n == 0:
        return out
    cell = _coarse_cell(radius)
    cx = np.floor(x / cell).astype(np.int64)
    cy = np.floor(y / cell).astype(np.int64)
    cx0, cy0 = cx.min() - 1, cy.min() - 1
    cx -= cx0
    cy -= cy0
    nx, ny = int(cx.max()) + 2, int(cy.max()) + 2
    if nx * ny > 50_000_000:  # points spread over a huge area: the caller should tile
        raise ValueError("find_outliers: points span too large an area for one call; tile them")
    flat = cy * nx + cx
    zref = float(np.median(z[:: max(1, n // 1000)]))
    dz = z - zref
    size = nx * ny
    c = np.bincount(flat, minlength=size).reshape(ny, nx).astype(np.float64)
    s1 = np.bincount(flat, weights=dz, minlength=size).reshape(ny, nx)
    s2 = np.bincount(flat, weights=dz * dz, minlength=size).reshape(ny, nx)
    # 3 x 3 neighbourhood sums (uniform_filter gives means; the factor cancels in the ratios)
    c9 = uniform_filter(c, 3, mode="constant")
    s19 = uniform_filter(s1, 3, mode="constant")
    s29 = uniform_filter(s2, 3, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s19 / c9
        std = np.sqrt(np.maximum(s29 / c9 - mean * mean, 0.0))
    mean_p = mean.ravel()[flat]
    std_p = std.ravel()[flat]
    cand = np.abs(dz - mean_p) > k_sigma * std_p + radius
    if not cand.any():
        return out
    cand_idx = np.flatnonzero(cand)
    # support: points in the 3 x 3 coarse cells around each candidate
    touched = np.zeros((ny, nx), dtype=bool)
    touched.ravel()[flat[cand_idx]] = True
    from scipy.ndimage import binary_dilation

    touched = binary_dilation(touched, np.ones((3, 3), bool))
    support = np.flatnonzero(touched.ravel()[flat])
    # keep only support points in the 3 x 3 x 3 voxels (side = radius) around a candidate: the others are
    # farther than the radius from every candidate (most support points lie on the surface, far in z)
    vx = np.floor(x[support] / radius).astype(np.int64)
    vy = np.floor(y[support] / radius).astype(np.int64)
    vz = np.floor(dz[support] / radius).astype(np.int64)
    lo = np.array([vx.min(), vy.min(), vz.min()]) - 1
    span = np.array([vx.max(), vy.max(), vz.max()]) - lo + 2
    def key(a, b, c):
        return ((a - lo[0]) * span[1] + (b - lo[1])) * span[2] + (c - lo[2])
    cvx = np.floor(x[cand_idx] / radius).astype(np.int64)
    cvy = np.floor(y[cand_idx] / radius).astype(np.int64)
    cvz = np.floor(dz[cand_idx] / radius).astype(np.int64)
    ckeys = np.concatenate([key(cvx + i, cvy + j, cvz + k)
                            for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    skeys = key(vx, vy, vz)
    size = int(np.prod(span))
    if size <= 64_000_000:  # a dense lookup table (one byte a voxel) beats sorting and searching
        table = np.zeros(size, dtype=bool)
        table[ckeys] = True
        support = support[table[skeys]]
    else:
        ckeys = np.unique(ckeys)
        pos = np.minimum(np.searchsorted(ckeys, skeys), len(ckeys) - 1)
        support = support[ckeys[pos] == skeys]
    ox, oy = x[support].mean(), y[support].mean()
    pts = np.column_stack((x[support] - ox, y[support] - oy, dz[support]))
    tree = cKDTree(pts)
    q = np.column_stack((x[cand_idx] - ox, y[cand_idx] - oy, dz[cand_idx]))
    neighbours = tree.query_ball_point(q, radius, return_length=True) - 1  # minus the point itself
    out[cand_idx[neighbours < min_neighbors]] = True
    return out


# ---------------------------------------------------------------------------------------------------------
# holes
# ---------------------------------------------------------------------------------------------------------
def fill_holes(height: np.ndarray, valid: np.ndarray, max_hole_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Fill holes up to ``max_hole_px`` pixels wide by linear interpolation across them.

    A cell without value is left empty when a disc of diameter ``max_hole_px`` that contains only empty cells
    covers it (a morphological opening of the empty cells, computed with distance transforms); every other
    empty cell is filled. Its value is the mean of the linear interpolations between the nearest valid cells on
    either side of it along the rows, the columns and both diagonals (each pair at most ``max_hole_px + 1``
    apart; shorter spans weigh more), or, where no line crosses the hole, the inverse-distance mean of the
    nearest valid cells it sees. Every value lies between the valid cells around it (no ringing) and a plane
    is reproduced exactly. The filled cells are then relaxed towards a membrane for ``max_hole_px`` steps
    (:func:`_relax`). Everything looks at most ``2 * max_hole_px + 1`` pixels away, so tiles overlapping by
    that much decide alike (the full membrane used before reached along narrow holes arbitrarily far: tiled
    runs differed by up to 1.3 m in filled cells); beyond the array's edge counts as empty (unknown).

    Returns:
        (height float32 with the filled cells set, filled bool mask).
    """
    from scipy import ndimage

    height = np.asarray(height, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    filled = np.zeros_like(valid)
    holes = ~valid
    if max_hole_px <= 0 or not holes.any() or not valid.any():
        return height, filled
    r = max_hole_px / 2.0
    pad = int(math.ceil(r)) + 1
    padded = np.pad(holes, pad, constant_values=True)
    core = ndimage.distance_transform_edt(padded) > r  # centres of empty discs wider than the limit
    if core.any():
        big = ndimage.distance_transform_edt(~core) <= r + 1e-9
        big = big[pad:-pad, pad:-pad]
    else:
        big = np.zeros_like(holes)
    unknown = holes & ~big
    if not unknown.any():
        return height, filled
    values, found = _interpolate_across(height, valid, unknown, max_hole_px + 1.0)
    out = height.astype(np.float64)
    out[unknown] = values
    filled[unknown] = found
    out = _relax(out, valid, filled, int(math.ceil(max_hole_px)))
    out[holes & ~filled] = np.nan
    return out.astype(np.float32), filled


_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))  # rows, columns and the two diagonals


def _interpolate_across(height, valid, unknown, reach_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Values at the ``unknown`` cells from the valid cells within ``reach_px`` along 4 lines through each.

    Returns (values, found) for the unknown cells in row-major order; ``found`` is False where no valid cell
    lies within reach along any line (such a cell stays empty).
    """
    rows, cols = valid.shape
    uy, ux = np.nonzero(unknown)
    num = np.zeros(len(uy))
    den = np.zeros(len(uy))
    one_num = np.zeros(len(uy))  # one-sided fallback: inverse-distance mean of the nearest valid cells seen
    one_den = np.zeros(len(uy))
    for dy, dx in _DIRECTIONS:
        step = math.hypot(dy, dx)
        sides = [_nearest_valid(height, valid, uy, ux, sy * dy, sx * dx, int(reach_px // step))
                 for sy, sx in ((1, 1), (-1, -1))]
        (d1, v1), (d2, v2) = sides
        for d, v in sides:
            ok = d > 0
            w = np.where(ok, 1.0 / np.maximum(d * step, 1.0) ** 2, 0.0)
            one_num += w * np.where(ok, v, 0.0)
            one_den += w
        span = (d1 + d2) * step
        pair = (d1 > 0) & (d2 > 0) & (span <= reach_px + 1e-9)
        with np.errstate(invalid="ignore", divide="ignore"):
            line = np.where(pair, (v1 * d2 + v2 * d1) / np.where(pair, d1 + d2, 1), 0.0)
        w = np.where(pair, 1.0 / np.maximum(span, 1.0) ** 2, 0.0)
        num += w * line
        den += w
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(den > 0, num / den, one_num / one_den)
    return values, (den > 0) | (one_den > 0)


def _relax(values: np.ndarray, valid: np.ndarray, filled: np.ndarray, iterations: int) -> np.ndarray:
    """Smooth the ``filled`` cells towards the membrane: each step sets a cell to the mean of the midpoints of
    its complete neighbour pairs (up/down, left/right), the valid cells held fixed.

    Local (one pixel a step), exact on planes (a pair's midpoint is the plane), and no value leaves the range of
    its neighbours. Ten steps (``--fill-max-hole 5`` at 0.5 m) fill the sample city's holes almost as a full
    membrane does: MAE 1.101 vs 1.091 m, median absolute error 0.182 vs 0.181 m against its truth.
    """
    rows, cols = values.shape
    known = (valid | filled).ravel()
    is_filled = filled.ravel()
    fy, fx = np.nonzero(filled)
    cells = fy * cols + fx
    pairs = []  # per axis: flat index of each side and whether both are known, for the filled cells only
    for dy, dx in ((1, 0), (0, 1)):
        ya, xa, yb, xb = fy - dy, fx - dx, fy + dy, fx + dx
        inside = (ya >= 0) & (xa >= 0) & (yb < rows) & (xb < cols)
        a = np.where(inside, ya * cols + xa, 0)
        b = np.where(inside, yb * cols + xb, 0)
        pairs.append((a, b, inside & known[a] & known[b]))
    count = sum(ok.astype(np.int64) for _, _, ok in pairs)
    # a cell whose pairs are all valid cells is final after one step: later steps redo only the others
    coupled = sum(ok & (is_filled[a] | is_filled[b]) for a, b, ok in pairs) > 0
    flat = values.ravel().copy()
    for i in range(iterations):
        if i == 1:
            keep = coupled & (count > 0)
            cells, count = cells[keep], count[keep]
            pairs = [(a[keep], b[keep], ok[keep]) for a, b, ok in pairs]
        total = sum(np.where(ok, 0.5 * (flat[a] + flat[b]), 0.0) for a, b, ok in pairs)
        step = count > 0
        flat[cells[step]] = total[step] / count[step]
    return flat.reshape(rows, cols)


def _nearest_valid(height, valid, uy, ux, dy: int, dx: int, max_steps: int):
    """Steps (0 = none within ``max_steps``) to the nearest valid cell from each (uy, ux) along (dy, dx), and
    its value."""
    rows, cols = valid.shape
    dist = np.zeros(len(uy), dtype=np.int64)
    value = np.zeros(len(uy))
    todo = np.arange(len(uy))
    for k in range(1, max_steps + 1):
        if not len(todo):
            break
        y, x = uy[todo] + k * dy, ux[todo] + k * dx
        inside = (y >= 0) & (y < rows) & (x >= 0) & (x < cols)
        todo, y, x = todo[inside], y[inside], x[inside]
        hit = valid[y, x]
        dist[todo[hit]] = k
        value[todo[hit]] = height[y[hit], x[hit]]
        todo = todo[~hit]
    return dist, value


# ---------------------------------------------------------------------------------------------------------
# the whole tile
# ---------------------------------------------------------------------------------------------------------
def rasterize(points: Mapping[str, np.ndarray], grid: GridSpec, config: RasterizeConfig | None = None, *,
              density: float | None = None) -> RasterResult:
    """Grid ``points`` (dict with x, y, z float64 and optionally classification) onto ``grid``.

    Args:
        points: the tile's points, overlap included (points outside ``grid`` still count for the outlier test
            and for IDW near the edge).
        grid: the output grid.
        config: options (defaults: max, outliers removed, holes up to 5 CRS units filled).
        density: points per square CRS unit of the whole data set (sets the default outlier radius the same
            for every tile); estimated from ``points`` when None.
    """
    config = config or RasterizeConfig()
    rows, cols = grid.shape
    x = np.asarray(points["x"], dtype=np.float64)
    y = np.asarray(points["y"], dtype=np.float64)
    z = np.asarray(points["z"], dtype=np.float64)
    keep = np.isfinite(z) & np.isfinite(x) & np.isfinite(y)
    cls = points.get("classification") if hasattr(points, "get") else None
    n_excluded = 0
    if cls is not None and len(config.exclude_classes):
        excluded = np.isin(np.asarray(cls), np.asarray(config.exclude_classes))
        n_excluded = int(excluded.sum())
        keep &= ~excluded
    if not keep.all():
        x, y, z = x[keep], y[keep], z[keep]
    # only the points that can influence the grid
    margin = config.point_reach(grid.resolution, density)
    left, bottom, right, top = grid.bounds
    near = (x >= left - margin) & (x < right + margin) & (y > bottom - margin) & (y <= top + margin)
    if not near.all():
        x, y, z = x[near], y[near], z[near]
    n_outliers = 0
    if config.remove_outliers and len(x):
        if density is None:
            area = (right - left + 2 * margin) * (top - bottom + 2 * margin)
            density = len(x) / area
        radius = _outlier_radius(config, grid.resolution, density)
        bad = find_outliers(x, y, z, radius=radius, min_neighbors=config.outlier_min_neighbors,
                            k_sigma=config.outlier_k_sigma)
        n_outliers = int(bad.sum())
        if n_outliers:
            x, y, z = x[~bad], y[~bad], z[~bad]
    values, count = grid_statistic(x, y, z, grid, config.stat, idw_radius=config.idw_radius,
                                   idw_power=config.idw_power, idw_max_points=config.idw_max_points)
    valid = np.isfinite(values)
    filled = np.zeros_like(valid)
    if config.fill_max_hole > 0 and config.stat not in ("count", "stdev"):
        values, filled = fill_holes(values, valid, config.fill_max_hole / grid.resolution)
        valid = valid | filled
    n_in = int(count.sum()) if config.stat != "idw" else int(len(x))
    return RasterResult(values.astype(np.float32), valid, filled, count, n_in, n_outliers, n_excluded)


# ---------------------------------------------------------------------------------------------------------
# the method of the tiled run (``--method raster``)
# ---------------------------------------------------------------------------------------------------------
def _drop_tile_rim(result: RasterResult, tile, reach: float) -> None:
    """Make the cells nearer the tile's edge than the method's ``reach`` nodata (at most the overlap).

    They saw a truncated neighbourhood (outlier test, hole filling), so their values depend on where the tile
    ends; the neighbour tile computes them exactly in its core, and the mosaic takes its values there. With
    them blended in, ``--tile-size 40`` changed the DSM by up to 0.09 m at the seams (IGN tile).
    """
    res = tile.grid.resolution
    overlap_px = int(round(tile.overlap / res))
    rim = min(overlap_px, max(1, int(math.ceil(reach / res - 1e-9))))
    if rim <= 0:
        return
    keep = np.zeros(result.valid.shape, bool)
    keep[rim:-rim, rim:-rim] = True
    result.valid &= keep
    result.filled &= keep


class RasterMethod:
    """``geoimplicit dsm --method raster``: :func:`rasterize` per tile. Options: the fields of
    :class:`RasterizeConfig` (``stat``, ``fill_max_hole``, ``remove_outliers`` ...)."""

    name = "raster"
    point_fields = ("x", "y", "z", "classification")
    needs_ortho = False
    needs_gpu = False
    parallel_tiles = True  # numpy on one core per tile: the local executor runs tiles in worker processes

    def __init__(self, **options):
        self.config = RasterizeConfig(**{k: v for k, v in options.items() if v is not None})

    def default_tiling(self, resolution: float, density: float, metres_per_unit: float = 1.0) -> tuple[float, float]:
        """Tiles of 500 pixels (few tiles, little per-tile overhead); overlap = the reach of the options (CRS units)."""
        del metres_per_unit
        margin = self.config.margin(resolution, density)
        overlap = math.ceil(margin / resolution) * resolution
        return 500 * resolution, max(overlap, resolution)

    def prepare(self, inputs) -> dict:
        return {"density": float(inputs.density) if inputs.density else None}

    def run_tile(self, tile, points, ortho, state, progress=None):
        from geoimplicit.dsm.method import TileOutput

        del progress  # one pass of array operations per tile: seconds at most
        density = (state or {}).get("density")
        r = rasterize(points, tile.grid, self.config, density=density)
        _drop_tile_rim(r, tile, self.config.margin(tile.grid.resolution, density))
        return TileOutput(r.height, r.valid, r.filled,
                          {"points": r.n_points, "outliers": r.n_outliers, "filled": int(r.filled.sum()),
                           "excluded_by_class": r.n_excluded})

    def why_empty(self, stats: dict) -> tuple[str, str] | None:
        """(message, fix) when a run found no usable point because of the class exclusion, else None."""
        n = int(stats.get("excluded_by_class", 0))
        if not n:
            return None
        codes = ", ".join(str(c) for c in self.config.exclude_classes)
        return (f"no usable point: {n:,} points in the area are in LAS classes {codes} (noise), which the raster "
                "method leaves out",
                "pass --exclude-classes none to use them (or list the classes to leave out)")

    def tags(self) -> dict:
        c = self.config
        t = {"method": "raster", "stat": c.stat, "remove_outliers": c.remove_outliers,
             "fill_max_hole": c.fill_max_hole, "exclude_classes": list(c.exclude_classes)}
        if c.stat == "idw":
            t.update(idw_radius=c.idw_radius, idw_power=c.idw_power, idw_max_points=c.idw_max_points)
        return t
