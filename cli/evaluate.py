"""``geoimplicit eval PRED.tif TRUTH.tif -o REPORT_DIR``: height-error accuracy report of a DSM."""

from __future__ import annotations

import click

from cli.options import overwrite_option


@click.command("eval", context_settings={"show_default": True})
@click.argument("prediction", type=click.Path(dir_okay=False))
@click.argument("truth", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), required=True,
              help="Report folder (report.json, report.csv, report.html, figures/, residual.tif).")
@click.option("--classes", "classes", type=click.Path(dir_okay=False), default=None,
              help="Class raster (LAS codes 2 ground, 5 vegetation, 6 building... or any integer labels).")
@click.option("--class-polygons", type=click.Path(dir_okay=False), default=None,
              help="Polygon layer (GeoPackage, GeoJSON, Shapefile) whose --class-field names each polygon's class.")
@click.option("--class-field", default=None, help="Field of --class-polygons that holds the class name.")
@click.option("--class-points", multiple=True, type=click.Path(), metavar="LAS",
              help="LAS/LAZ file(s), folder or glob: ground (2) / building (6) / vegetation (3,4,5) by majority "
                   "per cell. Repeat for several.")
@click.option("--class-points-crs", default=None, metavar="CRS",
              help="CRS of --class-points files whose LAS header has none (they are refused without it).")
@click.option("--dilate-buildings", "dilate_buildings_px", type=click.IntRange(min=0), default=0, metavar="PX",
              help="Dilate the building class by PX pixels and remove that band from the other classes (ImpliCity).")
@click.option("--building-class", default=None, metavar="NAME",
              help="The class --dilate-buildings dilates: a --class-polygons value or a --classes code. "
                   "Default: the class named 'building' (LAS code 6).")
@click.option("--tiles", type=click.Path(dir_okay=False), default=None,
              help="Tile index GeoPackage (id + polygon): statistics per tile.")
@click.option("--coregister", is_flag=True,
              help="Estimate the horizontal shift (Nuth and Kaab 2011, iterated) and report statistics after it.")
@click.option("--conventions", type=click.Choice(["geoimplicit", "demcompare"]), default="geoimplicit",
              help="demcompare: its slope (Sobel, 100 x angle in radians; classes 0-5-10-25-45), compared area and "
                   "outlier removal (mean +- 3 std), to get demcompare's statistics (docs/evaluate.md).")
@click.option("--reproject", is_flag=True,
              help="Allow a prediction in another CRS: it is warped onto the truth's grid.")
@click.option("--no-figures", is_flag=True, help="Skip the PNG figures (faster).")
@overwrite_option
@click.pass_context
def evaluate(ctx, prediction, truth, output_dir, classes, class_polygons, class_field, class_points,
             class_points_crs, dilate_buildings_px, building_class, tiles, coregister, conventions, reproject,
             no_figures, overwrite):
    """Compare PREDICTION with the reference DSM TRUTH on TRUTH's grid and write an accuracy report.

    Residual = prediction - truth. Statistics: count, bias, median, std, MAE, RMSE, median absolute error,
    NMAD, LE68/90/95/99, fractions within 0.5/1/2 height units; overall, per class, per slope band of the
    truth, per tile.
    """
    from geoimplicit.evaluate import evaluate_dsm

    progress = ctx.obj["progress"] if ctx.obj else None
    report = evaluate_dsm(
        prediction, truth, output_dir, classes=classes, class_polygons=class_polygons, class_field=class_field,
        class_points=list(class_points) or None, class_points_crs=class_points_crs,
        dilate_buildings_px=dilate_buildings_px, building_class=building_class, tiles=tiles,
        coregister=coregister, conventions=conventions, reproject=reproject, overwrite=overwrite,
        figures=not no_figures,
        progress=progress,
    )
    if progress is not None:
        paths = report["paths"]
        progress.result(report=paths["html"], json=paths["json"], csv=paths["csv"], residual=paths["residual"])
