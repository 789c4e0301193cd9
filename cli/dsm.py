"""``geoimplicit dsm --points PATHS... --aoi AOI|--bbox ... --resolution 0.5 [--method occupancy|raster] -o dsm.tif``."""

from __future__ import annotations

import click

from cli.options import aoi_options, class_codes, crs_option, overwrite_option, resolution_option

STATS = ("max", "min", "mean", "median", "idw", "tin", "count", "stdev")  # = rasterize.STATS (tested)


@click.command("dsm", context_settings={"show_default": True})
@click.option("--points", "points", multiple=True, required=True, type=click.Path(),
              help="LAS/LAZ file, folder or glob; repeat --points for several.")
@click.option("--ortho", "ortho", multiple=True, type=click.Path(dir_okay=False),
              help="Ortho GeoTIFF(s) for methods that use them: an RGB ortho, then optionally a second RGB or an IRC "
                   "(near infrared, red, green) one; true or ordinary orthos.")
@aoi_options()
@resolution_option
@click.option("--method", default="occupancy", metavar="NAME",
              help="DSM method: occupancy (neural occupancy field, default weights shipped), raster (cell "
                   "statistics) or sdf (a neural signed-distance surface fitted per tile to posed views, --views).")
# --- raster method options ---------------------------------------------------------------------------------
@click.option("--stat", type=click.Choice(STATS), default=None,
              help="[raster] Cell statistic (default max: the highest return, a DSM; tin: linear on the points' "
                   "triangulation at cell centres, how IGN makes its LiDAR HD DSMs).")
@click.option("--fill-max-hole", type=click.FloatRange(min=0), default=None,
              help="[raster] Fill holes up to this width (CRS units) with a smooth membrane; 0: no filling. "
                   "Default 5.")
@click.option("--no-outlier-removal", is_flag=True, help="[raster] Keep isolated points far above/below.")
@click.option("--exclude-classes", callback=class_codes, default=None, metavar="CODES",
              help="[raster] LAS classes left out, comma-separated, or none. Default 7,18 (noise).")
@click.option("--idw-radius", type=click.FloatRange(min=0, min_open=True), default=None,
              help="[raster] Search radius of --stat idw (CRS units; default resolution x sqrt(2)).")
@click.option("--idw-max-points", type=click.IntRange(min=1), default=None,
              help="[raster] --stat idw uses only the nearest N points within the radius (like gdal_grid "
                   "invdistnn's max_points); default: all of them.")
# --- occupancy method options: added by the occupancy method (--weights, --device, --true-ortho) -------------
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="[occupancy] Model checkpoint (default: the shipped occupancy_default.pt).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="[occupancy, sdf] Compute device; auto takes a CUDA GPU when there is one.")
@click.option("--refiner", default=None, metavar="auto|none|PATH",
              help="[occupancy] Height refiner after the surface search (docs/occupancy.md): auto = the shipped "
                   "one with the shipped weights.")
@click.option("--true-ortho", is_flag=True,
              help="[occupancy] The orthos are true orthos (every roof on its footprint, e.g. made from a DSM); "
                   "leave it off for ordinary orthos, where roofs lean off their footprints.")
# --- sdf method options -----------------------------------------------------------------------------------------
@click.option("--views", type=click.Path(file_okay=False), default=None,
              help="[sdf] View set folder (Images/, Cams/, view_split.txt, crs.txt in the points' CRS).")
@click.option("--surface-config", type=click.Path(dir_okay=False), default=None,
              help="[sdf] YAML/JSON of surface fit settings (docs/surface.md).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="[sdf] Fit steps per tile.")
@click.option("--time-budget", type=click.FloatRange(min=0), default=None,
              help="[sdf] Seconds of fitting per tile (0: all the steps).")
@click.option("--refine-cameras", is_flag=True, help="[sdf] Learn per-view pose corrections with each tile.")
# --- tiling and run -------------------------------------------------------------------------------------------
@click.option("--tile-size", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Tile side in CRS units (default: what suits the method).")
@click.option("--overlap", type=click.FloatRange(min=0), default=None,
              help="Tile margin in CRS units (default: the method's reach).")
@crs_option
@click.option("--assume-crs", default=None, metavar="CRS", help="CRS of point files whose header has none.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Work folder (tile index, tiles); re-running the same command resumes there. "
                   "Default: <output stem>_work beside the output.")
@click.option("--keep-points", is_flag=True, help="Keep the points routed to each tile in the work folder.")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
              help="Run the tiles on a running Dask scheduler (its workers must see the same files).")
@click.option("--dask-workers", type=click.IntRange(min=1), default=None,
              help="Run the tiles on a local Dask cluster of N worker processes.")
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=None,
              help="Local Dask cluster with one worker per this many GPUs, each pinned to its own "
                   "(CUDA_VISIBLE_DEVICES); with --dask-workers N, N such workers (default: as many as the GPUs "
                   "fill). 0: no GPU resource.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output DSM (COG).")
@overwrite_option
@click.pass_context
def dsm(ctx, points, ortho, aoi, bbox_crs, bbox, resolution, method, stat, fill_max_hole, no_outlier_removal,
        exclude_classes, idw_radius, idw_max_points, weights, device, true_ortho, refiner, views, surface_config, steps,
        time_budget, refine_cameras, tile_size, overlap, crs,
        assume_crs, workdir, keep_points, scheduler, dask_workers, gpus_per_worker, output, overwrite):
    """Make a DSM (Cloud-Optimized GeoTIFF, float32, nodata -9999) from point clouds on the exact grid asked
    for, tile by tile, resumable. Also writes <output stem>_filled.tif (1 = hole filled, 0 = measured).
    """
    from geoimplicit.run import run_dsm

    if len(ortho) > 2:
        raise click.BadParameter("at most two ortho images (RGB, then RGB or IRC)", param_hint="--ortho")
    raster_options = {"stat": stat, "fill_max_hole": fill_max_hole, "idw_radius": idw_radius,
                      "idw_max_points": idw_max_points, "remove_outliers": False if no_outlier_removal else None,
                      "exclude_classes": exclude_classes}
    options = method_options(method, raster_options, weights=weights, device=device, true_ortho=true_ortho,
                             refiner=refiner,
                             views=views, surface_config=surface_config, steps=steps, time_budget=time_budget,
                             refine_cameras=refine_cameras)
    from geoimplicit.dsm.method import method_class
    from geoimplicit.jobs.executors import make_executor

    progress = ctx.obj["progress"]
    executor = make_executor(scheduler, dask_workers, gpus_per_worker=gpus_per_worker,
                             needs_gpu=method_class(method).needs_gpu and device != "cpu")
    try:
        outputs = run_dsm(list(points), output, resolution=resolution, aoi=aoi, bbox=bbox, bbox_crs=bbox_crs,
                          crs=crs, assume_crs=assume_crs, ortho=list(ortho), method=method,
                          method_options=options, tile_size=tile_size, overlap=overlap, workdir=workdir,
                          overwrite=overwrite, keep_points=keep_points, executor=executor, progress=progress)
    finally:
        executor.close()
    progress.result(**outputs)


def method_options(method: str, raster_options: dict, *, weights, device, true_ortho, views, surface_config, steps,
                   time_budget, refine_cameras, refiner=None) -> dict:
    """The options of ``method`` from the command line; another method's options are refused."""
    by_method = {
        "raster": raster_options,
        "occupancy": {"weights": weights, "device": device, "true_ortho": True if true_ortho else None,
                      "refiner": refiner},
        "sdf": {"views": views, "config": surface_config, "steps": steps, "time_budget_s": time_budget,
                "refine_cameras": True if refine_cameras else None, "device": device},
    }
    flag = {"stat": "--stat", "fill_max_hole": "--fill-max-hole", "idw_radius": "--idw-radius",
            "idw_max_points": "--idw-max-points", "remove_outliers": "--no-outlier-removal",
            "exclude_classes": "--exclude-classes", "config": "--surface-config", "time_budget_s": "--time-budget"}
    mine = by_method.get(method, {})
    for other, opts in by_method.items():
        if other == method:
            continue
        given = [flag.get(k, "--" + k.replace("_", "-")) for k, v in opts.items()
                 if v is not None and mine.get(k) is None]
        if given:
            raise click.BadParameter(f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of "
                                     f"--method {other}", param_hint="--method")
    return {k: v for k, v in mine.items() if v is not None}
