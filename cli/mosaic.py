"""``geoimplicit mosaic TILES... [--aoi AOI] -o out.tif``: blend tiles into one Cloud-Optimized GeoTIFF."""

from __future__ import annotations

import click

from cli.options import overwrite_option


@click.command("mosaic", context_settings={"show_default": True})
@click.argument("tiles", nargs=-1, required=True, type=click.Path())
@click.option("--aoi", type=click.Path(dir_okay=False), default=None,
              help="Clip to these polygons (GeoJSON, GeoPackage, Shapefile; any CRS).")
@click.option("--filled", "filled_output", type=click.Path(dir_okay=False), default=None,
              help="Also write the filled-cells mask (tiles' band 2) as a uint8 COG.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output COG.")
@overwrite_option
@click.pass_context
def mosaic(ctx, tiles, aoi, filled_output, output, overwrite):
    """Blend TILES (GeoTIFFs on one pixel lattice, folders of them, or a tile index .gpkg of a DSM run's work
    folder) over their overlaps with feathered weights into one COG. Nodata is respected; no seams.
    """
    from geoimplicit.mosaic import mosaic_inputs

    out = mosaic_inputs(list(tiles), output, aoi=aoi, filled_output=filled_output, overwrite=overwrite,
                        progress=ctx.obj["progress"])
    ctx.obj["progress"].result(mosaic=out, filled=filled_output)
