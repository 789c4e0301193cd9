"""Output pixel grids and the tile grid over an area of interest.

A :class:`GridSpec` is a north-up, pixel-is-area grid (bounds, resolution, CRS). A :class:`TileGrid` cuts the
mosaic's grid into square tiles of ``tile_size`` (CRS units) with ``overlap`` on every side; every tile's
grid is a window of the mosaic's grid (same origin lattice, whole pixels), so tiles blend back without
resampling. Only tiles whose core touches the AOI are kept.

The tile index of a grid (a GeoPackage that QGIS opens, with each tile's status) is written and read by the job
layer (:mod:`geoimplicit.jobs.index`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoimplicit.errors import AOIError, CorruptInputError, InputError, InputFileNotFoundError

log = logging.getLogger(__name__)

__all__ = ["GridSpec", "Tile", "TileGrid", "make_tile_index", "tile_context"]

_EPS = 1e-6  # tolerance in pixels when snapping coordinates that should be whole pixels


def _crs(crs):
    if crs is None:
        return None
    from geoimplicit.io.crs import parse_crs

    return parse_crs(crs)


@dataclass(frozen=True)
class GridSpec:
    """A north-up, pixel-is-area raster grid.

    Attributes:
        bounds: (left, bottom, right, top) in CRS units; a whole number of pixels wide and high.
        resolution: pixel size in CRS units (square pixels).
        crs: pyproj CRS (or None when unknown).
    """

    bounds: tuple
    resolution: float
    crs: object = None

    def __post_init__(self):
        object.__setattr__(self, "bounds", tuple(float(v) for v in self.bounds))
        object.__setattr__(self, "resolution", float(self.resolution))
        if self.resolution <= 0 or not math.isfinite(self.resolution):
            raise InputError(f"resolution must be a positive number, got {self.resolution}")

    @classmethod
    def from_bounds(cls, bounds, resolution: float, crs=None, snap: bool = True) -> "GridSpec":
        """The grid covering ``bounds`` at ``resolution``.

        ``snap=True``: left/bottom/right/top are moved outwards to multiples of the resolution (the default for
        AOIs, so that grids of different runs line up). ``snap=False``: the left/top corner is kept exactly and
        right/bottom are moved outwards to whole pixels (an exact ``--bbox``).
        """
        left, bottom, right, top = (float(v) for v in bounds)
        res = float(resolution)
        if not (res > 0 and math.isfinite(res)):
            raise InputError(f"resolution must be a positive number, got {resolution}")
        if not (right > left and top > bottom) or not all(map(math.isfinite, (left, bottom, right, top))):
            raise AOIError(f"empty or invalid bounds {bounds}: expected (left, bottom, right, top) with left < right, bottom < top")
        if snap:
            left = math.floor(left / res + _EPS) * res
            bottom = math.floor(bottom / res + _EPS) * res
            right = math.ceil(right / res - _EPS) * res
            top = math.ceil(top / res - _EPS) * res
        else:
            cols = math.ceil((right - left) / res - _EPS)
            rows = math.ceil((top - bottom) / res - _EPS)
            right = left + cols * res
            bottom = top - rows * res
        return cls((left, bottom, right, top), res, _crs(crs))

    @property
    def transform(self):
        from affine import Affine

        left, _, _, top = self.bounds
        return Affine(self.resolution, 0.0, left, 0.0, -self.resolution, top)

    @property
    def shape(self) -> tuple[int, int]:
        left, bottom, right, top = self.bounds
        return (int(round((top - bottom) / self.resolution)), int(round((right - left) / self.resolution)))

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def height(self) -> int:
        return self.shape[0]

    def window(self, bounds):
        """The rasterio Window of ``bounds`` (whole pixels, rounded) in this grid; offsets may be negative."""
        from rasterio.windows import Window

        left, bottom, right, top = bounds
        gl, _, _, gt = self.bounds
        res = self.resolution
        col0 = int(round((left - gl) / res))
        row0 = int(round((gt - top) / res))
        col1 = int(round((right - gl) / res))
        row1 = int(round((gt - bottom) / res))
        return Window(col0, row0, col1 - col0, row1 - row0)

    def window_bounds(self, window) -> tuple:
        """Bounds of a window (col_off, row_off, width, height) of this grid."""
        gl, _, _, gt = self.bounds
        res = self.resolution
        left = gl + window.col_off * res
        top = gt - window.row_off * res
        return (left, top - window.height * res, left + window.width * res, top)

    def subgrid(self, window) -> "GridSpec":
        """The grid of a window of this grid (a window may reach outside it)."""
        return GridSpec(self.window_bounds(window), self.resolution, self.crs)

    def is_aligned_with(self, other: "GridSpec", tol: float = 1e-3) -> bool:
        """Same resolution and origins a whole number of pixels apart (within ``tol`` pixels)."""
        if abs(self.resolution - other.resolution) > 1e-9 * max(self.resolution, 1.0):
            return False
        dx = (self.bounds[0] - other.bounds[0]) / self.resolution
        dy = (self.bounds[3] - other.bounds[3]) / self.resolution
        return abs(dx - round(dx)) < tol and abs(dy - round(dy)) < tol

    def pixel_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """x of column centres (cols,), y of row centres (rows,), float64."""
        left, _, _, top = self.bounds
        rows, cols = self.shape
        res = self.resolution
        return left + (np.arange(cols) + 0.5) * res, top - (np.arange(rows) + 0.5) * res

    def to_dict(self) -> dict:
        return {"bounds": list(self.bounds), "resolution": self.resolution,
                "crs": None if self.crs is None else self.crs.to_wkt()}

    @classmethod
    def from_dict(cls, d: dict) -> "GridSpec":
        return cls(tuple(d["bounds"]), d["resolution"], _crs(d.get("crs")))


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes:
        id: "r{row:04d}_c{col:04d}".
        row, col: position in the tile lattice (row 0 at the top).
        core_bounds: the tile's own square, without overlap; cores tile the grid without gaps (those of the
            last row and column end at the grid's edge, so they may be narrower).
        bounds: core_bounds grown by the overlap on every side (not clipped: may reach beyond the AOI).
        grid: the GridSpec of ``bounds``, a window of the mosaic grid: what the tile's product covers.
        context_bounds: what a method may read for the tile: its whole lattice cell grown by the overlap (wider
            than ``bounds`` where the core is clipped to the grid's edge), so that a tile's values do not depend
            on where the area ends.
    """

    id: str
    row: int
    col: int
    core_bounds: tuple
    bounds: tuple
    grid: GridSpec
    context_bounds: tuple | None = None

    def __post_init__(self):
        if self.context_bounds is None:
            object.__setattr__(self, "context_bounds", self.bounds)

    @property
    def overlap(self) -> float:
        return self.core_bounds[0] - self.bounds[0]


def tile_id(row: int, col: int) -> str:
    return f"r{row:04d}_c{col:04d}"


def tile_context(core, tile_size: float, overlap: float) -> tuple:
    """The tile's whole lattice cell (its core's top-left corner and the tile size) grown by the overlap."""
    left, top = core[0], core[3]
    return (left - overlap, top - tile_size - overlap, left + tile_size + overlap, top + overlap)


@dataclass
class TileGrid:
    """Square tiles over an AOI, on the pixel lattice of the mosaic grid.

    Attributes:
        grid: the mosaic GridSpec (the AOI's bounds snapped to the resolution).
        tile_size: core size in CRS units (a whole number of pixels).
        overlap: margin added on every side, in CRS units (a whole number of pixels).
        tiles: only the tiles whose core touches the AOI, row-major.
        aoi_wkt: the AOI polygon (WKT) used to select the tiles, or None for a plain bbox.
    """

    grid: GridSpec
    tile_size: float
    overlap: float
    tiles: list = field(default_factory=list)
    aoi_wkt: str | None = None

    @classmethod
    def from_aoi(cls, aoi, *, tile_size: float, overlap: float, resolution: float, crs=None,
                 snap: bool = True) -> "TileGrid":
        """Tiles over ``aoi``: a shapely (Multi)Polygon, an object with ``.geometry`` (an AOI), or bounds.

        ``tile_size`` and ``overlap`` are rounded to whole pixels (the tile size up to at least one pixel).
        ``snap=False`` keeps the AOI's left/top corner as the grid origin (an exact bbox).
        """
        geometry = getattr(aoi, "geometry", aoi)
        if crs is None:
            crs = getattr(aoi, "crs", None)
        if hasattr(geometry, "bounds") and hasattr(geometry, "geom_type"):
            if geometry.is_empty:
                raise AOIError("the area of interest is empty")
            bounds = geometry.bounds
            polygon = geometry
        else:
            bounds = tuple(float(v) for v in geometry)
            polygon = None
        grid = GridSpec.from_bounds(bounds, resolution, crs, snap=snap)
        res = grid.resolution
        if not (tile_size > 0):
            raise InputError(f"tile size must be positive, got {tile_size}")
        if overlap < 0:
            raise InputError(f"overlap must be zero or positive, got {overlap}")
        tile_px = max(1, int(round(tile_size / res)))
        overlap_px = int(math.ceil(overlap / res - _EPS))
        if overlap_px > tile_px:
            raise InputError(f"overlap {overlap} is larger than the tile size {tile_size}",
                             hint="use an overlap of at most one tile size")
        rows, cols = grid.shape
        n_rows, n_cols = math.ceil(rows / tile_px), math.ceil(cols / tile_px)
        prepared = None
        if polygon is not None and not _is_box(polygon, bounds):
            import shapely

            prepared = polygon
            shapely.prepare(prepared)
        ts, ov = tile_px * res, overlap_px * res
        left0, bottom0, right0, top0 = grid.bounds
        tiles = []
        for r in range(n_rows):
            for c in range(n_cols):
                # the last row and column end at the grid's edge: no tile is larger than the area needs
                core = (left0 + c * ts, max(bottom0, top0 - (r + 1) * ts), min(right0, left0 + (c + 1) * ts),
                        top0 - r * ts)
                if prepared is not None and not _touches(prepared, core):
                    continue
                b = (core[0] - ov, core[1] - ov, core[2] + ov, core[3] + ov)
                tiles.append(Tile(tile_id(r, c), r, c, core, b, GridSpec(b, res, grid.crs), tile_context(core, ts, ov)))
        if not tiles:
            raise AOIError("no tile touches the area of interest")
        wkt = None if polygon is None else polygon.wkt
        return cls(grid, ts, ov, tiles, wkt)

    # -- lookups ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    def tile(self, tile_id: str) -> Tile:
        for t in self.tiles:
            if t.id == tile_id:
                return t
        raise KeyError(tile_id)

    @property
    def aoi_geometry(self):
        """The AOI polygon (shapely) or None."""
        if self.aoi_wkt is None:
            return None
        import shapely

        return shapely.from_wkt(self.aoi_wkt)

    def metadata(self) -> dict:
        return {"grid": self.grid.to_dict(), "tile_size": self.tile_size, "overlap": self.overlap,
                "aoi_wkt": self.aoi_wkt}

    # -- the tile index (a GeoPackage: geoimplicit.jobs.index) ---------------------------------------
    def write_index(self, path, status="pending", *, overwrite: bool = False, metadata: dict | None = None) -> Path:
        """Write this grid as a tile index GeoPackage (:func:`geoimplicit.jobs.index.write_index`)."""
        from geoimplicit.jobs.index import write_index

        return write_index(self, path, status, overwrite=overwrite, metadata=metadata)

    @classmethod
    def read_index(cls, path) -> "TileGrid":
        """The grid of a tile index (:func:`geoimplicit.jobs.index.read_index`)."""
        from geoimplicit.jobs.index import read_index

        return read_index(path)


def _is_box(polygon, bounds) -> bool:
    import shapely

    return polygon.geom_type == "Polygon" and abs(polygon.area - shapely.box(*bounds).area) <= 1e-9 * max(polygon.area, 1.0)


def _touches(polygon, core) -> bool:
    import shapely

    box = shapely.box(*core)
    return bool(shapely.intersects(polygon, box)) and not bool(shapely.touches(polygon, box))


MIN_TILE_PX = 16  # a tile smaller than this is all overhead (the index of 1-pixel tiles was 21 MB)
MAX_TILES = 500_000  # about 1 GB of memory for the grid and its index; 2,000 km2 of 64 m tiles


def check_tile_size(bounds, *, tile_size: float, resolution: float) -> None:
    """Refuse, before any work, a tile size under :data:`MIN_TILE_PX` pixels or more than :data:`MAX_TILES` tiles."""
    tile_px = round(tile_size / resolution)
    if tile_px < MIN_TILE_PX:
        raise InputError(f"tile size {tile_size:g} is {tile_size / resolution:.3g} pixels at resolution "
                         f"{resolution:g}; a tile needs at least {MIN_TILE_PX} pixels a side",
                         hint=f"pass --tile-size {MIN_TILE_PX * resolution:g} or more")
    left, bottom, right, top = bounds
    n = math.ceil((right - left) / (tile_px * resolution)) * math.ceil((top - bottom) / (tile_px * resolution))
    if n > MAX_TILES:
        side = math.sqrt((right - left) * (top - bottom) / MAX_TILES)
        raise InputError(f"{n:,} tiles of {tile_size:g} over this area: more than {MAX_TILES:,} do not fit in "
                         "memory", hint=f"pass --tile-size {math.ceil(side):g} or more, or split the area")


def make_tile_index(*, aoi=None, bbox=None, bbox_crs=None, crs=None, tile_size: float, overlap: float,
                    resolution: float, output, overwrite: bool = False) -> tuple[Path, int]:
    """``geoimplicit tile``: the tile grid over an AOI file or a bbox, written as a GeoPackage index.

    The working CRS is ``crs``, else the AOI file's CRS, else ``bbox_crs``. A bbox in the working CRS keeps
    its exact corner; an AOI polygon's bounds are snapped to the resolution.

    Returns:
        (index path, number of tiles).
    """
    from geoimplicit.errors import MissingCRSError
    from geoimplicit.io.crs import parse_crs, require_projected
    from geoimplicit.io.vector import read_aoi

    if Path(output).suffix.lower() != ".gpkg":
        raise InputError("the tile index is a GeoPackage; its name must end in .gpkg", path=output,
                         hint=f"pass -o {Path(output).with_suffix('.gpkg').name}")

    if crs is not None:
        work = parse_crs(crs, source="--crs")
    elif aoi is not None:
        if not Path(aoi).exists():
            raise InputFileNotFoundError("file not found", path=aoi, hint="check the path of the AOI file")
        import pyogrio

        try:
            file_crs = pyogrio.read_info(aoi).get("crs")
        except Exception as exc:
            raise CorruptInputError(f"cannot read the AOI ({exc})", path=aoi) from exc
        if file_crs is None:
            raise MissingCRSError("the AOI file has no CRS", path=aoi, hint="pass --crs")
        work = parse_crs(file_crs, source=aoi)
    elif bbox_crs is not None:
        work = parse_crs(bbox_crs, source="--bbox-crs")
    else:
        raise MissingCRSError("no CRS for --bbox", hint="pass --crs (e.g. EPSG:2154)")
    require_projected(work, aoi or "--crs")
    area = read_aoi(aoi, bbox=bbox, bbox_crs=bbox_crs, crs=work)
    exact = aoi is None and bbox_crs is None
    geometry = area.geometry.bounds if exact else area.geometry
    check_tile_size(area.geometry.bounds, tile_size=tile_size, resolution=resolution)
    tg = TileGrid.from_aoi(geometry, tile_size=tile_size, overlap=overlap, resolution=resolution, crs=work,
                           snap=not exact)
    path = tg.write_index(output, "pending", overwrite=overwrite)
    return path, len(tg.tiles)


_MOVED = ("STATUSES", "FINISHED", "update_status", "read_statuses", "read_metadata", "open_run_index",
          "_write_gpkg_layer")


def __getattr__(name):  # the run-index store moved to geoimplicit.jobs.index; old imports keep working
    if name in _MOVED:
        from geoimplicit.jobs import index

        return getattr(index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
