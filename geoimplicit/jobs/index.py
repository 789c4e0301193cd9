"""The run index: one GeoPackage (``tiles.gpkg``) that holds every tile of a run and its status.

One spatial layer ``tiles`` (id, row, col, core bounds, overlap, status, message, core polygon) that QGIS opens
without asking which layer; the run's metadata (the tile grid, the resume key, the product kind ...) sits in the
GeoPackage metadata extension as the layer's GDAL metadata (``gpkg_metadata``; QGIS and ``ogrinfo`` show it,
neither lists it as a layer). Status updates are single SQLite transactions, safe from several processes.

A resumable run opens its index with :func:`open_run_index` and the run's key (:func:`resume_key`: the
inputs' paths, sizes and times and the settings): the same key reuses the statuses, another starts again.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import struct
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
import pyproj

from geoimplicit.errors import CorruptInputError, InputFileNotFoundError
from geoimplicit.outputs import atomic_output, input_fingerprint
from geoimplicit.tiling.grid import GridSpec, Tile, TileGrid, tile_context

log = logging.getLogger(__name__)

__all__ = ["INDEX_NAME", "STATUSES", "FINISHED", "write_index", "read_index", "read_metadata", "resume_key",
           "open_run_index", "update_status", "read_statuses"]

INDEX_NAME = "tiles.gpkg"
# pending: not run yet; running: started (a crash leaves it so; treated as pending on resume);
# done: tile written; empty: no data in the tile (written as nodata); failed: raised an error.
STATUSES = ("pending", "running", "done", "empty", "failed")
FINISHED = ("done", "empty")
LAYER = "tiles"
_GDAL_MD_URI = "http://gdal.org"  # how GDAL marks its own metadata in gpkg_metadata


def write_index(tilegrid: TileGrid, path, status="pending", *, overwrite: bool = False,
                metadata: dict | None = None) -> Path:
    """Write the tile index GeoPackage of ``tilegrid`` atomically.

    ``status``: one status for all tiles, or a dict tile id -> status (missing ids are "pending").
    ``metadata``: more key/value metadata (JSON-able) stored with the grid's (e.g. the run key).
    """
    tiles = tilegrid.tiles
    statuses = {t.id: (status.get(t.id, "pending") if isinstance(status, dict) else status) for t in tiles}
    for s in statuses.values():
        if s not in STATUSES:
            raise ValueError(f"unknown tile status {s!r}; one of {STATUSES}")
    cols = {
        "id": np.array([t.id for t in tiles], dtype=object),
        "row": np.array([t.row for t in tiles], dtype=np.int32),
        "col": np.array([t.col for t in tiles], dtype=np.int32),
        **{k: np.array([t.core_bounds[i] for t in tiles]) for i, k in enumerate(("left", "bottom", "right", "top"))},
        "overlap": np.full(len(tiles), tilegrid.overlap),
        "status": np.array([statuses[t.id] for t in tiles], dtype=object),
        "message": np.array([""] * len(tiles), dtype=object),
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        _write_layer(tmp, [t.core_bounds for t in tiles], cols, tilegrid.grid.crs)
        with sqlite3.connect(tmp) as con:
            _write_metadata(con, {**tilegrid.metadata(), **(metadata or {})})
            con.execute(f"CREATE INDEX IF NOT EXISTS tiles_id ON {LAYER} (id)")
        con.close()
    return Path(path)


def _write_layer(path, boxes, cols: dict, crs) -> None:
    import shapely

    try:
        import pyogrio.raw
    except ImportError:  # a lean worker or GPU node without GDAL's vector drivers
        _write_gpkg_layer(path, LAYER, boxes, cols, crs)
        return
    geoms = shapely.to_wkb(np.array([shapely.box(*b) for b in boxes], dtype=object))
    pyogrio.raw.write(str(path), geoms, list(cols.values()), list(cols.keys()), driver="GPKG", layer=LAYER,
                      geometry_type="Polygon", crs=None if crs is None else crs.to_wkt())


def _write_metadata(con: sqlite3.Connection, meta: dict) -> None:
    """``meta`` as the ``tiles`` layer's GDAL metadata (GeoPackage metadata extension, JSON values)."""
    con.executescript("""
        CREATE TABLE IF NOT EXISTS gpkg_metadata (id INTEGER PRIMARY KEY ASC NOT NULL,
            md_scope TEXT NOT NULL DEFAULT 'dataset', md_standard_uri TEXT NOT NULL,
            mime_type TEXT NOT NULL DEFAULT 'text/xml', metadata TEXT NOT NULL DEFAULT '');
        CREATE TABLE IF NOT EXISTS gpkg_metadata_reference (reference_scope TEXT NOT NULL, table_name TEXT,
            column_name TEXT, row_id_value INTEGER,
            timestamp DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            md_file_id INTEGER NOT NULL, md_parent_id INTEGER);
        CREATE TABLE IF NOT EXISTS gpkg_extensions (table_name TEXT, column_name TEXT,
            extension_name TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL,
            UNIQUE (table_name, column_name, extension_name));
    """)
    spec = "http://www.geopackage.org/spec120/#extension_metadata"
    con.executemany("INSERT OR IGNORE INTO gpkg_extensions VALUES (?, NULL, 'gpkg_metadata', ?, 'read-write')",
                    [("gpkg_metadata", spec), ("gpkg_metadata_reference", spec)])
    root = ET.Element("GDALMultiDomainMetadata")
    items = ET.SubElement(root, "Metadata")
    for key, value in meta.items():
        ET.SubElement(items, "MDI", key=str(key)).text = json.dumps(value)
    cur = con.execute("INSERT INTO gpkg_metadata (md_scope, md_standard_uri, mime_type, metadata) "
                      "VALUES ('dataset', ?, 'text/xml', ?)", (_GDAL_MD_URI, ET.tostring(root, encoding="unicode")))
    con.execute("INSERT INTO gpkg_metadata_reference (reference_scope, table_name, md_file_id) VALUES ('table', ?, ?)",
                (LAYER, cur.lastrowid))


def read_metadata(path) -> dict:
    """The run metadata of a tile index (also from indexes of older versions, which kept a ``tiling`` table)."""
    con = _connect(path)
    try:
        try:
            rows = con.execute(
                "SELECT m.metadata FROM gpkg_metadata m JOIN gpkg_metadata_reference r ON r.md_file_id = m.id "
                "WHERE r.table_name = ? AND m.md_standard_uri = ? ORDER BY m.id", (LAYER, _GDAL_MD_URI)).fetchall()
        except sqlite3.OperationalError:
            rows = []
        meta = {}
        for (text,) in rows:
            for item in ET.fromstring(text).iter("MDI"):
                meta[item.get("key")] = json.loads(item.text or "null")
        if not meta:
            try:
                meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM tiling").fetchall()}
            except sqlite3.DatabaseError:
                pass
    except (ET.ParseError, ValueError) as exc:
        raise CorruptInputError(f"the tile index's metadata cannot be read ({exc})", path=path,
                                hint="create it with `geoimplicit tile`") from exc
    finally:
        con.close()
    if not meta:
        raise CorruptInputError("the tile index holds no tile grid metadata", path=path,
                                hint="create it with `geoimplicit tile`")
    return meta


def read_index(path) -> TileGrid:
    """Read a tile index written by :func:`write_index` (statuses: :func:`read_statuses`)."""
    meta = read_metadata(path)
    try:
        grid = GridSpec.from_dict(meta["grid"])
        ts, ov = float(meta["tile_size"]), float(meta["overlap"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptInputError(f"not a geoimplicit tile index ({exc})", path=path,
                                hint="create it with `geoimplicit tile`") from exc
    con = _connect(path)
    try:
        rows = con.execute(f"SELECT id, row, col, left, bottom, right, top FROM {LAYER} ORDER BY row, col").fetchall()
    finally:
        con.close()
    tiles = []
    for tid, r, c, left, bottom, right, top in rows:
        b = (left - ov, bottom - ov, right + ov, top + ov)
        core = (left, bottom, right, top)
        tiles.append(Tile(tid, int(r), int(c), core, b, GridSpec(b, grid.resolution, grid.crs), tile_context(core, ts, ov)))
    return TileGrid(grid, ts, ov, tiles, meta.get("aoi_wkt"))


def resume_key(files: Sequence, settings: dict, tilegrid: TileGrid) -> str:
    """The key of a resumable run: its input files (path, size, time), its settings and its tile grid."""
    return input_fingerprint(list(files), {**settings, **tilegrid.metadata()})


def open_run_index(workdir, tilegrid: TileGrid, run_key: str, *, reset: Sequence[str] = ("tiles",),
                   metadata: dict | None = None) -> dict[str, str]:
    """The tile statuses of a resumable run kept in ``workdir/tiles.gpkg``.

    An index written for the same ``run_key`` (same inputs and settings) is reused; otherwise, or when it is
    unreadable, the run starts again: the ``reset`` sub-folders of ``workdir`` are removed and a fresh index
    with every tile "pending" is written.
    """
    workdir = Path(workdir)
    index = workdir / INDEX_NAME
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
    write_index(tilegrid, index, "pending", overwrite=True, metadata={"run_key": run_key, **(metadata or {})})
    return read_statuses(index)


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
    return _pairs(path, "SELECT id, status FROM tiles")


def read_failures(path) -> dict[str, str]:
    """tile id -> the message recorded for each tile whose status is ``failed``."""
    return _pairs(path, "SELECT id, message FROM tiles WHERE status = 'failed'")


def _pairs(path, sql: str) -> dict:
    con = _connect(path)
    try:
        return dict(con.execute(sql).fetchall())
    finally:
        con.close()
