"""Shared, validating Click options. Commands import the library inside their body for fast start-up."""

from __future__ import annotations

import click

overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace this command's existing outputs (never done without this flag); other files in an "
         "output folder are never touched."
)

resolution_option = click.option(
    "--resolution", "resolution", type=click.FloatRange(min=0, min_open=True), required=True,
    help="Output pixel size in units of the working CRS (metres, or feet for a feet-based CRS).",
)

crs_option = click.option(
    "--crs", "crs", default=None, metavar="CRS",
    help="Working CRS (EPSG:2154, a WKT file, ...). Default: the inputs' CRS; required if they disagree.",
)

device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
    help="Compute device; auto takes a CUDA GPU when there is one.",
)


def aoi_options(required: bool = False):
    """--aoi (polygon file) and --bbox (LEFT BOTTOM RIGHT TOP), with --aoi-crs for a bbox in another CRS."""

    def decorator(f):
        f = click.option(
            "--bbox", type=float, nargs=4, default=None, metavar="LEFT BOTTOM RIGHT TOP",
            help="Area of interest as bounds (in the working CRS unless --bbox-crs).",
        )(f)
        f = click.option(
            "--bbox-crs", default=None, metavar="CRS", help="CRS of --bbox (default: the working CRS).",
        )(f)
        f = click.option(
            "--aoi", type=click.Path(dir_okay=False), default=None,
            help="Area of interest: GeoJSON, GeoPackage or Shapefile polygons, in any CRS.",
        )(f)
        return f

    return decorator


def output_option(help_text: str = "Output file."):
    return click.option("-o", "--output", type=click.Path(), required=True, help=help_text)
