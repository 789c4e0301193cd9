"""Small writers shared by the tests/test_evaluate*.py files."""

from __future__ import annotations

import numpy as np
import rasterio
from affine import Affine


def write_dem(path, array, transform, crs="EPSG:2154", nodata=-9999.0, dtype="float32"):
    """Write a 1-band GeoTIFF; NaN cells become ``nodata``."""
    array = np.asarray(array, dtype=np.float64)
    data = np.where(np.isfinite(array), array, nodata if nodata is not None else np.nan).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                       dtype=dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data, 1)
    return path


def smooth_surface(x, y):
    """A smooth hilly surface with slopes in every direction (metres)."""
    return (100.0 + 12.0 * np.sin(x / 23.0) * np.cos(y / 31.0) + 8.0 * np.cos((x + 2 * y) / 47.0)
            + 0.05 * x - 0.03 * y)


def grid_xy(transform: Affine, shape):
    rows, cols = shape
    cc, rr = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
    x = transform.c + cc * transform.a
    y = transform.f + rr * transform.e
    return x, y
