"""Statistics conventions of other tools, so that ``geoimplicit eval`` gives the numbers their users compare.

``demcompare`` (CNES/demcompare, ``nuth_kaab_internal`` and ``alti-diff`` statistics with slope classes and
``remove_outliers``), read from its code (``demcompare/dem_tools.py:compute_dem_slope``,
``classification_layer_template.py:_get_outliers_free_mask``) at commit ef977d5:

- **slope**: Sobel derivatives (kernel ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` / 8, borders reflected) of the
  reference on the compared area, with the distances between neighbouring pixels in metres: the pixel size for a
  projected grid, great-circle distances on a sphere of radius 6378137 m between the pixels' upper-left corners
  for a geographic grid. Its "percent" is ``100 x atan(|gradient|)``, the slope angle in centiradians, not
  ``100 x tan``: a ">= 45 %" class starts at a gradient of 0.483 (our default convention: 0.45).
- **compared area**: with co-registration, the cells valid both before and after the shift (demcompare crops
  the reference to the initial overlap, then shifts).
- **outliers**: cells whose residual lies outside ``mean +- 3 std`` (strict) of the whole compared area are left
  out of every statistic of every group, except demcompare's ``percentil_90`` (90th percentile of
  ``|e - mean(e)|``), which uses all cells.
- demcompare reports ``ref - sec``; the residual here stays ``prediction - truth``, so its mean, median, min and
  max have the opposite sign of demcompare's.
"""

from __future__ import annotations

import math

import numpy as np

from geoimplicit.evaluate.terrain import is_geographic

CONVENTIONS = ("geoimplicit", "demcompare")
DEMCOMPARE_SLOPE_RANGES = (0.0, 5.0, 10.0, 25.0, 45.0)  # its default slope classes (the last one open)
_SPHERE_RADIUS_M = 6378137.0  # demcompare's orthodromic distance
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def check_conventions(name: str) -> str:
    from geoimplicit.errors import InputError

    if name not in CONVENTIONS:
        raise InputError(f"unknown conventions {name!r}", hint=f"use one of {', '.join(CONVENTIONS)}")
    return name


def _orthodromic(lon1, lat1, lon2, lat2) -> np.ndarray:
    k = math.pi / 180.0
    c = np.cos(lat1 * k) * np.cos(lat2 * k) * np.cos((lon2 - lon1) * k) + np.sin(lat1 * k) * np.sin(lat2 * k)
    return _SPHERE_RADIUS_M * np.arccos(np.clip(c, -1.0, 1.0))


def _neighbour_distances(transform, rows: slice, cols: slice, crs):
    """(east, north) distances between neighbouring pixels of the window, as demcompare computes them."""
    if not is_geographic(crs):
        return abs(transform.a), abs(transform.e)
    rr, cc = np.mgrid[rows, cols].astype(np.float64)
    lon = transform.c + cc * transform.a + rr * transform.b  # upper-left corners
    lat = transform.f + cc * transform.d + rr * transform.e
    dist_x = _orthodromic(lon, lat, np.roll(lon, 1, axis=1), lat)
    dist_y = _orthodromic(lon, lat, lon, np.roll(lat, 1, axis=0))
    if dist_x.shape[1] > 1:
        dist_x[:, 0] = dist_x[:, 1]
    if dist_y.shape[0] > 1:
        dist_y[0] = dist_y[1]
    return dist_x, dist_y


def demcompare_slope_percent(truth: np.ndarray, transform, crs, area: np.ndarray) -> np.ndarray:
    """demcompare's slope "percent" (100 x slope angle in radians) of ``truth`` on the bounding box of ``area``
    (NaN elsewhere), the box's borders reflected."""
    from scipy.ndimage import convolve

    out = np.full(truth.shape, np.nan)
    rows_any, cols_any = np.flatnonzero(area.any(axis=1)), np.flatnonzero(area.any(axis=0))
    if not rows_any.size:
        return out
    rows, cols = slice(rows_any[0], rows_any[-1] + 1), slice(cols_any[0], cols_any[-1] + 1)
    dem = truth[rows, cols]
    gx = convolve(dem, _SOBEL_X, mode="reflect")
    gy = convolve(dem, _SOBEL_X.T, mode="reflect")
    dist_x, dist_y = _neighbour_distances(transform, rows, cols, crs)
    tan_slope = np.sqrt((gx / dist_x) ** 2 + (gy / dist_y) ** 2) / 8.0
    out[rows, cols] = 100.0 * np.arctan(tan_slope)
    return out


def outlier_free(residual: np.ndarray) -> tuple[np.ndarray, dict]:
    """Mask of the cells inside ``mean +- 3 std`` (strict) of the finite residual, and what was removed."""
    values = residual[np.isfinite(residual)]
    if not values.size:
        return np.isfinite(residual), {"rule": "mean +- 3 std", "removed": 0}
    mu, sigma = float(values.mean()), float(values.std())
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(residual) & (residual > mu - 3 * sigma) & (residual < mu + 3 * sigma)
    removed = int(values.size - keep.sum())
    return keep, {"rule": "mean +- 3 std of the whole compared area, strict", "mean": mu, "std": sigma,
                  "low": mu - 3 * sigma, "high": mu + 3 * sigma, "removed": removed}


def percentil_90(values: np.ndarray) -> float:
    """demcompare's ``percentil_90``: the 90th percentile of ``|e - mean(e)|`` (all cells, outliers included)."""
    values = values[np.isfinite(values)]
    return float(np.percentile(np.abs(values - values.mean()), 90)) if values.size else math.nan
