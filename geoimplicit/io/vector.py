"""Areas of interest: polygons from GeoJSON, GeoPackage or Shapefile (any CRS), or a bounding box.

geopandas is imported inside the functions, so GPU-side code that imports :mod:`geoimplicit.io` does not need it.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyproj

from geoimplicit.errors import AOIError, CorruptInputError, InputFileNotFoundError
from geoimplicit.io.crs import crs_equal, crs_name, parse_crs
from geoimplicit.outputs import atomic_output, check_output

log = logging.getLogger(__name__)

__all__ = ["AOI", "read_aoi", "write_aoi", "bbox_geometry", "reproject_geometry", "VECTOR_SUFFIXES"]

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml", ".zip")
_DRIVERS = {".geojson": "GeoJSON", ".json": "GeoJSON", ".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".fgb": "FlatGeobuf"}


@dataclass
class AOI:
    """An area of interest in the working CRS.

    Attributes:
        geometry: shapely Polygon or MultiPolygon (valid, non-empty).
        crs: the CRS of ``geometry``.
        source: the file it came from, or "bbox".
    """

    geometry: object
    crs: pyproj.CRS
    source: str = "bbox"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in ``crs``."""
        return tuple(float(v) for v in self.geometry.bounds)

    @property
    def area(self) -> float:
        """Area in squared CRS units."""
        return float(self.geometry.area)

    def require_overlap(self, bounds: Sequence[float], what: str = "the data") -> None:
        """Raise :class:`AOIError` when the AOI does not intersect ``bounds`` (left, bottom, right, top)."""
        from shapely.geometry import box

        if not self.geometry.intersects(box(*bounds)):
            raise AOIError(
                f"the area of interest {_fmt(self.bounds)} does not overlap {what} {_fmt(bounds)} "
                f"(both in {crs_name(self.crs)})",
                path=None if self.source == "bbox" else self.source,
                hint="check the AOI and its CRS",
            )


def _fmt(b) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in b) + ")"


def reproject_geometry(geometry, src_crs, dst_crs, *, densify: int = 32):
    """Reproject a shapely geometry (edges densified so that straight lines may curve)."""
    import shapely
    from shapely.ops import transform as _transform

    src, dst = parse_crs(src_crs), parse_crs(dst_crs)
    if crs_equal(src, dst):
        return geometry
    minx, miny, maxx, maxy = geometry.bounds
    step = max(maxx - minx, maxy - miny) / max(densify, 1)
    if step > 0:
        geometry = shapely.segmentize(geometry, step)
    transformer = pyproj.Transformer.from_crs(src, dst, always_xy=True)
    return _transform(transformer.transform, geometry)


def bbox_geometry(bbox: Sequence[float]):
    """A shapely box from (left, bottom, right, top), validated."""
    from shapely.geometry import box

    try:
        left, bottom, right, top = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise AOIError(f"bbox must be four numbers LEFT BOTTOM RIGHT TOP, got {bbox!r}") from None
    if not all(np.isfinite([left, bottom, right, top])):
        raise AOIError(f"bbox {tuple(bbox)} holds a non-finite number", hint="give four finite numbers")
    if not (right > left and top > bottom):
        raise AOIError(
            f"bbox {tuple(bbox)} is empty or inverted",
            hint="give LEFT BOTTOM RIGHT TOP with LEFT < RIGHT and BOTTOM < TOP",
        )
    return box(left, bottom, right, top)


def _polygons_only(geometries):
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.geometry.base import BaseMultipartGeometry

    out = []
    for g in geometries:
        if g is None or g.is_empty:
            continue
        if isinstance(g, (Polygon, MultiPolygon)):
            out.append(g)
        elif isinstance(g, BaseMultipartGeometry):
            out.extend(_polygons_only(list(g.geoms)))
    return out


def read_aoi(path=None, *, bbox=None, bbox_crs=None, crs) -> AOI:
    """An area of interest in ``crs`` from a polygon file or a bbox.

    Args:
        path: GeoJSON, GeoPackage, Shapefile (any vector format GDAL reads) with polygons, in any CRS; all
            polygons are merged into one (Multi)Polygon.
        bbox: (left, bottom, right, top), used when ``path`` is None.
        bbox_crs: CRS of ``bbox`` (default ``crs``).
        crs: the working CRS.

    CRS of a file without one: GeoJSON is WGS 84 by its specification (RFC 7946), unless its coordinates cannot
    be degrees (|x| > 180 or |y| > 90), in which case they are taken to be in ``crs`` (old GeoJSON written
    without a ``crs`` member); other formats without a CRS (a Shapefile without .prj) are taken to be in ``crs``.
    Both are logged as warnings.

    Raises:
        InputFileNotFoundError, CorruptInputError, AOIError (no polygons, empty, invalid bbox).
    """
    work = parse_crs(crs, source="--crs")
    if path is None:
        if bbox is None:
            raise AOIError("no area of interest given", hint="pass --aoi FILE or --bbox LEFT BOTTOM RIGHT TOP")
        geom = bbox_geometry(bbox)
        src = parse_crs(bbox_crs, source="--bbox-crs") if bbox_crs is not None else work
        geom = reproject_geometry(geom, src, work)
        return AOI(geometry=geom, crs=work, source="bbox")

    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError("file not found", path=path, hint="check the path of the AOI file")
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio/fiona raise their own DataSourceError, ValueError...
        reason = " ".join(str(exc).split())[:140]
        raise CorruptInputError(
            f"not a readable vector file ({reason})", path=path,
            hint="give a GeoJSON, GeoPackage or Shapefile with polygons",
        ) from None
    geoms = _polygons_only(list(gdf.geometry)) if len(gdf) else []
    if not geoms:
        present = [g for g in gdf.geometry if g is not None] if len(gdf) else []
        if present and all(g.is_empty for g in present):
            kinds = sorted({g.geom_type for g in present})
            raise AOIError(f"its {' and '.join(kinds)} geometry is empty (no coordinates)"
                           if len(present) == 1 else f"all {len(present)} geometries are empty (no coordinates)",
                           path=path, hint="draw the area of interest as a polygon with at least three corners, "
                                           "or pass --bbox")
        kinds = sorted({g.geom_type for g in present if not g.is_empty})
        raise AOIError(
            "holds no polygon" + (f" (only {', '.join(kinds)})" if kinds else " (no features)"),
            path=path, hint="draw the area of interest as a polygon, or pass --bbox",
        )
    import shapely

    geom = shapely.union_all([shapely.make_valid(g) if not g.is_valid else g for g in geoms])
    geom = _as_polygonal(geom)
    file_crs = parse_crs(gdf.crs, source=path) if gdf.crs is not None else None
    is_geojson = path.suffix.lower() in (".geojson", ".json")
    minx, miny, maxx, maxy = geom.bounds
    degrees_possible = -180.0 <= minx and maxx <= 180.0 and -90.0 <= miny and maxy <= 90.0
    if file_crs is None:
        if is_geojson and degrees_possible:
            file_crs = pyproj.CRS.from_epsg(4326)
        else:
            log.warning("%s has no CRS; taking it to be in the working CRS %s", path, crs_name(work))
            file_crs = work
    elif is_geojson and file_crs.is_geographic and not degrees_possible:
        log.warning("%s: coordinates are not degrees although GeoJSON defaults to WGS 84; taking them in %s",
                    path, crs_name(work))
        file_crs = work
    try:
        geom = reproject_geometry(geom, file_crs, work)
    except Exception as exc:
        raise AOIError(f"cannot reproject from {crs_name(file_crs)} to {crs_name(work)} ({exc})", path=path) from None
    geom = _as_polygonal(geom)
    if geom.is_empty or geom.area <= 0 or not np.all(np.isfinite(geom.bounds)):
        raise AOIError("the polygons are empty or fall outside the working CRS", path=path,
                       hint=f"check the file's CRS (working CRS: {crs_name(work)})")
    return AOI(geometry=geom, crs=work, source=str(path))


def _as_polygonal(geom):
    from shapely.geometry import MultiPolygon, Polygon

    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    polys = _polygons_only([geom])
    if not polys:
        return Polygon()
    import shapely

    return _as_polygonal(shapely.union_all(polys)) if len(polys) > 1 else polys[0]


def write_aoi(path, geometry, crs, *, overwrite: bool = False, properties: dict | None = None) -> Path:
    """Write one polygon (or several: a list) to GeoJSON / GeoPackage / Shapefile, atomically.

    GeoJSON in a CRS other than WGS 84 carries a ``crs`` member (GDAL writes it), so it reads back correctly.
    """
    import geopandas as gpd

    path = Path(path)
    geoms = list(geometry) if isinstance(geometry, (list, tuple)) else [geometry]
    data = {k: [v] * len(geoms) for k, v in (properties or {}).items()}
    gdf = gpd.GeoDataFrame(data, geometry=geoms, crs=parse_crs(crs))
    suffix = path.suffix.lower()
    driver = _DRIVERS.get(suffix)
    if driver is None:
        raise ValueError(f"write_aoi: unknown vector suffix {suffix!r} (use .geojson, .gpkg or .shp)")
    if suffix == ".shp":  # a Shapefile is several files: write them in a temporary folder, then move them
        check_output(path, overwrite)
        tmpdir = path.parent / f".{path.stem}.partial-{uuid.uuid4().hex[:8]}"
        tmpdir.mkdir(parents=True)
        try:
            gdf.to_file(tmpdir / path.name, driver=driver)
            for part in tmpdir.iterdir():
                part.replace(path.parent / part.name)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return path
    layer = re.sub(r"[^0-9A-Za-z_]", "_", path.stem) or "aoi"
    with atomic_output(path, overwrite=overwrite) as tmp:
        gdf.to_file(tmp, driver=driver, layer=layer)
    return path
