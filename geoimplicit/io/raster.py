"""Raster input and output: GeoTIFFs of any band count and dtype, world-file images, tiled/COG writing.

Reads go by window for the requested bounds (never the whole file when a crop is asked for); a file in another
CRS, or a requested resolution, goes through a :class:`rasterio.vrt.WarpedVRT` onto the target grid.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyproj
from affine import Affine

from geoimplicit.errors import AOIError, CorruptInputError, InputFileNotFoundError, MissingCRSError, NoDataError
from geoimplicit.io.crs import crs_equal, crs_name, parse_crs, to_rasterio_crs
from geoimplicit.outputs import atomic_output

log = logging.getLogger(__name__)

__all__ = ["RasterData", "raster_info", "read_raster", "write_geotiff", "open_raster", "require_valid"]

_FIX_CORRUPT = "check the file (gdalinfo), or re-export it as a GeoTIFF"


@dataclass
class RasterData:
    """Pixels with their georeferencing.

    Attributes:
        array: (bands, rows, cols) pixel values, in the file's dtype.
        transform: affine pixel -> CRS transform (outer corner of pixel (0, 0), pixel-is-area).
        crs: the CRS of ``transform``.
        nodata: the nodata value of ``array`` (None if the file has none).
        mask: (rows, cols) bool, True where at least one band holds a valid (not nodata, not NaN) value.
    """

    array: np.ndarray
    transform: Affine
    crs: pyproj.CRS
    nodata: float | None
    mask: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return tuple(self.array.shape[-2:])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in ``crs``."""
        rows, cols = self.shape
        t = self.transform
        xs = (t.c, t.c + cols * t.a + rows * t.b)
        ys = (t.f, t.f + cols * t.d + rows * t.e)
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def resolution(self) -> tuple[float, float]:
        """(x, y) pixel size in CRS units, both positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    def masked(self, band: int = 0, fill=np.nan) -> np.ndarray:
        """One band as float64 with ``fill`` where the mask is False."""
        out = self.array[band].astype(np.float64)
        out[~self.mask] = fill
        return out


def _missing(path) -> InputFileNotFoundError:
    return InputFileNotFoundError("file not found", path=path, hint="check the path")


def open_raster(path):
    """Open ``path`` with rasterio, turning GDAL failures into :class:`CorruptInputError`."""
    import rasterio
    from rasterio.errors import RasterioIOError

    path = Path(path)
    if not path.exists():
        raise _missing(path)
    if path.is_dir():
        raise CorruptInputError("is a folder, not a raster", path=path, hint="give a GeoTIFF file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: handled by the callers
            ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise CorruptInputError(
            f"not a readable raster ({_gdal_reason(exc)})", path=path, hint=_FIX_CORRUPT
        ) from None
    if ds.count == 0 or ds.width == 0 or ds.height == 0:
        ds.close()
        raise CorruptInputError("holds no raster bands (a TIFF without image data?)", path=path, hint=_FIX_CORRUPT)
    return ds


def _gdal_reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 160 else text[:157] + "..."


def _is_georeferenced(ds) -> bool:
    return not (ds.transform == Affine.identity() and not ds.gcps[0])


def _source_crs(ds, path, crs) -> pyproj.CRS:
    """The file's own CRS, else its ``.prj`` sidecar's, else the assumed ``crs`` (for files without one)."""
    file_crs = parse_crs(ds.crs, source=path) if ds.crs is not None else _prj_crs(path)
    if file_crs is not None:
        if crs is not None and not crs_equal(file_crs, parse_crs(crs, source=path)):
            log.debug("%s: the file says %s; the assumed CRS %s is only for files without one", path,
                      crs_name(file_crs), crs)
        return file_crs
    if crs is None:
        world = _world_file(path)
        what = f"georeferenced by {world.name} but that holds no CRS" if world else "has no CRS"
        raise MissingCRSError(what, path=path, hint="pass --crs with the CRS of the image (e.g. EPSG:2154 or a .wkt "
                                                    f"file), or put its WKT in {Path(path).with_suffix('.prj').name}")
    return parse_crs(crs, source=path)


def _prj_crs(path) -> pyproj.CRS | None:
    """The CRS of a ``.prj`` file beside ``path`` (WKT, as Esri writes next to world files), or None."""
    for prj in (Path(path).with_suffix(".prj"), Path(path).with_suffix(".PRJ")):
        if prj.exists():
            return parse_crs(prj.read_text(errors="replace").strip(), source=prj)
    return None


def _world_file(path) -> Path | None:
    path = Path(path)
    ext = path.suffix.lstrip(".")
    candidates = [".wld", f".{ext[:1]}{ext[-1:]}w" if ext else ".wld", f".{ext}w"]
    for suffix in candidates:
        for p in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
            if p.exists():
                return p
    return None


def raster_info(path, crs=None) -> dict:
    """What a raster holds, without reading pixels.

    Returns:
        dict with ``crs`` (pyproj.CRS or None when the file has none and ``crs`` is None), ``bounds``,
        ``shape`` (rows, cols), ``count``, ``dtype``, ``nodata``, ``transform``, ``resolution``,
        ``georeferencing`` ("internal", "world file" or "none"), ``driver``.
    """
    with open_raster(path) as ds:
        file_crs = parse_crs(ds.crs, source=path) if ds.crs is not None else _prj_crs(path)
        use_crs = file_crs if file_crs is not None else (parse_crs(crs, source=path) if crs is not None else None)
        if not _is_georeferenced(ds):
            geo = "none"
        elif _world_file(path) is not None and ds.driver != "GTiff":
            geo = "world file"
        else:
            geo = "internal"
        return {
            "path": str(path),
            "driver": ds.driver,
            "crs": use_crs,
            "crs_in_file": file_crs is not None,
            "bounds": tuple(float(v) for v in ds.bounds),
            "shape": (ds.height, ds.width),
            "count": ds.count,
            "dtype": ds.dtypes[0],
            "dtypes": tuple(ds.dtypes),
            "nodata": None if ds.nodata is None else float(ds.nodata),
            "transform": ds.transform,
            "resolution": (abs(ds.transform.a), abs(ds.transform.e)),
            "georeferencing": geo,
            "block_shapes": tuple(ds.block_shapes),
            "compression": ds.compression.value.lower() if ds.compression is not None else None,
            "overviews": len(ds.overviews(1)),
        }


def _resampling(name):
    from rasterio.enums import Resampling

    if isinstance(name, Resampling):
        return name
    try:
        return Resampling[str(name)]
    except KeyError:
        raise ValueError(f"unknown resampling {name!r}; use one of {[r.name for r in Resampling]}") from None


def read_raster(
    path,
    bounds: Sequence[float] | None = None,
    *,
    crs=None,
    resolution: float | Sequence[float] | None = None,
    bands: Sequence[int] | int | None = None,
    resampling: str = "bilinear",
    dst_crs=None,
) -> RasterData:
    """Read a raster, or the window of it covering ``bounds``.

    Args:
        path: GeoTIFF or any GDAL raster; an image with a world file (``autzen.jpg`` + ``.wld``) needs ``crs``.
        bounds: (left, bottom, right, top) in ``dst_crs`` (or the file's CRS). The window is widened to whole
            pixels; parts outside the file come back as nodata (mask False).
        crs: the CRS to assume when the file has none. Ignored (with a warning) when the file has one.
        resolution: output pixel size in CRS units (one number or (x, y)); the data are resampled onto a grid
            with origin at ``bounds``' left/top.
        bands: 1-based band indexes (default all).
        resampling: rasterio resampling name, used when reprojecting or resampling.
        dst_crs: the CRS to return; the file is warped onto it when it differs.

    Raises:
        InputFileNotFoundError, CorruptInputError, MissingCRSError, AOIError (bounds miss the raster).
    """
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window, from_bounds
    from rasterio.errors import RasterioIOError

    path = Path(path)
    with open_raster(path) as ds:
        if not _is_georeferenced(ds):
            raise MissingCRSError(
                "has no georeferencing (no geotransform, no world file)", path=path,
                hint="give a GeoTIFF, or add a world file (.wld) beside the image and pass --crs",
            )
        src_crs = _source_crs(ds, path, crs)
        target_crs = src_crs if dst_crs is None else parse_crs(dst_crs, source=path)
        indexes = list(range(1, ds.count + 1)) if bands is None else ([bands] if isinstance(bands, int) else list(bands))
        for i in indexes:
            if not 1 <= i <= ds.count:
                raise ValueError(f"{path}: band {i} does not exist (the file has {ds.count})")
        nodata = ds.nodata
        fill = nodata if nodata is not None else (np.nan if np.issubdtype(np.dtype(ds.dtypes[0]), np.floating) else 0)
        warp = not crs_equal(src_crs, target_crs) or resolution is not None
        try:
            if not warp:
                if bounds is None:
                    window = Window(0, 0, ds.width, ds.height)
                else:
                    _check_bounds(bounds, ds.bounds, path)
                    window = from_bounds(*bounds, transform=ds.transform)
                    window = _whole_pixels(window)
                data = ds.read(indexes, window=window, boundless=bounds is not None, masked=True,
                               fill_value=fill)
                transform = ds.window_transform(window)
            else:
                res = None if resolution is None else (
                    (float(resolution), float(resolution)) if np.isscalar(resolution) else tuple(map(float, resolution))
                )
                vrt_kw = dict(crs=to_rasterio_crs(target_crs), resampling=_resampling(resampling))
                if ds.crs is None:  # a world-file image: its CRS from the .prj or the user
                    vrt_kw["src_crs"] = to_rasterio_crs(src_crs)
                if nodata is not None:
                    vrt_kw["src_nodata"] = nodata
                    vrt_kw["nodata"] = nodata
                with WarpedVRT(ds, **vrt_kw) as vrt:
                    out_bounds = tuple(bounds) if bounds is not None else tuple(vrt.bounds)
                    if bounds is not None:
                        _check_bounds(bounds, vrt.bounds, path)
                    if res is None:
                        res = (abs(vrt.transform.a), abs(vrt.transform.e))
                    left, bottom, right, top = out_bounds
                    width = max(1, int(math.ceil((right - left) / res[0] - 1e-9)))
                    height = max(1, int(math.ceil((top - bottom) / res[1] - 1e-9)))
                    transform = Affine(res[0], 0.0, left, 0.0, -res[1], top)
                    vrt_kw.update(transform=transform, width=width, height=height)
                with WarpedVRT(ds, **vrt_kw) as vrt:
                    data = vrt.read(indexes, masked=True)
        except RasterioIOError as exc:
            raise CorruptInputError(f"cannot read pixels ({_gdal_reason(exc)})", path=path, hint=_FIX_CORRUPT) from None

    array = np.ma.getdata(data)
    invalid = np.ma.getmaskarray(data)
    if np.issubdtype(array.dtype, np.floating):
        invalid = invalid | ~np.isfinite(array)
    mask = ~np.all(invalid, axis=0)
    return RasterData(array=np.ascontiguousarray(array), transform=transform, crs=target_crs,
                      nodata=None if nodata is None else float(nodata), mask=mask)


def _whole_pixels(window):
    from rasterio.windows import Window

    col0 = math.floor(window.col_off + 1e-6)
    row0 = math.floor(window.row_off + 1e-6)
    col1 = math.ceil(window.col_off + window.width - 1e-6)
    row1 = math.ceil(window.row_off + window.height - 1e-6)
    return Window(col0, row0, max(1, col1 - col0), max(1, row1 - row0))


def _check_bounds(bounds, data_bounds, path) -> None:
    left, bottom, right, top = map(float, bounds)
    if not (right > left and top > bottom):
        raise AOIError(f"invalid bounds {tuple(bounds)}", hint="give (left, bottom, right, top) with left < right and bottom < top")
    dl, db, dr, dt = data_bounds
    if right <= dl or left >= dr or top <= db or bottom >= dt:
        raise AOIError(
            f"the requested area {_fmt_bounds(bounds)} does not overlap the raster {_fmt_bounds(data_bounds)}",
            path=path, hint="check the AOI/bbox and its CRS",
        )


def _fmt_bounds(b) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in b) + ")"


def require_valid(raster: RasterData, path=None) -> RasterData:
    """Raise :class:`NoDataError` when ``raster`` holds no valid pixel; return it otherwise."""
    if not np.any(raster.mask):
        raise NoDataError("holds only nodata/NaN values in the requested area", path=path,
                          hint="check the nodata value and the area of interest")
    return raster


def _predictor(dtype) -> int:
    return 3 if np.issubdtype(dtype, np.floating) else 2


@functools.lru_cache(maxsize=1)
def fast_codec_profile() -> dict:
    """ZSTD level 1 where this GDAL has it (rasterio's wheels do), else DEFLATE level 1."""
    import rasterio
    import rasterio.shutil

    probe = "/vsimem/geoimplicit_zstd_probe.tif"
    try:
        with rasterio.open(probe, "w", driver="GTiff", width=1, height=1, count=1, dtype="uint8",
                           transform=Affine.translation(0, 1), compress="zstd") as ds:
            ds.write(np.zeros((1, 1, 1), np.uint8))
        with rasterio.open(probe) as ds:
            ok = ds.compression is not None and ds.compression.name.lower() == "zstd"
        rasterio.shutil.delete(probe)
    except rasterio.errors.RasterioError:
        ok = False
    return {"compress": "zstd", "zstd_level": 1} if ok else {"compress": "deflate", "zlevel": 1}


def write_geotiff(
    path,
    array: np.ndarray,
    transform: Affine,
    crs,
    *,
    nodata: float | None = -9999.0,
    cog: bool = False,
    tags: dict | None = None,
    band_descriptions: Sequence[str] | None = None,
    band_units: Sequence[str | None] | str | None = None,
    overwrite: bool = False,
    overviews: bool = True,
    fast_codec: bool = False,
) -> Path:
    """Write a tiled (256 x 256), DEFLATE-compressed GeoTIFF atomically; a Cloud-Optimized GeoTIFF if ``cog``.

    Args:
        path: output file.
        array: (rows, cols) or (bands, rows, cols); a masked array's mask and NaNs become ``nodata`` for floats.
        transform, crs: georeferencing (crs: anything :func:`parse_crs` takes; None writes no CRS).
        nodata: written in the file; dropped (None) for integer arrays whose dtype cannot hold it.
        cog: write a COG (internal overviews, tiles in COG order).
        tags: dataset tags (how the file was made).
        band_descriptions: one name a band.
        band_units: the unit of every band ("m", "ft": heights; see :func:`geoimplicit.io.crs.height_unit`),
            or one a band (None for a band without unit).
        overwrite: replace an existing file.
        overviews: build internal overviews (always for COGs when the image exceeds one tile).
        fast_codec: ZSTD level 1 instead of DEFLATE level 6 (not for COGs), for files that are read again soon
            (a run's tiles): 3-4x faster to write, about the same size (:func:`fast_codec_profile`).

    Returns:
        the final path.
    """
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling

    path = Path(path)
    arr = np.asanyarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"write_geotiff: array must be (rows, cols) or (bands, rows, cols), got {arr.shape}")
    mask = np.ma.getmaskarray(arr) if np.ma.isMaskedArray(arr) else None
    arr = np.ma.getdata(arr)
    if arr.dtype == np.float16 or arr.dtype == bool:
        arr = arr.astype(np.float32 if arr.dtype == np.float16 else np.uint8)
    if arr.dtype == np.int64:
        arr = arr.astype(np.int32) if np.abs(arr).max(initial=0) < 2**31 else arr.astype(np.float64)
    floating = np.issubdtype(arr.dtype, np.floating)
    if nodata is not None and not floating:
        info = np.iinfo(arr.dtype)
        if not (info.min <= nodata <= info.max) or float(nodata) != int(nodata):
            log.debug("%s: nodata %s does not fit %s; written without nodata", path, nodata, arr.dtype)
            nodata = None
    if floating or mask is not None:
        arr = arr.copy()
        if floating and nodata is not None:
            arr[~np.isfinite(arr)] = nodata
        if mask is not None and nodata is not None:
            arr[mask] = nodata
    count, rows, cols = arr.shape
    rio_crs = None if crs is None else to_rasterio_crs(crs)
    profile = dict(
        driver="GTiff", width=cols, height=rows, count=count, dtype=arr.dtype.name, crs=rio_crs,
        transform=transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
        compress="deflate", predictor=_predictor(arr.dtype), zlevel=6, BIGTIFF="IF_SAFER",
        interleave="pixel" if count in (3, 4) and arr.dtype == np.uint8 else "band",
    )
    if fast_codec and not cog:
        del profile["zlevel"]
        profile.update(fast_codec_profile())
    resampling = Resampling.average if floating else Resampling.nearest

    def _fill(ds):
        ds.write(arr)
        if tags:
            ds.update_tags(**{str(k): str(v) for k, v in tags.items()})
        if band_descriptions:
            for i, name in enumerate(band_descriptions[:count], start=1):
                ds.set_band_description(i, str(name))
        units = [band_units] * count if isinstance(band_units, str) else list(band_units or ())
        for i, unit in enumerate(units[:count], start=1):
            if unit:
                ds.set_band_unit(i, str(unit))

    def _factors():
        factors, f = [], 2
        while max(rows, cols) / f >= 128 and f <= 4096:
            factors.append(f)
            f *= 2
        return factors

    with atomic_output(path, overwrite=overwrite) as tmp:
        if not cog:
            with rasterio.open(tmp, "w", **profile) as ds:
                _fill(ds)
                if overviews and _factors():
                    ds.build_overviews(_factors(), resampling)
                    ds.update_tags(ns="rio_overview", resampling=resampling.name)
        else:
            staging = tmp.with_name(tmp.stem + ".staging.tif")
            try:
                with rasterio.open(staging, "w", **{**profile, "compress": "deflate"}) as ds:
                    _fill(ds)
                rasterio.shutil.copy(
                    staging, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256, LEVEL=6,
                    PREDICTOR="FLOATING_POINT" if floating else "STANDARD",
                    OVERVIEWS="AUTO" if overviews else "NONE", OVERVIEW_RESAMPLING=resampling.name.upper(),
                    BIGTIFF="IF_SAFER",
                )
            finally:
                for p in (staging, staging.with_name(staging.name + ".aux.xml")):
                    if p.exists():
                        p.unlink()
    return path
