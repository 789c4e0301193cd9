"""Tiling: output grids, the tile grid over an AOI and its GeoPackage index, seam weights, point routing."""

from geoimplicit.tiling.grid import GridSpec, Tile, TileGrid, read_statuses, update_status

__all__ = ["GridSpec", "Tile", "TileGrid", "read_statuses", "update_status"]
