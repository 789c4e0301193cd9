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
   by a membrane (discrete Laplace equation with the surrounding cells as boundary values: no overshoot, no
   ringing, exact on planes); wider holes stay nodata. A mask says which cells were filled.
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
        m = 0.0
        if self.stat == "idw":
            m = max(m, self.idw_radius or resolution * math.sqrt(2))
        if self.stat == "tin":  # a cell's triangle reaches to the nearest points around it
            m = max(m, 4 * resolution)
        if self.remove_outliers:
            r = _outlier_radius(self, resolution, density)
            m = max(m, 2 * _coarse_cell(r) + r)
        return m + self.fill_max_hole


@dataclass
class RasterResult:
    """A gridded tile.

    Attributes:
        height: (rows, cols) float32, NaN where there is no value.
        valid: (rows, cols) bool, True where ``height`` holds a value (measured or filled).
        filled: (rows, cols) bool, True where the value comes from hole filling.
        count: (rows, cols) int32 points per cell (after outlier removal).
        n_points: points inside the grid used; n_outliers: points removed as outliers.
    """

    height: np.ndarray
    valid: np.ndarray
    filled: np.ndarray
    count: np.ndarray
    n_points: int = 0
    n_outliers: int = 0

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
    """Fill holes up to ``max_hole_px`` pixels wide with a membrane (Laplace) surface.

    A cell without value is left empty when a disc of diameter ``max_hole_px`` that contains only empty cells
    covers it (a morphological opening of the empty cells, computed with distance transforms); every other
    empty cell is filled. The test is local (it looks at most ``max_hole_px`` away), so tiles with an overlap
    of at least ``max_hole_px`` decide alike; beyond the array's edge counts as empty (unknown). The membrane
    takes the surrounding valid cells as fixed values (unfilled cells and the array's edge are free
    boundaries), so it stays between the lowest and highest of them (no ringing) and reproduces a plane.

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
    out = height.copy()
    out[unknown] = _membrane(np.where(valid, height, 0.0).astype(np.float64), valid, unknown)
    filled = unknown
    return out, filled


def _membrane(values: np.ndarray, valid: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Solve the 5-point Laplace equation on ``unknown`` cells with ``valid`` cells as Dirichlet values."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    rows, cols = unknown.shape
    ids = np.full(unknown.shape, -1, dtype=np.int64)
    uy, ux = np.nonzero(unknown)
    n = len(uy)
    ids[uy, ux] = np.arange(n)
    diag = np.zeros(n)
    rhs = np.zeros(n)
    ai, aj = [], []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny_, nx_ = uy + dy, ux + dx
        inside = (ny_ >= 0) & (ny_ < rows) & (nx_ >= 0) & (nx_ < cols)
        nyc, nxc = np.clip(ny_, 0, rows - 1), np.clip(nx_, 0, cols - 1)
        is_valid = inside & valid[nyc, nxc]
        is_unknown = inside & unknown[nyc, nxc]
        diag += is_valid | is_unknown
        rhs += np.where(is_valid, values[nyc, nxc], 0.0)
        sel = np.flatnonzero(is_unknown)
        ai.append(sel)
        aj.append(ids[nyc[sel], nxc[sel]])
    ai = np.concatenate(ai)
    aj = np.concatenate(aj)
    a = sp.csc_matrix(
        (np.concatenate((diag, -np.ones(len(ai)))), (np.concatenate((np.arange(n), ai)),
                                                     np.concatenate((np.arange(n), aj)))),
        shape=(n, n),
    )
    return spsolve(a, rhs)


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
    if cls is not None and len(config.exclude_classes):
        keep &= ~np.isin(np.asarray(cls), np.asarray(config.exclude_classes))
    if not keep.all():
        x, y, z = x[keep], y[keep], z[keep]
    # only the points that can influence the grid
    margin = config.margin(grid.resolution, density) - config.fill_max_hole
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
    return RasterResult(values.astype(np.float32), valid, filled, count, n_in, n_outliers)


# ---------------------------------------------------------------------------------------------------------
# the method of the tiled run (``--method raster``)
# ---------------------------------------------------------------------------------------------------------
class RasterMethod:
    """``geoimplicit dsm --method raster``: :func:`rasterize` per tile. Options: the fields of
    :class:`RasterizeConfig` (``stat``, ``fill_max_hole``, ``remove_outliers`` ...)."""

    name = "raster"
    point_fields = ("x", "y", "z", "classification")
    needs_ortho = False
    needs_gpu = False

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
        r = rasterize(points, tile.grid, self.config, density=(state or {}).get("density"))
        return TileOutput(r.height, r.valid, r.filled,
                          {"points": r.n_points, "outliers": r.n_outliers, "filled": int(r.filled.sum())})

    def tags(self) -> dict:
        c = self.config
        t = {"method": "raster", "stat": c.stat, "remove_outliers": c.remove_outliers,
             "fill_max_hole": c.fill_max_hole, "exclude_classes": list(c.exclude_classes)}
        if c.stat == "idw":
            t.update(idw_radius=c.idw_radius, idw_power=c.idw_power, idw_max_points=c.idw_max_points)
        return t
