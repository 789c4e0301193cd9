"""``geoimplicit mesh --points PATHS... --aoi AOI --resolution 0.5 -o city.ply [--format ply|obj|glb]``."""

from __future__ import annotations

import click

from cli.dsm import dsm as _dsm
from cli.dsm import method_options
from cli.options import aoi_options, overwrite_option, resolution_option

FORMATS = ("ply", "obj", "glb")  # = geoimplicit.mesh.io.FORMATS (tested)


# the options that mean what they mean for `geoimplicit dsm`: the same objects, so the two never drift apart
SHARED = ("points", "ortho", "weights", "device", "true_ortho", "refiner", "views", "surface_config", "steps", "time_budget",
          "refine_cameras", "tile_size", "overlap", "crs", "assume_crs", "workdir", "keep_points", "scheduler",
          "dask_workers", "gpus_per_worker")


@click.command("mesh", context_settings={"show_default": True})
@aoi_options()
@resolution_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Output mesh: .ply (float64 CRS coordinates), .obj or .glb (float32 about a local origin, "
                   "with a .prj beside it).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Mesh format (default: from the output's suffix).")
@click.option("--method", default="occupancy", metavar="NAME", help="Field to mesh: occupancy (the neural "
              "occupancy field of `geoimplicit dsm`, default weights shipped) or sdf (a neural signed-distance "
              "surface fitted per tile to the posed views of --views).")
@click.option("--dsm-output", type=click.Path(dir_okay=False), default=None,
              help="Also write the mesh re-rasterized as a DSM GeoTIFF (highest surface per cell), for "
                   "`geoimplicit eval`.")
@click.option("--coarse-stride", type=click.Choice(["1", "2", "4", "8", "16"]), default="8",
              help="MISE: lattice cells per coarse cell (1: evaluate every node).")
@click.option("--refine-steps", type=click.IntRange(0, 16), default=4,
              help="Bisection steps moving each vertex onto the level set along its lattice edge.")
@overwrite_option
@click.pass_context
def mesh(ctx, aoi, bbox_crs, bbox, resolution, output, fmt, method, dsm_output, coarse_stride, refine_steps,
         overwrite, points, ortho, weights, device, true_ortho, refiner, views, surface_config, steps, time_budget,
         refine_cameras, tile_size, overlap, crs, assume_crs, workdir, keep_points, scheduler, dask_workers,
         gpus_per_worker):
    """Reconstruct the surface as a triangle mesh in the working CRS: per tile, the field is evaluated coarse to
    fine (MISE) and meshed by marching cubes, vertices refined onto the surface, normals from the field, colours
    from the ortho; tiles are stitched without cracks and clipped to the AOI. Resumable."""
    from geoimplicit.jobs.executors import make_executor
    from geoimplicit.mesh.extract import ExtractOptions
    from geoimplicit.mesh.run import run_mesh

    if len(ortho) > 2:
        raise click.BadParameter("at most two ortho images (RGB, then RGB or IRC)", param_hint="--ortho")
    options = method_options(method, {}, weights=weights, device=device, true_ortho=true_ortho, views=views,
                             surface_config=surface_config, steps=steps, time_budget=time_budget,
                             refine_cameras=refine_cameras, refiner=refiner)
    extract = ExtractOptions(coarse_stride=int(coarse_stride), refine_steps=refine_steps)
    progress = ctx.obj["progress"]
    executor = make_executor(scheduler, dask_workers, gpus_per_worker=gpus_per_worker, needs_gpu=device != "cpu")
    try:
        outputs = run_mesh(list(points), output, resolution=resolution, aoi=aoi, bbox=bbox, bbox_crs=bbox_crs,
                           crs=crs, assume_crs=assume_crs, ortho=list(ortho), method=method, method_options=options,
                           tile_size=tile_size, overlap=overlap, workdir=workdir, fmt=fmt, dsm_output=dsm_output,
                           extract=extract, overwrite=overwrite, keep_points=keep_points, executor=executor,
                           progress=progress)
    finally:
        if executor is not None:
            executor.close()
    progress.result(**outputs)


mesh.params[:0] = [next(p for p in _dsm.params if p.name == name) for name in SHARED]
