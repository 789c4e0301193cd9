"""``geoimplicit surface``: neural SDF surfaces from posed views (fit, render, dsm, points)."""

from __future__ import annotations

import click

from cli.options import device_option, overwrite_option


@click.group("surface")
def surface():
    """Neural signed-distance surfaces (IDR) with trainable cameras and Iso-Points: fit per tile, render any
    camera, read off a DSM, export the Iso-Points."""


@surface.command("fit")
@click.argument("views_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", "model_dir", type=click.Path(file_okay=False), required=True,
              help="Model folder (model.pt, config.json, fit.json, iso_points.laz[, cameras/]).")
@click.option("--points", multiple=True, type=click.Path(),
              help="LAS/LAZ surface points in the views' CRS (files, folders or globs; repeatable): SDF = 0 there.")
@click.option("--aoi", type=click.Path(dir_okay=False), default=None,
              help="Polygon file (any CRS) bounding the surface's box (default: the most nadir view's footprint).")
@click.option("--refine-cameras", is_flag=True, help="Learn a pose correction per train view; writes cameras/.")
@click.option("--renderer", type=click.Choice(["idr", "volume"]), default=None,
              help="idr: sphere tracing + IDR's differentiable intersection; volume: NeuS-style volume rendering.")
@click.option("--encoding", type=click.Choice(["frequency", "grid"]), default=None,
              help="SDF input encoding: positional (frequency) or a multiresolution grid.")
@click.option("--steps", type=click.IntRange(min=0), default=None, help="Optimisation steps.")
@click.option("--image-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fit on images resized by this factor.")
@click.option("--no-iso-points", is_flag=True, help="Fit without Iso-Points guiding the sampling.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML or JSON file of surface settings (see docs/surface.md); options given here override it.")
@click.option("--resume", is_flag=True, help="Continue from MODEL_DIR/checkpoint.pt.")
@device_option
@overwrite_option
@click.pass_context
def fit(ctx, views_dir, model_dir, points, aoi, refine_cameras, renderer, encoding, steps, image_scale,
        no_iso_points, config_path, resume, device, overwrite):
    """Fit a neural SDF and its appearance to the train views of VIEWS_DIR (LEVIR-NVS layout with crs.txt)."""
    from geoimplicit.surface.config import SurfaceConfig
    from geoimplicit.surface.fit import fit_surface

    settings = _read_settings(config_path)
    given = {"renderer": renderer, "encoding": encoding, "steps": steps, "image_scale": image_scale}
    settings.update({k: v for k, v in given.items() if v is not None})
    if refine_cameras:
        settings["refine_cameras"] = True
    if no_iso_points:
        settings["iso_points"] = False
    settings["device"] = device
    cfg = SurfaceConfig.from_dict(settings)
    result = fit_surface(views_dir, model_dir, cfg, points=list(points) or None, aoi=aoi, resume=resume,
                         overwrite=overwrite, progress=ctx.obj["progress"])
    ctx.obj["progress"].result(**result.outputs)


def _read_settings(path) -> dict:
    if path is None:
        return {}
    import json
    from pathlib import Path

    from geoimplicit.errors import ConfigError, InputFileNotFoundError

    p = Path(path)
    if not p.is_file():
        raise InputFileNotFoundError("settings file not found", path=p, hint="check the path")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
        else:
            import yaml

            data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad settings file
        raise ConfigError(f"cannot parse the settings ({exc})", path=p, hint="write key: value lines") from None
    if not isinstance(data, dict):
        raise ConfigError("the settings file must hold a mapping of setting names to values", path=p)
    return data


@surface.command("render")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--cams", "cams_dir", type=click.Path(file_okay=False), required=True,
              help="Folder of camera files (NNN.txt), e.g. a view set's Track/ or Cams/.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Output folder (Images/*.png, Depths/*.tiff: z_cam, 0 where no surface).")
@click.option("--size", type=int, nargs=2, default=None, metavar="WIDTH HEIGHT",
              help="Image size (default: the train images').")
@device_option
@overwrite_option
@click.pass_context
def render(ctx, model_dir, cams_dir, out_dir, size, device, overwrite):
    """Render images and depth maps of the surface in MODEL_DIR for every camera file in --cams."""
    from geoimplicit.surface.products import render_views

    w, h = size if size else (None, None)
    outputs = render_views(model_dir, cams_dir, out_dir, device=device, width=w, height=h, overwrite=overwrite,
                           progress=ctx.obj["progress"])
    ctx.obj["progress"].result(**outputs)


@surface.command("dsm")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", "out_path", type=click.Path(dir_okay=False), required=True, help="DSM GeoTIFF.")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), required=True,
              help="Pixel size in CRS units.")
@device_option
@overwrite_option
@click.pass_context
def dsm(ctx, model_dir, out_path, resolution, device, overwrite):
    """DSM of one fitted surface over its box: the highest zero crossing of the SDF in every cell."""
    from geoimplicit.surface.products import write_dsm

    path = write_dsm(model_dir, out_path, resolution, device=device, overwrite=overwrite)
    ctx.obj["progress"].result(dsm=path)


@surface.command("points")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", "out_path", type=click.Path(dir_okay=False), required=True,
              help="LAS/LAZ 1.4 file (normals as extra bytes NormalX/Y/Z).")
@click.option("--count", type=click.IntRange(min=1), default=20000, help="Iso-Points to place.")
@device_option
@overwrite_option
@click.pass_context
def points(ctx, model_dir, out_path, count, device, overwrite):
    """Iso-Points of the surface in MODEL_DIR (on its zero level set, spread evenly) as LAS/LAZ in the CRS."""
    from geoimplicit.device import resolve_device
    from geoimplicit.surface.model import load_surface
    from geoimplicit.surface.products import export_iso_points

    if not out_path.lower().endswith((".las", ".laz")):
        raise click.BadParameter("must end in .las or .laz", param_hint="--output")
    model = load_surface(model_dir, resolve_device(device))
    path = export_iso_points(model, out_path, count=count, overwrite=overwrite)
    ctx.obj["progress"].result(points=path)
