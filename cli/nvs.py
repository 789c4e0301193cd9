"""``geoimplicit nvs``: novel views from multiplane images (fit, render, eval)."""

from __future__ import annotations

import click

from cli.options import device_option, overwrite_option


@click.group("nvs")
def nvs():
    """Novel view synthesis with multiplane images (ImMPI): fit per scene, render any camera, evaluate."""


@nvs.command("fit")
@click.argument("views_dir", required=False, type=click.Path(file_okay=False))
@click.option("--views", "views_opt", type=click.Path(file_okay=False), default=None,
              help="Views folder (LEVIR-NVS layout); same as VIEWS_DIR.")
@click.option("-o", "--output", "model_dir", type=click.Path(file_okay=False), required=True,
              help="Model folder (model.pt, config.json[, cameras/]).")
@click.option("--planes", type=click.IntRange(min=2), default=32, help="Number of planes.")
@click.option("--layout", type=click.Choice(["fronto", "geo"]), default="fronto",
              help="fronto: planes parallel to a reference camera (ImMPI); geo: horizontal planes on a map grid.")
@click.option("--model", "model_kind", type=click.Choice(["direct", "conv", "mlp"]), default="direct",
              help="Generator of the planes' colour and density.")
@click.option("--steps", type=click.IntRange(min=0), default=1500, help="Optimisation steps.")
@click.option("--image-scale", type=click.FloatRange(min=0, min_open=True), default=1.0,
              help="Fit on images resized by this factor.")
@click.option("--colour-share", type=click.FloatRange(0, 1), default=0.0,
              help="Tie each texel's colour across the planes (0: free per plane, ImMPI; 1: one colour per texel). "
                   "0.8 for near-nadir aerial/satellite views.")
@click.option("--extent", type=click.Choice(["nadir", "union"]), default="nadir",
              help="Geo layout: texture over the most nadir view's footprint, or over all train views' footprints "
                   "(what off-nadir test views see near the edges; slower).")
@click.option("--refine-cameras", is_flag=True, help="Learn small pose corrections per view; writes cameras/.")
@click.option("--geo-products", is_flag=True, help="Geo layout: also write true_ortho.tif and height.tif.")
@click.option("--aoi", default=None, type=click.Path(dir_okay=False),
              help="Tiled fit: one geo-MPI per tile of this AOI (GeoJSON/GPKG/SHP, any CRS) from the views that "
                   "see it; writes tiles/<id>/, true_ortho.tif and height.tif into the output folder.")
@click.option("--tile-size", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--aoi: tile size in CRS units (default 256 pixels).")
@click.option("--overlap", type=click.FloatRange(min=0), default=None,
              help="--aoi: tile overlap on every side in CRS units (default 16 pixels).")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--aoi: pixel size of true_ortho.tif / height.tif (default: the nadir view's ground sample distance).")
@click.option("--height-range", type=float, nargs=2, default=None, metavar="MIN MAX",
              help="--aoi: world heights of the planes (default: from the most nadir camera's depth range).")
@click.option("--min-view-coverage", type=click.FloatRange(0, 1, min_open=True), default=0.1,
              help="--aoi: use a view for a tile when at least this fraction of the tile projects into it (each "
                   "view is cropped to the part it sees).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
              help="--aoi: run the tiles on a running Dask scheduler (its workers must see the same files).")
@click.option("--dask-workers", type=click.IntRange(min=1), default=None,
              help="--aoi: run the tiles on a local Dask cluster of N worker processes.")
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=None,
              help="--aoi: local Dask cluster with one worker per this many GPUs, each pinned to its own "
                   "(CUDA_VISIBLE_DEVICES).")
@click.option("--resume", is_flag=True, help="Continue from MODEL_DIR/checkpoint.pt (--aoi runs always resume).")
@device_option
@overwrite_option
@click.pass_context
def fit(ctx, views_dir, views_opt, model_dir, planes, layout, model_kind, steps, image_scale, colour_share, extent,
        refine_cameras,
        geo_products, aoi, tile_size, overlap, resolution, height_range, min_view_coverage, scheduler, dask_workers,
        gpus_per_worker, resume, device, overwrite):
    """Fit an MPI to the train views of VIEWS_DIR (Images/, Cams/, view_split.txt); with --aoi, one geo-MPI per
    tile of the AOI (resumable), mosaicked into true_ortho.tif and height.tif."""
    views = views_dir or views_opt
    if views is None:
        raise click.UsageError("give VIEWS_DIR (or --views)")
    from geoimplicit.mpi.fit import FitConfig, fit_mpi

    if aoi is not None:
        if layout != "geo" and ctx.get_parameter_source("layout").name != "DEFAULT":
            raise click.BadParameter("--aoi fits geo-layout MPIs", param_hint="--layout")
        if refine_cameras or geo_products:
            raise click.BadParameter("not available with --aoi", param_hint="--refine-cameras/--geo-products")
        from geoimplicit.jobs.executors import make_executor
        from geoimplicit.mpi.tiled import fit_tiled

        cfg = FitConfig(planes=planes, layout="geo", model=model_kind, steps=steps, image_scale=image_scale,
                        colour_share=colour_share, extent=extent)
        executor = make_executor(scheduler, dask_workers, gpus_per_worker=gpus_per_worker, needs_gpu=device != "cpu")
        try:
            outputs = fit_tiled(views, aoi, model_dir, config=cfg, resolution=resolution, tile_size=tile_size,
                                overlap=overlap, height_range=height_range, min_view_coverage=min_view_coverage,
                                device=device, overwrite=overwrite, executor=executor,
                                progress=ctx.obj["progress"])
        finally:
            executor.close()
        ctx.obj["progress"].result(**outputs)
        return
    if any(v is not None for v in (tile_size, overlap, resolution, height_range, scheduler, dask_workers,
                                   gpus_per_worker)):
        raise click.BadParameter("--tile-size, --overlap, --resolution, --height-range, --scheduler, "
                                 "--dask-workers and --gpus-per-worker are options of the tiled fit",
                                 param_hint="--aoi")
    cfg = FitConfig(planes=planes, layout=layout, model=model_kind, steps=steps, image_scale=image_scale,
                    colour_share=colour_share, extent=extent, refine_cameras=refine_cameras, device=device)
    result = fit_mpi(views, model_dir, cfg, resume=resume, overwrite=overwrite, progress=ctx.obj["progress"])
    outputs = dict(result.outputs)
    if geo_products:
        from geoimplicit.mpi.render import render_geo_products

        outputs.update(render_geo_products(model_dir, model_dir, device=device, overwrite=True))
    ctx.obj["progress"].result(**outputs)


@nvs.command("render")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--cams", "cams_dir", type=click.Path(file_okay=False), required=True,
              help="Folder of camera files (NNN.txt), e.g. a view set's Track/ or Cams/.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output folder (Images/, Depths/[, track.mp4, track.gif]).")
@click.option("--video", is_flag=True, help="Also write the frames as track.mp4 and track.gif.")
@click.option("--fps", type=click.IntRange(min=1), default=10, help="Video frame rate.")
@click.option("--size", type=int, nargs=2, default=None, metavar="WIDTH HEIGHT",
              help="Image size (default: the train images').")
@device_option
@overwrite_option
@click.pass_context
def render(ctx, model_dir, cams_dir, out_dir, video, fps, size, device, overwrite):
    """Render images and depth maps (float TIFF) of MODEL_DIR for every camera file in --cams."""
    from geoimplicit.mpi.render import render_views

    w, h = size if size else (None, None)
    outputs = render_views(model_dir, cams_dir, out_dir, video=video, fps=fps, device=device, width=w, height=h,
                           overwrite=overwrite, progress=ctx.obj["progress"])
    ctx.obj["progress"].result(**outputs)


@nvs.command("eval")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.argument("views_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Report folder (report.json, index.html, images/).")
@device_option
@overwrite_option
@click.pass_context
def evaluate(ctx, model_dir, views_dir, out_dir, device, overwrite):
    """PSNR, SSIM and depth error of MODEL_DIR on the test views of VIEWS_DIR."""
    from geoimplicit.mpi.evaluate import evaluate_views

    report = evaluate_views(model_dir, views_dir, out_dir, device=device, overwrite=overwrite,
                            progress=ctx.obj["progress"])
    mean = report["mean"]
    ctx.obj["progress"].result(**report["outputs"], psnr=f"{mean['psnr']:.2f}", ssim=f"{mean['ssim']:.4f}")
