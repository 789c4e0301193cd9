"""``geoimplicit nvs``: novel views from multiplane images (fit, render, eval)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import device_option, overwrite_option
from geoimplicit.errors import ConfigError


@click.group("nvs")
def nvs():
    """Novel view synthesis with multiplane images (ImMPI): fit per scene, render any camera, evaluate."""


@nvs.command("fit")
@click.argument("views_dir", required=False, type=click.Path(file_okay=False))
@click.option("--views", "views_opt", type=click.Path(file_okay=False), default=None,
              help="Views folder (LEVIR-NVS layout); same as VIEWS_DIR.")
@click.option("-o", "--output", "model_dir", type=click.Path(file_okay=False), required=True,
              help="Model folder (model.pt, config.json[, cameras/]).")
@click.option("--preset", type=click.Choice(["auto", "best", "fast", "cpu"]), default=None,
              help="Settings the options below start from. best: geo layout, 96 planes, union extent, colour share "
                   "0.8, 1500 steps (the best measured); fast: 32 planes, 500 steps; cpu: 24 planes, 300 steps, "
                   "images at most 192 px. Default auto: best on a CUDA GPU, cpu otherwise (--aoi: the tiled "
                   "fit's own defaults).")
@click.option("--prior", default="none", show_default=True, metavar="default|none|PATH",
              help="Start from the across-scene MPI prior (geo layout): the shipped weights (default), none (the "
                   "plane sweep), or weights written by 'nvs train-prior'.")
@click.option("--planes", type=click.IntRange(min=2), default=None, help="Number of planes (preset: 96/32/24).")
@click.option("--layout", type=click.Choice(["fronto", "geo"]), default=None,
              help="fronto: planes parallel to a reference camera (ImMPI); geo: horizontal planes on a map grid "
                   "(every preset).")
@click.option("--model", "model_kind", type=click.Choice(["direct", "conv", "mlp"]), default="direct",
              help="Generator of the planes' colour and density.")
@click.option("--steps", type=click.IntRange(min=0), default=None, help="Optimisation steps (preset: 1500/500/300).")
@click.option("--image-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fit on images resized by this factor (preset: 1; cpu: down to 192 px).")
@click.option("--colour-share", type=click.FloatRange(0, 1), default=None,
              help="Tie each texel's colour across the planes (0: free per plane, ImMPI; 1: one colour per texel; "
                   "every preset: 0.8, for near-nadir aerial/satellite views).")
@click.option("--extent", type=click.Choice(["nadir", "union"]), default=None,
              help="Geo layout: texture over the most nadir view's footprint, or over all train views' footprints "
                   "(what off-nadir test views see near the edges; slower; preset: union, cpu: nadir).")
@click.option("--refine-cameras", is_flag=True, help="Learn small pose corrections per view; writes cameras/.")
@click.option("--refine-rounds", type=click.IntRange(min=1), default=None,
              help="--refine-cameras: fits in a row, each from the cameras the one before refined (default 4; "
                   "each costs a whole fit; rounds/ keeps each round's cameras).")
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
def fit(ctx, views_dir, views_opt, model_dir, preset, prior, planes, layout, model_kind, steps, image_scale,
        colour_share, extent, refine_cameras, refine_rounds,
        geo_products, aoi, tile_size, overlap, resolution, height_range, min_view_coverage, scheduler, dask_workers,
        gpus_per_worker, resume, device, overwrite):
    """Fit an MPI to the train views of VIEWS_DIR (Images/, Cams/, view_split.txt); with --aoi, one geo-MPI per
    tile of the AOI (resumable), mosaicked into true_ortho.tif and height.tif."""
    views = views_dir or views_opt
    if views is None:
        raise click.UsageError("give VIEWS_DIR (or --views)")
    from geoimplicit.mpi.fit import FitConfig, fit_mpi

    given = {k: v for k, v in dict(planes=planes, layout=layout, steps=steps, image_scale=image_scale,
                                   colour_share=colour_share, extent=extent).items() if v is not None}
    settings, notice = _preset(preset, given, aoi is not None, views, device)
    settings["prior"] = prior
    if aoi is not None:
        if settings["layout"] != "geo":
            raise click.BadParameter("--aoi fits geo-layout MPIs", param_hint="--layout")
        if refine_cameras or refine_rounds or geo_products or prior != "none":
            raise click.BadParameter("not available with --aoi",
                                     param_hint="--refine-cameras/--refine-rounds/--geo-products/--prior")
        from geoimplicit.jobs.executors import make_executor
        from geoimplicit.mpi.tiled import fit_tiled

        cfg = FitConfig(model=model_kind, **settings)
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
    if refine_rounds is not None:
        if not refine_cameras:
            raise ConfigError("--refine-rounds: rounds of camera refinement need --refine-cameras",
                              hint="add --refine-cameras or leave out --refine-rounds")
        settings["refine_rounds"] = refine_rounds
    cfg = FitConfig(model=model_kind, refine_cameras=refine_cameras, device=device, **settings)
    cfg.validate()
    if prior != "none":  # a missing or foreign weights file is named before anything runs
        from geoimplicit.mpi.prior.checkpoint import load_prior_checkpoint

        load_prior_checkpoint(prior)
    if notice and not ((Path(model_dir) / "model.pt").exists() and not (overwrite or resume)):
        click.echo(notice, err=True)  # after the checks, so that an error stays one line
    result = fit_mpi(views, model_dir, cfg, resume=resume, overwrite=overwrite, progress=ctx.obj["progress"])
    outputs = dict(result.outputs)
    if geo_products:
        from geoimplicit.mpi.render import render_geo_products

        outputs.update(render_geo_products(model_dir, model_dir, device=device, overwrite=True))
    ctx.obj["progress"].result(**outputs)


def _preset(preset, given: dict, tiled: bool, views, device) -> tuple[dict, str | None]:
    """The fit's settings, ``given`` over ``--preset`` (``auto``: best on a CUDA GPU, cpu otherwise; a tiled fit
    without ``--preset`` keeps its own defaults), and a notice of what the CPU changed, if it changed anything."""
    from geoimplicit.mpi.fit import CPU_IMAGE_SIDE, preset_settings

    if tiled and preset is None:
        base = {"planes": 32, "layout": "geo", "steps": 1500, "image_scale": 1.0, "colour_share": 0.0,
                "extent": "nadir"}
        return {**base, **given}, None
    side = None
    if preset in (None, "auto", "cpu") and "image_scale" not in given:
        from geoimplicit.io.cameras import ViewSet

        vs = ViewSet.load(views)
        side = max(max(c.width, c.height) for c in vs.cameras.values())
    name, base = preset_settings(preset or "auto", device, side)
    taken = {k: v for k, v in base.items() if k not in given}
    notice = None
    if name == "cpu" and preset in (None, "auto") and taken:
        what = ", ".join(f"{k.replace('_', '-')} {v:.3g}" if isinstance(v, float) else f"{k.replace('_', '-')} {v}"
                         for k, v in taken.items())
        notice = (f"nvs fit: no CUDA GPU, so the 'cpu' preset ({what}; images at most {CPU_IMAGE_SIDE} px): "
                  "minutes, not hours. --preset best fits the full configuration (far slower on a CPU)")
    elif name == "best" and taken:
        from geoimplicit.device import resolve_device

        if resolve_device(device).type == "cpu":
            notice = ("nvs fit: the 'best' preset on the CPU (96 planes, full-size images) can take hours; "
                      "--preset cpu takes minutes")
    return {**base, **given}, notice


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
@click.option("--align-poses", type=click.IntRange(min=0), default=0, metavar="STEPS",
              help="First align each test camera to the fitted MPI in STEPS steps of photometric pose refinement "
                   "(BARF's test-time protocol, for fits made with --refine-cameras; 200 is plenty); the report "
                   "keeps the given cameras' PSNR too.")
@device_option
@overwrite_option
@click.pass_context
def evaluate(ctx, model_dir, views_dir, out_dir, align_poses, device, overwrite):
    """PSNR, SSIM and depth error of MODEL_DIR on the test views of VIEWS_DIR."""
    from geoimplicit.mpi.evaluate import evaluate_views

    report = evaluate_views(model_dir, views_dir, out_dir, device=device, overwrite=overwrite,
                            align_poses=align_poses, progress=ctx.obj["progress"])
    mean = report["mean"]
    ctx.obj["progress"].result(**report["outputs"], psnr=f"{mean['psnr']:.2f}", ssim=f"{mean['ssim']:.4f}")


@nvs.command("train-prior")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "run_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: config.json, scenes/, last.pt (resumable), model.pt, metrics.jsonl.")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its last.pt (and its rendered scenes).")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0), default=None,
              help="Override time_limit_s: training seconds over all resumed runs (0 = no limit).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override steps.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Override workers: processes rendering training scenes while it trains.")
@click.option("--export", type=click.Path(dir_okay=False), default=None,
              help="Also copy the final weights here (e.g. geoimplicit/weights/mpi_prior_default.pt).")
@click.option("--init", "init", default=None,
              help="Start from these weights (default = the shipped ones, or a path; same network): a warm start "
                   "with a new optimiser and schedule. Ignored when --resume finds RUN_DIR/last.pt.")
@device_option
@overwrite_option
@click.pass_context
def train_prior(ctx, config, run_dir, resume, time_limit_s, steps, workers, export, init, device, overwrite):
    """Train the across-scene MPI prior on generated scenes as CONFIG (YAML/JSON, or a packaged name such as
    mpi_prior.yaml) says; stops at the time limit or the steps and writes RUN_DIR/model.pt."""
    from pathlib import Path

    from geoimplicit.errors import OutputExistsError
    from geoimplicit.mpi.prior.train import export_weights, load_train_config, train_prior as run

    path = Path(config)
    if not path.exists() and path.parent == Path("."):
        from geoimplicit.config import CONFIG_DIR

        if (CONFIG_DIR / path.name).exists():
            path = CONFIG_DIR / path.name
    cfg = load_train_config(path)
    for key, value in (("time_limit_s", time_limit_s), ("steps", steps), ("workers", workers)):
        if value is not None:
            setattr(cfg, key, value)
    if export and Path(export).exists() and not overwrite:
        raise OutputExistsError("the export file exists", path=export, hint="pass --overwrite or another --export")
    summary = run(cfg, run_dir, device=device, resume=resume, overwrite=overwrite, init=init,
                  progress=ctx.obj["progress"])
    exported = export_weights(summary["model"], export) if export else None
    m = summary["metrics"]
    ctx.obj["progress"].result(
        model=summary["model"], run_dir=summary["run_dir"], exported=exported, steps=summary["steps"],
        train_seconds=f"{summary['train_s']:.0f}", scenes=m.get("scenes"),
        val_psnr=f"{m['val_psnr']:.2f}" if "val_psnr" in m else None,
        val_height_mae=f"{m['val_height_mae']:.3f}" if "val_height_mae" in m else None,
        val_sweep_height_mae=f"{m['val_sweep_height_mae']:.3f}" if "val_sweep_height_mae" in m else None)
