"""Output pixel grids and the tile grid over an area of interest.

A :class:`GridSpec` is a north-up, pixel-is-area grid (bounds, resolution, CRS). A :class:`TileGrid` cuts the
mosaic's grid into square tiles of ``tile_size`` (CRS units) with ``overlap`` on every side; every tile's
grid is a window of the mosaic's grid (same origin lattice, whole pixels), so tiles blend back without
resampling. Only tiles whose core touches the AOI are kept.

The tile index is a GeoPackage (layer ``tiles``: id, row, col, core bounds, overlap, status, core polygon)
that QGIS opens; the grid parameters sit in an attribute table ``tiling`` of the same file. Status updates
are single SQLite transactions, safe from several processes.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import struct
import time
from dataclasses import dataclass, field
from typing import Sequence
from pathlib import Path

import numpy as np
import pyproj

from geoimplicit.errors import AOIError, InputError, InputFileNotFoundError, CorruptInputError
from geoimplicit.outputs import atomic_output

log = logging.getLogger(__name__)

__all__ = ["GridSpec", "Tile", "TileGrid", "update_status", "read_statuses", "STATUSES"]

# pending: not run yet; running: started (a crash leaves it so; treated as pending on resume);
# done: tile written; empty: no data in the tile (written as nodata); failed: raised an error.
STATUSES = ("pending", "running", "done", "empty", "failed")
FINISHED = ("done", "empty")

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
        core_bounds: the tile's own square, without overlap; cores tile the plane without gaps.
        bounds: core_bounds grown by the overlap on every side (not clipped: may reach beyond the AOI).
        grid: the GridSpec of ``bounds``, a window of the mosaic grid.
    """

    id: str
    row: int
    col: int
    core_bounds: tuple
    bounds: tuple
    grid: GridSpec

    @property
    def overlap(self) -> float:
        return self.core_bounds[0] - self.bounds[0]


def tile_id(row: int, col: int) -> str:
    return f"r{row:04d}_c{col:04d}"


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
        left0, _, _, top0 = grid.bounds
        tiles = []
        for r in range(n_rows):
            for c in range(n_cols):
                core = (left0 + c * ts, top0 - (r + 1) * ts, left0 + (c + 1) * ts, top0 - r * ts)
                if prepared is not None and not _touches(prepared, core):
                    continue
                b = (core[0] - ov, core[1] - ov, core[2] + ov, core[3] + ov)
                tiles.append(Tile(tile_id(r, c), r, c, core, b, GridSpec(b, res, grid.crs)))
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

    # -- GeoPackage index ------------------------------------------------------------------------------
    def write_index(self, path, status="pending", *, overwrite: bool = False, extra: dict | None = None) -> Path:
        """Write the tile index GeoPackage atomically.

        ``status``: one status for all tiles, or a dict tile id -> status (missing ids are "pending").
        ``extra``: more key/value metadata (JSON-able) stored in the ``tiling`` table (e.g. the run config).
        """
        import shapely

        statuses = {t.id: (status.get(t.id, "pending") if isinstance(status, dict) else status) for t in self.tiles}
        for s in statuses.values():
            if s not in STATUSES:
                raise ValueError(f"unknown tile status {s!r}; one of {STATUSES}")
        geoms = shapely.to_wkb(np.array([shapely.box(*t.core_bounds) for t in self.tiles], dtype=object))
        cols = {
            "id": np.array([t.id for t in self.tiles], dtype=object),
            "row": np.array([t.row for t in self.tiles], dtype=np.int32),
            "col": np.array([t.col for t in self.tiles], dtype=np.int32),
            "left": np.array([t.core_bounds[0] for t in self.tiles]),
            "bottom": np.array([t.core_bounds[1] for t in self.tiles]),
            "right": np.array([t.core_bounds[2] for t in self.tiles]),
            "top": np.array([t.core_bounds[3] for t in self.tiles]),
            "overlap": np.full(len(self.tiles), self.overlap),
            "status": np.array([statuses[t.id] for t in self.tiles], dtype=object),
            "message": np.array([""] * len(self.tiles), dtype=object),
        }
        crs = self.grid.crs.to_wkt() if self.grid.crs is not None else None
        meta = self.metadata()
        if extra:
            meta.update(extra)
        with atomic_output(path, overwrite=overwrite) as tmp:
            try:
                import pyogrio.raw
            except ImportError:  # a lean worker or GPU node without GDAL's vector drivers
                _write_gpkg_layer(tmp, "tiles", [t.core_bounds for t in self.tiles], cols, self.grid.crs)
            else:
                pyogrio.raw.write(
                    str(tmp), geoms, list(cols.values()), list(cols.keys()), driver="GPKG", layer="tiles",
                    geometry_type="Polygon", crs=crs,
                )
            with sqlite3.connect(tmp) as con:
                con.execute("CREATE TABLE tiling (key TEXT PRIMARY KEY, value TEXT)")
                con.executemany("INSERT INTO tiling VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
                con.execute(
                    "INSERT INTO gpkg_contents (table_name, data_type, identifier, description) "
                    "VALUES ('tiling', 'attributes', 'tiling', 'geoimplicit tile grid parameters (JSON values)')"
                )
                con.execute("CREATE INDEX IF NOT EXISTS tiles_id ON tiles (id)")
            con.close()
        return Path(path)

    @classmethod
    def read_index(cls, path) -> "TileGrid":
        """Read a tile index written by :meth:`write_index` (statuses: :func:`read_statuses`)."""
        meta = read_metadata(path)
        try:
            grid = GridSpec.from_dict(meta["grid"])
            ts, ov = float(meta["tile_size"]), float(meta["overlap"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptInputError(f"not a geoimplicit tile index ({exc})", path=path,
                                    hint="create it with `geoimplicit tile`") from exc
        con = _connect(path)
        try:
            rows = con.execute("SELECT id, row, col, left, bottom, right, top FROM tiles ORDER BY row, col").fetchall()
        finally:
            con.close()
        tiles = []
        for tid, r, c, left, bottom, right, top in rows:
            core = (left, bottom, right, top)
            b = (left - ov, bottom - ov, right + ov, top + ov)
            tiles.append(Tile(tid, int(r), int(c), core, b, GridSpec(b, grid.resolution, grid.crs)))
        return cls(grid, ts, ov, tiles, meta.get("aoi_wkt"))


def _write_gpkg_layer(path, layer: str, boxes, columns: dict, crs) -> None:
    """A GeoPackage polygon layer of boxes written with sqlite3 alone (the OGC GeoPackage 1.3 tables and
    geometry blobs), for machines without pyogrio; GDAL, QGIS and geopandas read it like pyogrio's."""
    import shapely

    epsg = crs.to_epsg() if crs is not None else None
    srs_id, org = (epsg, "EPSG") if epsg else ((100000, "NONE") if crs is not None else (-1, "NONE"))
    sql_types = {"i": "INTEGER", "f": "REAL"}
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA application_id = 1196444487")  # 'GPKG'
        con.execute("PRAGMA user_version = 10300")
        con.executescript("""
            CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY,
                organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL,
                description TEXT);
            CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL,
                identifier TEXT UNIQUE, description TEXT DEFAULT '',
                last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
                min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER);
            CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
                geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
                PRIMARY KEY (table_name, column_name));
        """)
        srs_rows = [("Undefined cartesian SRS", -1, "NONE", -1, "undefined", None),
                    ("Undefined geographic SRS", 0, "NONE", 0, "undefined", None),
                    ("WGS 84 geodetic", 4326, "EPSG", 4326, pyproj.CRS.from_epsg(4326).to_wkt("WKT1_GDAL"), None)]
        if srs_id not in (-1, 0, 4326):
            srs_rows.append((crs.name, srs_id, org, srs_id, crs.to_wkt("WKT1_GDAL"), None))
        con.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", srs_rows)
        fields = ", ".join(f'"{k}" {sql_types.get(np.asarray(v).dtype.kind, "TEXT")}' for k, v in columns.items())
        con.execute(f'CREATE TABLE "{layer}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom POLYGON, {fields})')
        blobs = []
        for left, bottom, right, top in boxes:
            header = b"GP" + struct.pack("<BBi4d", 0, 0b011, srs_id, left, right, bottom, top)  # LE, xy envelope
            blobs.append(header + shapely.to_wkb(shapely.box(left, bottom, right, top), byte_order=1))
        names = list(columns)
        values = [[v.item() if hasattr(v, "item") else v for v in np.asarray(columns[k], dtype=object)] for k in names]
        con.executemany(
            f'INSERT INTO "{layer}" (geom, {", ".join(chr(34) + k + chr(34) for k in names)}) '
            f'VALUES (?{", ?" * len(names)})', [(b, *row) for b, *row in zip(blobs, *values)])
        b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        extent = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()) if len(b) else (None,) * 4
        con.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, min_x, min_y, max_x, max_y, srs_id)"
                    " VALUES (?, 'features', ?, ?, ?, ?, ?, ?)", (layer, layer, *extent, srs_id))
        con.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'POLYGON', ?, 0, 0)", (layer, srs_id))
        con.commit()
    finally:
        con.close()


def _is_box(polygon, bounds) -> bool:
    import shapely

    return polygon.geom_type == "Polygon" and abs(polygon.area - shapely.box(*bounds).area) <= 1e-9 * max(polygon.area, 1.0)


def _touches(polygon, core) -> bool:
    import shapely

    box = shapely.box(*core)
    return bool(shapely.intersects(polygon, box)) and not bool(shapely.touches(polygon, box))


def _gpkg_geometry(blob):
    """Shapely geometry of a GeoPackage geometry blob (header + WKB)."""
    import shapely

    if blob is None:
        return None
    flags = blob[3]
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 0x07, 0)
    return shapely.from_wkb(bytes(blob[8 + envelope:]))


def _register_spatial_functions(con: sqlite3.Connection) -> None:
    """The ST_* functions that GDAL's R-tree triggers call (plain sqlite3 lacks them)."""

    def _is_empty(blob):
        g = _gpkg_geometry(blob)
        return 1 if g is None or g.is_empty else 0

    def _coord(i):
        def f(blob):
            g = _gpkg_geometry(blob)
            return None if g is None or g.is_empty else float(g.bounds[i])

        return f

    con.create_function("ST_IsEmpty", 1, _is_empty, deterministic=True)
    for name, i in (("ST_MinX", 0), ("ST_MinY", 1), ("ST_MaxX", 2), ("ST_MaxY", 3)):
        con.create_function(name, 1, _coord(i), deterministic=True)


def _connect(path) -> sqlite3.Connection:
    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError("tile index not found", path=path, hint="create it with `geoimplicit tile`")
    try:
        con = sqlite3.connect(path, timeout=60)
        _register_spatial_functions(con)
        con.execute("SELECT 1 FROM tiles LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise CorruptInputError(f"not a GeoPackage tile index ({exc})", path=path,
                                hint="create it with `geoimplicit tile`") from exc
    return con


def read_metadata(path) -> dict:
    """The ``tiling`` key/value table of a tile index."""
    con = _connect(path)
    try:
        rows = con.execute("SELECT key, value FROM tiling").fetchall()
    except sqlite3.DatabaseError as exc:
        raise CorruptInputError("the tile index has no 'tiling' table", path=path,
                                hint="create it with `geoimplicit tile`") from exc
    finally:
        con.close()
    return {k: json.loads(v) for k, v in rows}


def open_run_index(workdir, tilegrid: "TileGrid", run_key: str, *, reset: Sequence[str] = ("tiles",),
                   extra: dict | None = None) -> dict[str, str]:
    """The tile statuses of a resumable run kept in ``workdir/tiles.gpkg``.

    An index written for the same ``run_key`` (same inputs and settings) is reused; otherwise, or when it is
    unreadable, the run starts again: the ``reset`` sub-folders of ``workdir`` are removed and a fresh index
    with every tile "pending" is written.
    """
    import shutil

    workdir = Path(workdir)
    index = workdir / "tiles.gpkg"
    if index.exists():
        try:
            if read_metadata(index).get("run_key") == run_key:
                return read_statuses(index)
        except Exception as exc:  # unreadable index: start again
            log.warning("%s: %s; starting the run again", index, exc)
        log.info("%s belongs to another run (inputs or settings changed): starting again", workdir)
        for sub in reset:
            shutil.rmtree(workdir / sub, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    tilegrid.write_index(index, "pending", overwrite=True, extra={"run_key": run_key, **(extra or {})})
    return read_statuses(index)


def update_status(path, tile_id: str, status: str, message: str = "") -> None:
    """Set one tile's status in the index (one transaction; retried while another process holds the lock)."""
    if status not in STATUSES:
        raise ValueError(f"unknown tile status {status!r}; one of {STATUSES}")
    for attempt in range(20):
        try:
            con = _connect(path)
            try:
                with con:
                    cur = con.execute("UPDATE tiles SET status = ?, message = ? WHERE id = ?",
                                      (status, message[:500], tile_id))
                    if cur.rowcount == 0:
                        raise KeyError(f"tile {tile_id} not in {path}")
            finally:
                con.close()
            return
        except sqlite3.OperationalError:  # locked
            time.sleep(0.05 * (attempt + 1))
    raise OSError(f"{path}: could not update the status of tile {tile_id} (database locked)")


def read_statuses(path) -> dict[str, str]:
    """tile id -> status."""
    con = _connect(path)
    try:
        return dict(con.execute("SELECT id, status FROM tiles").fetchall())
    finally:
        con.close()


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
