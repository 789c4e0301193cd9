"""``geoimplicit info PATH...``: what a raster, point cloud (file, folder, glob) or AOI holds."""

from __future__ import annotations

import json

import click

from cli.options import aoi_options, crs_option


@click.command("info")
@click.argument("paths", nargs=-1, required=True)
@crs_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout instead of text.")
@click.option(
    "--stats/--no-stats", default=True,
    help="Rasters: count valid pixels (reads a decimated overview for large files) and fail on nodata-only files.",
)
@click.option(
    "--check", is_flag=True,
    help="Also check the inputs together as a run would: one projected working CRS (or --crs), AOI overlapping the data.",
)
@aoi_options()
@click.pass_context
def info(ctx, paths, crs, as_json, stats, check, aoi, bbox, bbox_crs):
    """Describe rasters (.tif, .jpg + .wld ...), LAS/LAZ point clouds (a file, a folder or a glob) and AOIs.

    Prints the CRS with its units, bounds, size, point count, dtype and nodata. --crs is the CRS assumed for
    inputs that carry none (a world-file image, a LAS header without CRS). Exits 2 on an unreadable input.
    With --check (implied by --aoi/--bbox) it also fails when the inputs have no CRS, disagree without --crs,
    are geographic, or miss the AOI.

    \b
    geoimplicit info ../shared/data/ign_montpellier/
    geoimplicit info autzen.jpg --crs autzen-srs.wkt --json
    geoimplicit info points.laz ortho.tif --check --aoi aoi.geojson
    """
    from geoimplicit.io.info import check_inputs, describe

    if aoi is not None or bbox is not None:
        check = True
    reports = [describe(path, crs=crs, stats=stats) for path in paths]
    checked = check_inputs(paths, crs=crs, aoi=aoi, bbox=bbox, bbox_crs=bbox_crs) if check else None
    if as_json:
        doc = reports if len(reports) > 1 else reports[0]
        if checked is not None:
            doc = {"inputs": reports, "check": checked}
        click.echo(json.dumps(doc, indent=2))
    else:
        for i, report in enumerate(reports):
            if i:
                click.echo("")
            click.echo(_text(report))
        if checked is not None:
            click.echo("")
            click.echo(_text({"path": "check", "kind": "ok", **checked}))


def _text(report: dict) -> str:
    lines = [f"{report['path']}  [{report['kind']}]"]
    skip = {"path", "kind", "crs_wkt", "fields", "file_list"}
    for key, value in report.items():
        if key in skip or value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)
