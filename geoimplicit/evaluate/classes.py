"""Cell groups for per-class, per-slope-band and per-tile statistics, all on the evaluation (truth) grid.

Each function returns a list of :class:`Zone` (a name, a boolean mask on the grid, and descriptive fields).

Class sources:
- a class raster (``--classes``): one zone per value, named by its LAS code when it is one (2 ground,
  3/4/5 low/medium/high vegetation, 6 building, 9 water...); resampled onto the grid by nearest neighbour
  (majority "mode" when the class raster is finer than the grid);
- a polygon layer (``--class-polygons`` + ``--class-field``): one zone per distinct field value, rasterised
  with rasterio.features (a cell belongs to the polygon covering its centre; later features win);
- LAS/LAZ points (``--class-points``): codes grouped into ground (2), building (6), vegetation (3, 4, 5), each
  cell labelled by the majority group of the points falling in it (other codes count, and win nothing).

Building dilation (ImpliCity's evaluation): the building zone is dilated by ``dilate_buildings_px`` pixels and
the dilated band is removed from every other zone, so that facade cells (where a small horizontal error makes
a large height error) count as building.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject
from scipy import ndimage

from geoimplicit.errors import CorruptInputError, InputError, InputFileNotFoundError
from geoimplicit.evaluate.align import Grid, crs_label, same_crs
from geoimplicit.evaluate.terrain import slope_percent as terrain_slope_percent

log = logging.getLogger(__name__)

LAS_CLASS_NAMES = {
    0: "never classified", 1: "unclassified", 2: "ground", 3: "low vegetation", 4: "medium vegetation",
    5: "high vegetation", 6: "building", 7: "low point (noise)", 8: "reserved", 9: "water", 10: "rail",
    11: "road surface", 13: "wire guard", 14: "wire conductor", 15: "transmission tower",
    17: "bridge deck", 18: "high noise",
}
#: LAS codes grouped as the report's point-cloud classes
LAS_GROUPS = {"ground": (2,), "building": (6,), "vegetation": (3, 4, 5)}
#: default slope band edges in percent (the last band is open: >= 90 %)
SLOPE_BANDS_PERCENT = (0.0, 5.0, 10.0, 25.0, 45.0, 90.0)


@dataclass
class Zone:
    """A named set of grid cells. ``fields`` are extra descriptive values written in the report."""

    name: str
    mask: np.ndarray
    fields: dict = field(default_factory=dict)


_CLASS_HINT = ("pass a single-band integer raster (LAS codes: 2 ground, 5 vegetation, 6 building, or any integer "
               "labels), or polygons with --class-polygons")


def _check_class_raster(src, path) -> None:
    """A class raster is one band of integer codes; an RGB ortho is not (it gave 227 'classes')."""
    if src.count != 1:
        raise InputError(f"has {src.count} bands: a class raster has one band of class codes (is it an image?)",
                         path=path, hint=_CLASS_HINT)
    if np.dtype(src.dtypes[0]).kind not in "iuf":
        raise InputError(f"holds {src.dtypes[0]} values: a class raster holds integer class codes", path=path,
                         hint=_CLASS_HINT)


def _resample_labels(path: Path, grid: Grid) -> np.ndarray:
    """Class labels on ``grid`` (int64, -1 = no class): nearest, or majority when the raster is finer."""
    try:
        with rasterio.open(path) as src:
            _check_class_raster(src, path)
            labels = src.read(1)
            nodata = src.nodata
            src_crs, src_transform = src.crs, src.transform
    except rasterio.errors.RasterioIOError as exc:
        raise CorruptInputError(f"cannot be read as a raster ({exc})", path=path) from exc
    if np.issubdtype(labels.dtype, np.floating):
        values = labels[np.isfinite(labels) & (labels != nodata if nodata is not None else True)]
        if values.size and not np.all(values == np.round(values)):
            raise InputError("holds fractional values: a class raster holds integer class codes", path=path,
                             hint=_CLASS_HINT)
    if src_crs is not None and grid.crs is not None and not same_crs(grid.crs, src_crs):
        log.info("class raster %s is %s: reprojected onto the truth grid", path.name, crs_label(src_crs))
    finer = abs(src_transform.a) < 0.75 * abs(grid.transform.a)
    dst = np.full(grid.shape, np.nan)
    dst_crs = grid.crs or src_crs or "EPSG:3857"
    reproject(labels.astype(np.float64), dst, src_transform=src_transform, src_crs=src_crs or dst_crs,
              dst_transform=grid.transform, dst_crs=dst_crs, src_nodata=nodata, dst_nodata=np.nan,
              resampling=Resampling.mode if finer else Resampling.nearest)
    out = np.full(grid.shape, -1, dtype=np.int64)
    ok = np.isfinite(dst)
    out[ok] = dst[ok].astype(np.int64)
    return out


def zones_from_class_raster(path: str | os.PathLike, grid: Grid) -> list[Zone]:
    """One zone per class value of a class raster (named by LAS code when it is one)."""
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError("class raster not found", path=path)
    labels = _resample_labels(path, grid)
    zones = []
    for value in np.unique(labels[labels >= 0]):
        name = LAS_CLASS_NAMES.get(int(value), f"class {int(value)}")
        zones.append(Zone(name, labels == value, {"code": int(value), "source": "raster"}))
    if not zones:
        raise InputError("class raster has no class value over the truth's grid", path=path,
                         hint="check that it covers the same area")
    return zones


def _read_vector(path: Path, grid: Grid):
    import geopandas as gpd  # heavy: imported only here

    if not path.exists():
        raise InputFileNotFoundError("vector file not found", path=path)
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises several types
        raise CorruptInputError(f"cannot be read as a vector layer ({exc})", path=path) from exc
    if frame.crs is not None and grid.crs is not None and not same_crs(frame.crs, grid.crs):
        frame = frame.to_crs(grid.crs)
    elif frame.crs is None and grid.crs is not None:
        log.warning("%s has no CRS: assumed to be the truth's CRS (%s)", path.name, crs_label(grid.crs))
    return frame[frame.geometry.notna() & ~frame.geometry.is_empty]


def zones_from_polygons(path: str | os.PathLike, grid: Grid, class_field: str) -> list[Zone]:
    """One zone per distinct value of ``class_field`` in a polygon layer (GeoPackage, GeoJSON, Shapefile)."""
    path = Path(path)
    frame = _read_vector(path, grid)
    if class_field not in frame.columns:
        raise InputError(f"has no field {class_field!r} (fields: {', '.join(map(str, frame.columns))})",
                         path=path, hint="pass --class-field with one of those")
    values = [v for v in frame[class_field].unique() if v is not None]
    index = {v: i + 1 for i, v in enumerate(values)}
    shapes = [(geom, index[v]) for geom, v in zip(frame.geometry, frame[class_field]) if v in index]
    labels = rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="int32") \
        if shapes else np.zeros(grid.shape, dtype=np.int32)
    zones = [Zone(str(v), labels == i, {"value": _jsonable(v), "source": "polygons"}) for v, i in index.items()]
    zones = [z for z in zones if z.mask.any()]
    if not zones:
        raise InputError("no polygon covers the truth's grid", path=path, hint="check the layer's area and CRS")
    return zones


def _jsonable(value):
    return value.item() if hasattr(value, "item") else value


def _iter_point_classes(paths, grid: Grid, assume_crs=None):
    """Yield (x, y, classification) chunks in the grid's CRS.

    A file without a CRS is refused unless ``assume_crs`` says what it is (taking the truth's CRS silently
    gave wrong zones for a cloud in another CRS).
    """
    from geoimplicit.io.pointcloud import PointCloudDataset, expand_paths, read_header

    if assume_crs is None:
        missing = [p for p in expand_paths(list(paths)) if read_header(p).crs is None]
        if missing:
            from geoimplicit.errors import MissingCRSError

            raise MissingCRSError("has no CRS in its LAS header", path=missing[0],
                                  hint=f"pass --class-points-crs with its CRS (e.g. {crs_label(grid.crs)}, the "
                                       "truth's, if that is what it is)")
    left, bottom, right, top = grid.bounds
    dataset = PointCloudDataset(list(paths), crs=grid.crs, assume_crs=assume_crs)
    for chunk in dataset.iter_chunks(bounds=(left, bottom, right, top), fields=("x", "y", "classification")):
        yield chunk["x"], chunk["y"], chunk["classification"]


def zones_from_points(paths, grid: Grid, assume_crs=None) -> list[Zone]:
    """Ground / building / vegetation zones from LAS classification codes, majority per cell.

    ``assume_crs``: the CRS of point files whose header has none (refused without it).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    rows, cols = grid.shape
    n_groups = len(LAS_GROUPS) + 1  # 0 = any other code
    code_to_group = np.zeros(256, dtype=np.int64)
    for g, codes in enumerate(LAS_GROUPS.values(), start=1):
        code_to_group[list(codes)] = g
    counts = np.zeros(rows * cols * n_groups, dtype=np.int64)
    t = grid.transform
    for x, y, cls in _iter_point_classes(paths, grid, assume_crs):
        col = np.floor((np.asarray(x, dtype=np.float64) - t.c) / t.a).astype(np.int64)
        row = np.floor((np.asarray(y, dtype=np.float64) - t.f) / t.e).astype(np.int64)
        inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
        group = code_to_group[np.asarray(cls, dtype=np.int64)[inside] & 0xFF]
        cell = row[inside] * cols + col[inside]
        counts += np.bincount(cell * n_groups + group, minlength=counts.size)
    counts = counts.reshape(rows, cols, n_groups)
    has_points = counts.sum(axis=2) > 0
    winner = np.argmax(counts, axis=2)  # ties: the lower group index (other < ground < building < vegetation)
    zones = []
    for g, (name, codes) in enumerate(LAS_GROUPS.items(), start=1):
        mask = has_points & (winner == g)
        if mask.any():
            zones.append(Zone(name, mask, {"codes": list(codes), "source": "points"}))
    if not zones:
        raise InputError("no ground, building or vegetation point falls on the truth's grid",
                         path=paths[0] if paths else None, hint="check the point clouds' area, CRS and classes")
    return zones


def is_building(zone: Zone, building_class: str | None = None) -> bool:
    """Whether ``zone`` is the building class: the one named ``building_class`` (a polygon class name, a class
    raster code or its LAS name), else one named "building" or with LAS code 6."""
    if building_class is not None:
        names = {zone.name, str(zone.fields.get("code")), str(zone.fields.get("value"))}
        return str(building_class) in names
    return zone.name == "building" or zone.fields.get("code") == 6


def dilate_buildings(zones: list[Zone], pixels: int, building_class: str | None = None) -> list[Zone]:
    """Dilate the building zone(s) by ``pixels`` (8-connected) and remove the dilated area from the others.

    The building class is the one :func:`is_building` recognises; with ``pixels`` > 0 and none of them, an
    :class:`InputError` lists the classes there are (polygon classes are named by their field value).
    """
    if pixels <= 0:
        return zones
    flags = [is_building(z, building_class) for z in zones]
    if not any(flags):
        names = ", ".join(repr(z.name) for z in zones[:12]) + (" ..." if len(zones) > 12 else "")
        what = f"no class is named {building_class!r}" if building_class else \
            "no class is the building class (named 'building' or LAS code 6)"
        raise InputError(f"--dilate-buildings: {what}; the classes are {names}",
                         hint="pass --building-class with the name of the building class")
    structure = np.ones((3, 3), dtype=bool)
    building = np.zeros_like(zones[0].mask)
    for z, b in zip(zones, flags):
        if b:
            building |= z.mask
    dilated = ndimage.binary_dilation(building, structure=structure, iterations=int(pixels))
    out = []
    for z, b in zip(zones, flags):
        if b:
            out.append(Zone(z.name, dilated, {**z.fields, "dilated_px": int(pixels)}))
        else:
            out.append(Zone(z.name, z.mask & ~dilated, dict(z.fields)))
    return out


def slope_band_zones(truth: np.ndarray, grid: Grid, edges=SLOPE_BANDS_PERCENT, *,
                     slope_percent: np.ndarray | None = None) -> list[Zone]:
    """Zones by the truth's slope in percent: [e0, e1), ..., [e_last, inf). NaN slopes belong to none.

    ``slope_percent``: the slope to use (e.g. demcompare's); default :func:`terrain.slope_percent` of the truth.
    """
    slope = terrain_slope_percent(truth, grid.transform, grid.crs) if slope_percent is None else slope_percent
    zones = []
    bounds = list(edges) + [np.inf]
    with np.errstate(invalid="ignore"):
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            name = f"{lo:g}-{hi:g}%" if np.isfinite(hi) else f">={lo:g}%"
            zones.append(Zone(name, (slope >= lo) & (slope < hi),
                              {"min_percent": float(lo), "max_percent": float(hi) if np.isfinite(hi) else None}))
    return zones


def tile_zones(path: str | os.PathLike, grid: Grid, id_field: str = "id") -> list[Zone]:
    """One zone per polygon of a tile index (GeoPackage layer with ``id`` and geometry)."""
    path = Path(path)
    frame = _read_vector(path, grid)
    if id_field not in frame.columns:
        raise InputError(f"has no {id_field!r} field", path=path, hint="pass the tile index written by geoimplicit tile")
    zones = []
    for tile_id, geom in zip(frame[id_field], frame.geometry):
        mask = rasterize([(geom, 1)], out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8") > 0
        if mask.any():
            zones.append(Zone(str(tile_id), mask, {"source": "tiles"}))
    if not zones:
        raise InputError("no tile covers the truth's grid", path=path, hint="check the tile index's area and CRS")
    return zones
