"""Georeferenced inputs and outputs: CRSs, rasters, LAS/LAZ point clouds, areas of interest.

The names below are the public API (see ``docs/io.md``). Cameras live in :mod:`geoimplicit.io.cameras`.
Submodules import their heavy dependencies (rasterio, laspy, geopandas) lazily where they can.
"""

from geoimplicit.io.crs import (
    choose_working_crs,
    crs_equal,
    crs_name,
    linear_units,
    parse_crs,
    require_projected,
    vertical_units,
)
from geoimplicit.io.pointcloud import PointCloudDataset, PointCloudFile, read_header, write_las
from geoimplicit.io.raster import RasterData, raster_info, read_raster, require_valid, write_geotiff
from geoimplicit.io.vector import AOI, read_aoi, write_aoi

__all__ = [
    "AOI",
    "PointCloudDataset",
    "PointCloudFile",
    "RasterData",
    "choose_working_crs",
    "crs_equal",
    "crs_name",
    "linear_units",
    "parse_crs",
    "raster_info",
    "read_aoi",
    "read_header",
    "read_raster",
    "require_projected",
    "require_valid",
    "vertical_units",
    "write_aoi",
    "write_geotiff",
    "write_las",
]
