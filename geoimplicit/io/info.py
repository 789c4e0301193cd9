"""Describe and check inputs without processing them (the library side of ``geoimplicit info``).

Everything returned is JSON-serialisable (numbers, strings, lists).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from geoimplicit.errors import CorruptInputError, InputFileNotFoundError, NoDataError
from geoimplicit.io.crs import (
    centre_lonlat,
    choose_working_crs,
    crs_equal,
    crs_name,
    linear_units,
    parse_crs,
    require_projected,
    vertical_units,
)

log = logging.getLogger(__name__)

__all__ = ["describe", "input_kind", "check_inputs"]

RASTER_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".vrt", ".img", ".jp2", ".asc", ".nc")
POINT_SUFFIXES = (".las", ".laz")
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml")
_STATS_PIXELS = 1024


def input_kind(path) -> str:
    """"pointcloud", "raster" or "aoi" from the path (a folder or glob is a point cloud data set)."""
    text = os.fspath(path)
    p = Path(text)
    suffix = p.suffix.lower()
    if p.is_dir() or any(ch in text for ch in "*?[") or suffix in POINT_SUFFIXES:
        return "pointcloud"
    if suffix in VECTOR_SUFFIXES:
        return "aoi"
    return "raster"


def _crs_fields(crs) -> dict:
    if crs is None:
        return {"crs": None, "units": None}
    unit, factor = linear_units(crs)
    zunit, zfactor = vertical_units(crs)
    return {
        "crs": crs_name(crs),
        "units": unit,
        "metres_per_unit": None if not np.isfinite(factor) else factor,
        "z_units": zunit,
        "projected": bool(not crs.is_geographic),
        "crs_wkt": crs.to_wkt(),
    }


def describe(path, *, crs=None, stats: bool = True) -> dict:
    """A JSON-ready description of a raster, a point cloud (file, folder, glob) or an AOI file.

    Args:
        path: the input.
        crs: the CRS to assume for an input without one (world-file image, LAS header without CRS).
        stats: rasters: count valid pixels on a decimated read (at most 1024 x 1024), and raise
            :class:`NoDataError` when there is none.

    Raises:
        InputFileNotFoundError, CorruptInputError, NoDataError, CRSError.
    """
    kind = input_kind(path)
    text = os.fspath(path)
    if kind != "pointcloud" and not Path(text).exists():
        raise InputFileNotFoundError("file not found", path=text, hint="check the path")
    if kind == "pointcloud":
        return _describe_points(text, crs)
    if kind == "aoi":
        return _describe_aoi(text, crs)
    return _describe_raster(text, crs, stats)


def _describe_raster(path, crs, stats) -> dict:
    from geoimplicit.io.raster import open_raster, raster_info

    info = raster_info(path, crs=crs)
    out = {"path": str(path), "kind": "raster", "driver": info["driver"]}
    out.update(_crs_fields(info["crs"]))
    if info["crs"] is not None and not info["crs_in_file"]:
        out["crs_source"] = "assumed (--crs)"
    elif info["crs"] is None:
        out["crs_source"] = "none: pass --crs"
    else:
        out["crs_source"] = "file"
    rows, cols = info["shape"]
    out.update(
        bounds=list(info["bounds"]),
        size=[cols, rows],
        resolution=list(info["resolution"]),
        count=info["count"],
        dtype=info["dtype"],
        nodata=info["nodata"],
        georeferencing=info["georeferencing"],
        block=list(info["block_shapes"][0]),
        compression=info["compression"],
        overviews=info["overviews"],
    )
    if stats:
        from rasterio.errors import RasterioIOError

        factor = max(1, int(np.ceil(max(rows, cols) / _STATS_PIXELS)))
        shape = (info["count"], max(1, rows // factor), max(1, cols // factor))
        try:
            with open_raster(path) as ds:
                data = ds.read(out_shape=shape, masked=True)
        except RasterioIOError as exc:
            raise CorruptInputError(
                f"cannot read pixels ({' '.join(str(exc).split())[:140]})", path=path,
                hint="the file is truncated or damaged: re-export it as a GeoTIFF",
            ) from None
        invalid = np.ma.getmaskarray(data)
        values = np.ma.getdata(data)
        if np.issubdtype(values.dtype, np.floating):
            invalid = invalid | ~np.isfinite(values)
        valid = ~np.all(invalid, axis=0)
        out["valid_fraction"] = round(float(valid.mean()), 6)
        if not valid.any():
            what = "NaN" if np.issubdtype(values.dtype, np.floating) and np.isnan(values).all() else "nodata"
            raise NoDataError(
                f"holds only {what} values" + (f" (nodata = {info['nodata']:g})" if info["nodata"] is not None else ""),
                path=path, hint="check the file and its nodata value; it cannot be used as input",
            )
        band = np.where(invalid[0], np.nan, values[0].astype(np.float64))
        out["band1_range"] = [float(np.nanmin(band)), float(np.nanmax(band))] if np.isfinite(band).any() else None
    return out


def _describe_points(path, crs) -> dict:
    from geoimplicit.io.pointcloud import expand_paths, read_header

    files = [read_header(p, assume_crs=crs) for p in expand_paths(path)]
    crss = [f.crs for f in files]
    out = {"path": str(path), "kind": "pointcloud", "files": len(files)}
    first = next((c for c in crss if c is not None), None)
    same = all(c is not None and crs_equal(first, c) for c in crss)
    if first is None:
        out.update(_crs_fields(None))
        out["crs_source"] = "none: pass --crs"
    elif not same:
        out["crs"] = "mixed: " + "; ".join(sorted({crs_name(c) for c in crss}))
        out["crs_source"] = "mixed"
    else:
        out.update(_crs_fields(first))
        sources = sorted({f.crs_source for f in files})
        out["crs_source"] = "header" if sources == ["header"] else ", ".join(sources)
    with_points = [f for f in files if f.point_count > 0]
    b = np.array([f.bounds for f in with_points]) if with_points else None
    out.update(
        bounds=None if b is None else [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 3].max()),
                                       float(b[:, 4].max())],
        z_range=None if b is None else [float(b[:, 2].min()), float(b[:, 5].max())],
        point_count=int(sum(f.point_count for f in files)),
        point_format=sorted({f.point_format for f in files}),
        version=sorted({f.version for f in files}),
        scales=list(files[0].scales),
        fields=list(files[0].fields),
    )
    if len(files) > 1:
        out["file_list"] = [str(f.path) for f in files]
    empty = [f for f in files if f.point_count == 0]
    if empty:
        what = "holds no points" if len(files) == 1 else f"{len(empty)} of {len(files)} files hold no points"
        out["warning"] = f"{what} (the header counts 0)" + ("; a run skips them" if with_points else "")
        log.warning("%s: %s", path, out["warning"])
    if b is None:
        return out
    area = (out["bounds"][2] - out["bounds"][0]) * (out["bounds"][3] - out["bounds"][1])
    if area > 0 and first is not None and same:
        out["density_per_unit2"] = round(out["point_count"] / area, 3)
    return out


def _describe_aoi(path, crs) -> dict:
    import geopandas as gpd

    from geoimplicit.io.vector import read_aoi

    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise CorruptInputError(f"not a readable vector file ({' '.join(str(exc).split())[:140]})", path=path,
                                hint="give a GeoJSON, GeoPackage or Shapefile with polygons") from None
    file_crs = parse_crs(gdf.crs, source=path) if gdf.crs is not None else None
    target = crs if crs is not None else (file_crs if file_crs is not None else "EPSG:4326")
    aoi = read_aoi(path, crs=target)
    out = {"path": str(path), "kind": "aoi", "features": int(len(gdf))}
    out.update(_crs_fields(aoi.crs))
    out.update(
        file_crs=crs_name(file_crs) if file_crs is not None else None,
        bounds=list(aoi.bounds),
        area_units2=float(aoi.area),
        geometry_type=aoi.geometry.geom_type,
    )
    return out


def check_inputs(paths, *, crs=None, aoi=None, bbox=None, bbox_crs=None) -> dict:
    """Check inputs as a run would: one projected working CRS, data present, AOI overlapping the data.

    Returns:
        {"working_crs", "units", "data_bounds" (working CRS), "aoi_bounds" or None}.

    Raises:
        MissingCRSError, CRSMismatchError, GeographicCRSError, AOIError, and the errors of :func:`describe`.
    """
    import pyproj

    from geoimplicit.io.vector import read_aoi

    named, bounds_by_name = {}, {}
    for path in paths:
        d = describe(path, crs=None, stats=True)
        if d["kind"] == "aoi":
            continue
        name = str(path)
        if d["kind"] == "pointcloud" and d["point_count"] == 0:
            raise NoDataError("holds no points (the header counts 0)", path=name,
                              hint="give a LAS/LAZ file with points (check the export that wrote it)")
        if d.get("crs_source") == "mixed":
            choose_working_crs({name + " (some files)": _first_crs(path), name: _other_crs(path)}, crs)
        named[name] = parse_crs(d["crs_wkt"]) if d.get("crs_wkt") else None
        bounds_by_name[name] = d["bounds"]
    if crs is None and named and any(c is None for c in named.values()) and any(c is not None for c in named.values()):
        missing = [n for n, c in named.items() if c is None]
        from geoimplicit.errors import MissingCRSError

        raise MissingCRSError("has no CRS", path=", ".join(missing),
                              hint="pass --crs with its CRS (e.g. EPSG:2154 or a .wkt file)")
    work = choose_working_crs(named, crs)
    lonlat = None
    if work.is_geographic and bounds_by_name:  # the bounds are in each input's own CRS
        name, b = next(iter(bounds_by_name.items()))
        lonlat = centre_lonlat(b, named[name] or work)
    require_projected(work, next(iter(named), None) if crs is None else "--crs", lonlat=lonlat)
    union = None
    for name, b in bounds_by_name.items():
        src = named[name] or work
        tb = b if crs_equal(src, work) else pyproj.Transformer.from_crs(src, work, always_xy=True).transform_bounds(
            *b, densify_pts=21)
        union = list(tb) if union is None else [min(union[0], tb[0]), min(union[1], tb[1]),
                                                  max(union[2], tb[2]), max(union[3], tb[3])]
    result = {"working_crs": crs_name(work), "units": linear_units(work)[0], "data_bounds": union, "aoi_bounds": None}
    if aoi is not None or bbox is not None:
        area = read_aoi(aoi, bbox=bbox, bbox_crs=bbox_crs, crs=work)
        if union is not None:
            area.require_overlap(union, "the data")
        result["aoi_bounds"] = list(area.bounds)
    return result


def _first_crs(path):
    from geoimplicit.io.pointcloud import expand_paths, read_header

    return read_header(expand_paths(path)[0]).crs


def _other_crs(path):
    from geoimplicit.io.pointcloud import expand_paths, read_header

    first = _first_crs(path)
    for p in expand_paths(path)[1:]:
        c = read_header(p).crs
        if c is not None and not crs_equal(c, first):
            return c
    return first
