"""``geoimplicit generate``: a synthetic city scene with its ground truth."""

from __future__ import annotations

import click

from cli.options import overwrite_option


@click.command("generate")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, help="Random seed; the same seed gives the same files.")
@click.option("--size", type=click.FloatRange(min=0, min_open=True), default=128.0,
              help="Side of the square scene in CRS units.")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), default=0.5,
              help="Pixel size of the truth rasters in CRS units.")
@click.option("--crs", default="EPSG:2154", metavar="CRS", help="Projected CRS of the scene.")
@click.option("--origin", type=float, nargs=2, default=None, metavar="X Y",
              help="Lower-left corner in the CRS (default: a realistic place in the CRS's area of use).")
@click.option("--density", type=click.FloatRange(min=0, min_open=True), default=10.0,
              help="Points per square metre before holes.")
@click.option("--noise", type=click.FloatRange(min=0), default=0.08,
              help="Height noise (std, metres) on smooth surfaces; grows at height edges.")
@click.option("--holes", type=click.FloatRange(0, 1, max_open=True), default=0.05,
              help="Fraction of the area without points.")
@click.option("--outliers", type=click.FloatRange(0, 1, max_open=True), default=0.005,
              help="Fraction of points moved far above or below the surface.")
@click.option("--points/--no-points", default=True, help="Write points.laz.")
@click.option("--views/--no-views", default=False, help="Render a LEVIR-NVS view set into views/.")
@click.option("--n-views", type=click.IntRange(min=2), default=20, help="Number of views.")
@click.option("--view-size", type=click.IntRange(min=16), default=512, help="Width and height of views, pixels.")
@click.option("--building-density", type=click.FloatRange(0, 0.9), default=None,
              help="Fraction of the area covered by buildings (default: random per seed).")
@overwrite_option
@click.pass_context
def generate(ctx, out_dir, seed, size, resolution, crs, origin, density, noise, holes, outliers, points, views,
             n_views, view_size, building_density, overwrite):
    """Generate a synthetic city into OUT_DIR: truth_dsm.tif, dtm.tif, classes.tif, ortho.tif, points.laz,
    aoi.geojson, scene.json and, with --views, a LEVIR-NVS view set in views/. With --overwrite only those
    are replaced (OUT_DIR may be ".", other files in it stay)."""
    from geoimplicit.outputs import check_output
    from geoimplicit.synthetic import generate_city, scene_bounds, write_city
    from geoimplicit.synthetic.write import CITY_PRODUCTS

    check_output(out_dir, overwrite, products=CITY_PRODUCTS)
    progress = ctx.obj["progress"]
    bounds = scene_bounds(size, crs=crs, origin=origin, resolution=resolution)
    scene = generate_city(seed, bounds=bounds, resolution=resolution, crs=crs,
                          building_density=building_density, progress=progress)
    outputs = write_city(scene, out_dir, seed=seed, points=points, views=views, density=density, noise=noise,
                         holes=holes, outliers=outliers, n_views=n_views, view_size=view_size,
                         overwrite=overwrite, progress=progress)
    progress.result(**outputs)
