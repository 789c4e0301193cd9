"""Smooth random fields and gentle terrain for synthetic scenes.

Everything is vectorised numpy and deterministic for a given ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """A smooth random field of ``shape`` with features about ``cell_px`` pixels wide, scaled to [-1, 1].

    Random values on a coarse grid (one every ``cell_px`` pixels) are upsampled with a cubic spline, so the
    cost is one ``ndimage.zoom`` whatever the feature size.

    Returns:
        float64 array of ``shape``.
    """
    rows, cols = shape
    cell_px = max(float(cell_px), 1.0)
    coarse_shape = (int(np.ceil(rows / cell_px)) + 3, int(np.ceil(cols / cell_px)) + 3)
    coarse = rng.standard_normal(coarse_shape)
    zoom = (cell_px, cell_px)
    fine = ndimage.zoom(coarse, zoom, order=3, mode="reflect", grid_mode=False)
    off = int(round(cell_px))
    field = fine[off : off + rows, off : off + cols]
    if field.shape != (rows, cols):  # zoom rounding: pad by edge values
        field = np.pad(field, ((0, rows - field.shape[0]), (0, cols - field.shape[1])), mode="edge")
    span = np.abs(field).max()
    return field / span if span > 0 else field


def fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float = 1.0) -> np.ndarray:
    """Blurred white noise of unit standard deviation (texture for roofs, canopies, grass)."""
    white = rng.standard_normal(shape)
    if sigma_px > 0:
        white = ndimage.gaussian_filter(white, sigma_px, mode="reflect")
    std = white.std()
    return white / std if std > 0 else white


def make_terrain(
    rng: np.random.Generator,
    shape: tuple[int, int],
    resolution: float,
    *,
    ground_height: float,
    units_per_m: float = 1.0,
    max_slope: float = 0.03,
    relief_m: float = 2.5,
) -> np.ndarray:
    """A gentle terrain (DTM) in CRS height units: a tilted plane plus low-frequency undulations.

    Args:
        rng: the scene's random generator.
        shape: (rows, cols) of the grid.
        resolution: pixel size in CRS units.
        ground_height: mean height of the terrain (CRS height units).
        units_per_m: CRS units per metre (1 for metres, 1/0.3048 for feet).
        max_slope: largest gradient of the tilted plane (rise over run, unitless).
        relief_m: amplitude of the undulations in metres.

    Returns:
        float64 (rows, cols) heights.
    """
    rows, cols = shape
    slope = rng.uniform(0.0, max_slope)
    direction = rng.uniform(0.0, 2 * np.pi)
    y = (np.arange(rows) - (rows - 1) / 2.0)[:, None] * -resolution  # north up
    x = (np.arange(cols) - (cols - 1) / 2.0)[None, :] * resolution
    plane = slope * (np.cos(direction) * x + np.sin(direction) * y)
    # undulations with a wavelength of 150-300 m, bounded by relief_m
    cell_px = rng.uniform(150.0, 300.0) * units_per_m / resolution
    hills = smooth_noise(rng, shape, cell_px) * rng.uniform(0.3, 1.0) * relief_m * units_per_m
    return ground_height + plane + hills
