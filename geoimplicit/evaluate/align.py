"""Put a predicted DSM on the truth's grid, respecting both nodata masks.

The truth's grid (CRS, transform, shape) is the evaluation grid. The prediction is resampled onto it with
bilinear interpolation that is nodata-aware: a cell is valid only where every source pixel that bilinear
interpolation uses is valid, so nodata never bleeds into valid values. Grids that are identical, or a window
of each other on the same lattice, are copied exactly (no interpolation).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.warp import Resampling, reproject

from geoimplicit.errors import (
    CorruptInputError, CRSMismatchError, InputError, InputFileNotFoundError, MissingCRSError, NoDataError,
)

log = logging.getLogger(__name__)

#: a resampled cell is kept only if this much of its bilinear weight comes from valid pixels
_VALID_WEIGHT = 0.999


@dataclass
class Grid:
    """A north-up raster grid: ``transform`` (outer corner of pixel (0, 0)), ``shape`` (rows, cols), ``crs``."""

    transform: Affine
    shape: tuple[int, int]
    crs: CRS | None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        rows, cols = self.shape
        left, top = self.transform.c, self.transform.f
        right = left + cols * self.transform.a
        bottom = top + rows * self.transform.e
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    @property
    def resolution(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)


@dataclass
class RasterBand:
    """One band read as float64 with NaN where invalid (nodata, masked, NaN)."""

    path: Path
    array: np.ndarray
    grid: Grid
    nodata: float | None

    @property
    def mask(self) -> np.ndarray:
        return np.isfinite(self.array)


@dataclass
class AlignedPair:
    """Prediction and truth on the truth's grid; NaN marks invalid cells in both arrays.

    ``overlap_fraction`` = cells valid in both / cells valid in the truth.
    """

    prediction: np.ndarray
    truth: np.ndarray
    grid: Grid
    prediction_path: Path
    truth_path: Path
    prediction_offset_crs: tuple[float, float] = (0.0, 0.0)
    info: dict = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.prediction) & np.isfinite(self.truth)

    @property
    def residual(self) -> np.ndarray:
        """prediction - truth, NaN where either is invalid."""
        with np.errstate(invalid="ignore"):
            return np.where(self.valid, self.prediction - self.truth, np.nan)

    @property
    def overlap_fraction(self) -> float:
        truth_valid = int(np.isfinite(self.truth).sum())
        return float(self.valid.sum() / truth_valid) if truth_valid else 0.0

    def overlap(self) -> dict:
        """Cell counts and fractions for the report."""
        truth_valid = int(np.isfinite(self.truth).sum())
        pred_valid = int(np.isfinite(self.prediction).sum())
        both = int(self.valid.sum())
        cells = int(self.truth.size)
        return {
            "grid_cells": cells,
            "truth_valid": truth_valid,
            "prediction_valid_on_truth_grid": pred_valid,
            "both_valid": both,
            "valid_overlap_fraction": both / truth_valid if truth_valid else 0.0,
            "valid_fraction_of_grid": both / cells if cells else 0.0,
        }


def read_band(path: str | os.PathLike, band: int = 1) -> RasterBand:
    """Read one band as float64 with NaN where the dataset mask (nodata, internal mask) says invalid."""
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError("file not found", path=path, hint="check the path")
    try:
        with rasterio.open(path) as src:
            if band > src.count:
                raise CorruptInputError(f"has {src.count} band(s), band {band} was asked for", path=path)
            check_height_raster(src, path)
            data = src.read(band).astype(np.float64)
            valid = src.read_masks(band) > 0
            crs = CRS.from_user_input(src.crs) if src.crs else None
            grid = Grid(src.transform, (src.height, src.width), crs)
            nodata = src.nodata
    except rasterio.errors.RasterioIOError as exc:
        raise CorruptInputError(f"cannot be read as a raster ({exc})", path=path,
                                hint="pass a GeoTIFF or another GDAL raster") from exc
    if grid.transform.b != 0 or grid.transform.d != 0:
        raise CorruptInputError("has a rotated geotransform", path=path, hint="warp it to a north-up grid (gdalwarp)")
    valid &= np.isfinite(data)
    if nodata is not None and not math.isnan(nodata):
        valid &= data != nodata
    data[~valid] = np.nan
    return RasterBand(path, data, grid, nodata)


def check_height_raster(src, path) -> None:
    """Refuse an image where a DSM is expected: three or more bands, or colour bands (an ortho, a photo)."""
    from rasterio.enums import ColorInterp

    colour = {ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.palette, ColorInterp.alpha}
    if src.count >= 3 or src.colorinterp[0] in colour:
        kind = f"{src.count} bands of {src.dtypes[0]}"
        raise InputError(f"is an image ({kind}, {src.colorinterp[0].name} first), not a height raster", path=path,
                         hint="pass a single-band DSM/DEM (heights in one band), not an ortho or a photo")


def read_crs(path: str | os.PathLike) -> CRS | None:
    """The CRS of a raster file (None when it has none)."""
    with rasterio.open(path) as src:
        return CRS.from_user_input(src.crs) if src.crs else None


def same_crs(a: CRS | None, b: CRS | None) -> bool:
    """CRS equality that ignores axis order and WKT flavour (a WKT without EPSG code equals its EPSG CRS)."""
    if a is None or b is None:
        return a is None and b is None
    if a == b or a.equals(b, ignore_axis_order=True):
        return True
    try:
        return a.to_epsg(min_confidence=90) is not None and a.to_epsg(min_confidence=90) == b.to_epsg(min_confidence=90)
    except Exception:  # noqa: BLE001 - pyproj raises various errors on odd WKT
        return False


def crs_label(crs: CRS | None) -> str:
    """A short name: 'EPSG:2154', else the CRS name, else 'no CRS'."""
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg(min_confidence=70)
    return f"EPSG:{epsg}" if epsg else crs.name


def check_crs(pred: RasterBand, truth: RasterBand, reproject_ok: bool) -> None:
    """Raise a clear error when the CRSs differ (and reprojection was not asked for) or one is missing."""
    pc, tc = pred.grid.crs, truth.grid.crs
    if (pc is None) != (tc is None):
        missing, other = (pred, truth) if pc is None else (truth, pred)
        raise MissingCRSError(
            f"has no CRS but {other.path.name} is {crs_label(other.grid.crs)}", path=missing.path,
            hint="assign the CRS with gdal_edit.py -a_srs EPSG:XXXX",
        )
    if not same_crs(pc, tc) and not reproject_ok:
        raise CRSMismatchError(
            f"prediction is {crs_label(pc)} but truth {truth.path.name} is {crs_label(tc)}", path=pred.path,
            hint="pass --reproject to resample the prediction onto the truth's grid",
        )


def _lattice_offset(src: Grid, dst: Grid) -> tuple[int, int] | None:
    """(row, col) offset of dst's origin in src's pixels if both grids share one lattice, else None."""
    if not same_crs(src.crs, dst.crs):
        return None
    if not (math.isclose(src.transform.a, dst.transform.a, rel_tol=1e-9)
            and math.isclose(src.transform.e, dst.transform.e, rel_tol=1e-9)):
        return None
    col = (dst.transform.c - src.transform.c) / src.transform.a
    row = (dst.transform.f - src.transform.f) / src.transform.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(row)), int(round(col))


def resample_to_grid(band: RasterBand, dst: Grid, *, offset_crs: tuple[float, float] = (0.0, 0.0),
                     resampling: str = "bilinear") -> np.ndarray:
    """``band`` on the grid ``dst`` (float64, NaN invalid); ``offset_crs`` translates the source first.

    ``offset_crs`` = (dx, dy) in the source CRS units, x east and y north: the source's content is moved by
    this vector before resampling (used to apply a co-registration shift).
    """
    src_transform = Affine.translation(*offset_crs) @ band.grid.transform
    src = Grid(src_transform, band.grid.shape, band.grid.crs)
    offset = _lattice_offset(src, dst)
    out = np.full(dst.shape, np.nan)
    if offset is not None:  # same lattice: exact copy of the overlapping window
        r0, c0 = offset
        rows, cols = dst.shape
        sr0, sc0 = max(r0, 0), max(c0, 0)
        sr1, sc1 = min(r0 + rows, src.shape[0]), min(c0 + cols, src.shape[1])
        if sr1 > sr0 and sc1 > sc0:
            out[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = band.array[sr0:sr1, sc0:sc1]
        return out
    method = getattr(Resampling, resampling)
    valid = np.isfinite(band.array)
    filled = np.where(valid, band.array, 0.0)
    # interpolate the zero-filled values and the validity weight with the same kernel, without any nodata
    # handling in GDAL: value = sum(w v) / sum(w) over valid pixels, kept only where sum(w) ~ 1
    num = np.zeros(dst.shape)
    weight = np.zeros(dst.shape)
    kw = dict(src_transform=src.transform, src_crs=src.crs, dst_transform=dst.transform, dst_crs=dst.crs,
              resampling=method, init_dest_nodata=False)
    if src.crs is None:
        kw["src_crs"] = kw["dst_crs"] = "EPSG:3857"  # any CRS: both grids are in the same (unknown) one
    reproject(filled, num, **kw)
    reproject(valid.astype(np.float64), weight, **kw)
    # cells outside the source footprint are left at 0 weight by GDAL
    good = weight >= _VALID_WEIGHT
    out[good] = num[good] / weight[good]
    return out


def align_to_truth(
    prediction: str | os.PathLike,
    truth: str | os.PathLike,
    *,
    reproject: bool = False,
    prediction_offset_crs: tuple[float, float] = (0.0, 0.0),
    resampling: str = "bilinear",
) -> AlignedPair:
    """Read both DSMs and resample the prediction onto the truth's grid.

    Args:
        prediction: predicted DSM (GeoTIFF); band 1 is used.
        truth: reference DSM; its grid is the evaluation grid.
        reproject: allow a prediction in another CRS (warped onto the truth's grid); otherwise a
            :class:`CRSMismatchError` is raised.
        prediction_offset_crs: (dx, dy) translation of the prediction in its CRS units (x east, y north),
            e.g. a co-registration shift.
        resampling: rasterio resampling name for the prediction ("bilinear", "nearest", "cubic").

    Raises:
        InputFileNotFoundError, CorruptInputError, MissingCRSError, CRSMismatchError, NoDataError (no cell valid
        in both).
    """
    pred_band = read_band(prediction)
    truth_band = read_band(truth)
    check_crs(pred_band, truth_band, reproject)
    if not np.isfinite(truth_band.array).any():
        raise NoDataError("truth holds only nodata", path=truth_band.path)
    if not np.isfinite(pred_band.array).any():
        raise NoDataError("prediction holds only nodata", path=pred_band.path)
    pred_on_truth = resample_to_grid(pred_band, truth_band.grid, offset_crs=prediction_offset_crs,
                                     resampling=resampling)
    pair = AlignedPair(pred_on_truth, truth_band.array, truth_band.grid, pred_band.path, truth_band.path,
                       prediction_offset_crs=tuple(prediction_offset_crs))
    pair.info = {"prediction_grid": _grid_dict(pred_band.grid), "prediction_nodata": pred_band.nodata,
                 "truth_nodata": truth_band.nodata}
    if not pair.valid.any():
        raise NoDataError(
            f"prediction and truth {truth_band.path.name} have no valid cell in common", path=pred_band.path,
            hint="check that both DSMs cover the same area (and the same CRS)",
        )
    log.info("aligned %s onto %s: %.1f%% of the truth's valid cells overlap", pred_band.path.name,
             truth_band.path.name, 100 * pair.overlap_fraction)
    return pair


def _grid_dict(grid: Grid) -> dict:
    return {"crs": crs_label(grid.crs), "transform": list(grid.transform)[:6], "shape": list(grid.shape),
            "bounds": list(grid.bounds)}
