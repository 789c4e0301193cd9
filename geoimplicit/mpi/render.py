"""Render a fitted MPI: images and depth maps for camera files, camera tracks to MP4/GIF, geo-MPI map products."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from geoimplicit.errors import CameraFileError, GeoImplicitError, InputError
from geoimplicit.geometry.cameras import nadir_camera  # re-exported: mpi/tiled.py imports it from here
from geoimplicit.io.cameras import read_cameras_dir
from geoimplicit.outputs import atomic_output
from geoimplicit.progress import check_cancel

log = logging.getLogger(__name__)

__all__ = ["render_views", "write_png", "write_depth_tiff", "write_video", "nadir_camera", "render_geo_products"]


def write_png(path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def write_depth_tiff(path, depth: np.ndarray) -> None:
    """Float32 single-band TIFF (readable as ``np.array(Image.open(p))``, the LEVIR-NVS way)."""
    from PIL import Image

    Image.fromarray(np.nan_to_num(depth, nan=0.0).astype(np.float32), mode="F").save(path)


def write_video(frames: list[np.ndarray], mp4_path=None, gif_path=None, fps: int = 10) -> None:
    """Frames (H, W, 3) uint8 to an H.264 MP4 (imageio-ffmpeg's bundled ffmpeg) and/or a GIF."""
    import imageio.v2 as imageio

    if mp4_path is not None:
        h, w = frames[0].shape[:2]
        pad = [(0, h % 2), (0, w % 2), (0, 0)]  # yuv420p needs even sizes
        with imageio.get_writer(mp4_path, fps=fps, codec="libx264", format="FFMPEG", macro_block_size=1,
                                pixelformat="yuv420p") as wr:
            for f in frames:
                wr.append_data(np.pad(f, pad, mode="edge"))
    if gif_path is not None:
        imageio.mimsave(gif_path, frames, format="GIF", duration=1.0 / fps, loop=0)


def _camera_folder(cams_dir: Path) -> Path:
    if (cams_dir / "Cams").is_dir() and not any(p.suffix == ".txt" for p in cams_dir.iterdir()):
        return cams_dir / "Cams"
    return cams_dir


def render_views(
    model_dir,
    cams_dir,
    out_dir,
    *,
    video: bool = False,
    fps: int = 10,
    device: str = "auto",
    width: int | None = None,
    height: int | None = None,
    overwrite: bool = False,
    fused: bool = True,
    progress=None,
    cancel=None,
) -> dict[str, Path]:
    """Render every camera file of ``cams_dir`` to ``out_dir/Images/*.png`` and ``out_dir/Depths/*.tiff``.

    With ``video``, the frames (in file-name order) also go to ``out_dir/track.mp4`` and ``track.gif``.
    """
    from geoimplicit.device import resolve_device
    from geoimplicit.mpi.scene import MPIScene

    if video and importlib.util.find_spec("imageio_ffmpeg") is None:  # before anything is rendered or written
        raise GeoImplicitError("an MP4 video needs the imageio-ffmpeg package (it carries ffmpeg)",
                               hint="pip install imageio-ffmpeg, or leave out --video")
    scene = MPIScene.load(model_dir, resolve_device(device))
    cams = read_cameras_dir(_camera_folder(Path(cams_dir)))
    out_dir = Path(out_dir)
    w = width or scene.image_size[0]
    h = height or scene.image_size[1]
    outputs: dict[str, Path] = {}
    with atomic_output(out_dir, overwrite) as tmp:
        (tmp / "Images").mkdir(parents=True)
        (tmp / "Depths").mkdir()
        frames = []
        for k, (name, cam) in enumerate(cams.items()):
            check_cancel(cancel)
            out = scene.render(cam, width=w, height=h, fused=fused)
            write_png(tmp / "Images" / f"{name}.png", out["rgb"])
            write_depth_tiff(tmp / "Depths" / f"{name}.tiff", np.where(out["opacity"] > 0.5, out["depth"], 0.0))
            frames.append((np.clip(out["rgb"], 0, 1) * 255 + 0.5).astype(np.uint8))
            if progress is not None:
                progress(k + 1, len(cams), "render", name)
        if video:
            write_video(frames, tmp / "track.mp4", tmp / "track.gif", fps=fps)
    outputs["images"] = out_dir / "Images"
    outputs["depths"] = out_dir / "Depths"
    if video:
        outputs["video"] = out_dir / "track.mp4"
        outputs["gif"] = out_dir / "track.gif"
    return outputs


def render_geo_products(model_dir, out_dir, *, device="auto", overwrite=False, nodata=-9999.0) -> dict[str, Path]:
    """True-ortho (RGB, uint8) and height raster (float32) GeoTIFFs from a geo-layout MPI's nadir render."""
    from geoimplicit.device import resolve_device
    from geoimplicit.mpi.scene import MPIScene

    scene = MPIScene.load(model_dir, resolve_device(device))
    pl = scene.planes
    if pl.layout != "geo":
        raise InputError("map products need a geo-layout MPI", path=model_dir, hint="fit with --layout geo")
    if not pl.crs:
        raise CameraFileError("the view set had no crs.txt, so the MPI has no CRS", path=model_dir,
                              hint="add crs.txt (e.g. EPSG:2154) to the views folder and refit")
    left = pl.left + pl.origin[0]
    top = pl.top + pl.origin[1]
    cam = nadir_camera(left, top, pl.resolution, pl.width, pl.height)
    out = scene.render(cam)
    height_m = -out["depth"]  # depth along (0, 0, -1) is -Z
    valid = out["opacity"] > 0.5
    height_m = np.where(valid, height_m, nodata).astype(np.float32)
    ortho = (np.clip(out["rgb"], 0, 1) * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1)
    from affine import Affine

    transform = Affine(pl.resolution, 0, left, 0, -pl.resolution, top)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"ortho": out_dir / "true_ortho.tif", "height": out_dir / "height.tif"}
    _write_tif(paths["ortho"], ortho, transform, pl.crs, None, overwrite)
    _write_tif(paths["height"], height_m, transform, pl.crs, nodata, overwrite, heights=True)
    return paths


def _write_tif(path, array, transform, crs, nodata, overwrite, heights=False):
    try:
        from geoimplicit.io.crs import height_unit
        from geoimplicit.io.raster import write_geotiff
    except ImportError:  # pragma: no cover - rasterio-less GPU machine
        write_geotiff = None
    if write_geotiff is not None:
        unit = height_unit(crs) if heights else None  # "m" or "ft" on the height raster
        return write_geotiff(path, array, transform, crs, nodata=nodata, overwrite=overwrite, band_units=unit,
                             tags={"software": "geoimplicit nvs (geo-MPI nadir render)"})
    import rasterio

    arr = array if array.ndim == 3 else array[None]
    with atomic_output(path, overwrite) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                           dtype=arr.dtype, crs=crs, transform=transform, nodata=nodata, tiled=True,
                           blockxsize=256, blockysize=256, compress="deflate") as ds:
            ds.write(arr)
    return path
