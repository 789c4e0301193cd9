"""Tiling: output grids, the tile grid over an AOI, seam weights, point routing (the tile index: geoimplicit.jobs)."""

from geoimplicit.tiling.grid import GridSpec, Tile, TileGrid

__all__ = ["GridSpec", "Tile", "TileGrid"]
