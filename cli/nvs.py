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
@click.option("--refine-cameras", is_flag=True, help="Learn small pose corrections per view; writes cameras/.")
@click.option("--geo-products", is_flag=True, help="Geo layout: also write true_ortho.tif and height.tif.")
@click.option("--aoi", default=None, type=click.Path(dir_okay=False),
              help="Tiled fit: one MPI per tile of this AOI (not implemented yet).")
@click.option("--resume", is_flag=True, help="Continue from MODEL_DIR/checkpoint.pt.")
@device_option
@overwrite_option
@click.pass_context
def fit(ctx, views_dir, views_opt, model_dir, planes, layout, model_kind, steps, image_scale, refine_cameras,
        geo_products, aoi, resume, device, overwrite):
    """Fit an MPI to the train views of VIEWS_DIR (Images/, Cams/, view_split.txt)."""
    views = views_dir or views_opt
    if views is None:
        raise click.UsageError("give VIEWS_DIR (or --views)")
    if aoi is not None:
        raise click.UsageError("--aoi tiled MPI fitting is not implemented yet; fit one view set at a time")
    from geoimplicit.mpi.fit import FitConfig, fit_mpi

    cfg = FitConfig(planes=planes, layout=layout, model=model_kind, steps=steps, image_scale=image_scale,
                    refine_cameras=refine_cameras, device=device)
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
