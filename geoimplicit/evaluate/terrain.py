"""Slope and aspect of a gridded DEM, with horizontal distances in the same units as the heights.

Projected grids use their pixel size in CRS units. Geographic grids (EPSG:4326 DEMs such as SRTM or
Copernicus GLO-30) use the pixel size converted to metres on the CRS's ellipsoid at each row's latitude,
as demcompare does, so slopes are true slopes (heights in metres over metres).
"""

from __future__ import annotations

import math

import numpy as np
from affine import Affine
from pyproj import CRS


def is_geographic(crs) -> bool:
    """True for a geographic (degree) CRS; False for projected or unknown."""
    if crs is None:
        return False
    return bool(CRS.from_user_input(crs).is_geographic)


def metres_per_degree(latitude_deg: np.ndarray | float, crs=None) -> tuple[np.ndarray, np.ndarray]:
    """Length in metres of one degree of longitude (east) and of latitude (north) at ``latitude_deg``.

    Uses the ellipsoid of ``crs`` (WGS84 when None): prime-vertical radius N for longitude, meridional radius
    M for latitude.
    """
    if crs is not None:
        ell = CRS.from_user_input(crs).ellipsoid
        a, inv_f = ell.semi_major_metre, ell.inverse_flattening
    else:
        a, inv_f = 6378137.0, 298.257223563
    f = 1.0 / inv_f if inv_f else 0.0
    e2 = f * (2.0 - f)
    phi = np.radians(np.asarray(latitude_deg, dtype=np.float64))
    w = np.sqrt(1.0 - e2 * np.sin(phi) ** 2)
    n_radius = a / w
    m_radius = a * (1.0 - e2) / w**3
    return n_radius * np.cos(phi) * math.pi / 180.0, m_radius * math.pi / 180.0


def pixel_sizes(transform: Affine, shape: tuple[int, int], crs=None) -> tuple[np.ndarray, np.ndarray]:
    """Ground size of a pixel along columns (east) and rows (north), per row, as arrays of shape (rows, 1).

    In CRS units for a projected grid; in metres (at each row centre's latitude) for a geographic grid.
    Only north-up grids (no rotation) are supported.
    """
    if transform.b != 0 or transform.d != 0:
        raise ValueError("rotated grids are not supported; warp the DEM to a north-up grid first")
    rows = shape[0]
    width = abs(transform.a)
    height = abs(transform.e)
    if is_geographic(crs):
        lat = transform.f + (np.arange(rows) + 0.5) * transform.e
        east, north = metres_per_degree(lat, crs)
        return (east * width)[:, None], (north * height)[:, None] * np.ones((rows, 1))
    return np.full((rows, 1), width), np.full((rows, 1), height)


def gradient(dem: np.ndarray, transform: Affine, crs=None) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference height gradient ``(dz/d_east, dz/d_north)``; NaN where a neighbour is NaN."""
    dem = np.asarray(dem, dtype=np.float64)
    px_east, px_north = pixel_sizes(transform, dem.shape, crs)
    d_row, d_col = np.gradient(dem)
    # rows go down (south) when transform.e < 0
    north_sign = -1.0 if transform.e < 0 else 1.0
    dz_east = d_col / px_east * (1.0 if transform.a > 0 else -1.0)
    dz_north = north_sign * d_row / px_north
    return dz_east, dz_north


def slope_aspect(dem: np.ndarray, transform: Affine, crs=None) -> tuple[np.ndarray, np.ndarray]:
    """``tan(slope)`` (rise over run, unitless) and aspect in radians.

    Aspect is the azimuth (clockwise from north) of the downhill direction: 0 = the slope faces north,
    pi/2 = faces east.
    """
    g_east, g_north = gradient(dem, transform, crs)
    tan_slope = np.hypot(g_east, g_north)
    aspect = np.mod(np.arctan2(-g_east, -g_north), 2.0 * np.pi)
    return tan_slope, aspect


def slope_percent(dem: np.ndarray, transform: Affine, crs=None) -> np.ndarray:
    """Slope in percent (100 x rise / run); NaN where the DEM or a neighbour is NaN."""
    tan_slope, _ = slope_aspect(dem, transform, crs)
    return 100.0 * tan_slope
