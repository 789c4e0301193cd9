"""``geoimplicit tile --aoi AOI|--bbox ... --tile-size 64 --overlap 8 --resolution 0.5 -o tiles.gpkg``."""

from __future__ import annotations

import click

from cli.options import aoi_options, crs_option, overwrite_option, resolution_option


@click.command("tile", context_settings={"show_default": True})
@aoi_options()
@click.option("--tile-size", type=click.FloatRange(min=0, min_open=True), default=64.0,
              help="Tile side without overlap, in CRS units (rounded to whole pixels).")
@click.option("--overlap", type=click.FloatRange(min=0), default=8.0,
              help="Margin added on every side of a tile, in CRS units (rounded up to whole pixels).")
@resolution_option
@crs_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Tile index GeoPackage.")
@overwrite_option
@click.pass_context
def tile(ctx, aoi, bbox_crs, bbox, tile_size, overlap, resolution, crs, output, overwrite):
    """Cut the AOI into tiles on the output pixel grid and write the tile index (a GeoPackage QGIS opens).

    Only tiles touching the AOI are kept. Layer "tiles": id, row, col, left/bottom/right/top of the core,
    overlap, status, core polygon. A tile has at least 16 pixels a side and an index at most 500,000 tiles
    (refused before any work otherwise); -o must end in .gpkg. --crs is required with --bbox unless --bbox-crs is given; with --aoi the
    default is the AOI file's CRS.
    """
    from geoimplicit.tiling.grid import make_tile_index

    path, n = make_tile_index(aoi=aoi, bbox=bbox, bbox_crs=bbox_crs, crs=crs, tile_size=tile_size,
                              overlap=overlap, resolution=resolution, output=output, overwrite=overwrite)
    ctx.obj["progress"].result(tiles=path, count=n)
