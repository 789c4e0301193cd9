"""Tiles -> one Cloud-Optimized GeoTIFF, blended over their overlaps, written block by block.

Each tile is a GeoTIFF on the mosaic's pixel lattice (a window of it, overlap included): band 1 the values
(float32, nodata -9999), optionally band 2 a 0/1 "filled" mask. Tile writers tag the tile with its core
bounds and overlap (:func:`write_tile`), which gives the feather length; for foreign tiles it is inferred
from the lattice. The mosaic is the weighted mean of the tiles covering each pixel with feathered weights
(:mod:`geoimplicit.tiling.blend`), nodata counting for nothing, so a constant or planar surface comes back
unchanged and seams vanish. Pixels outside the AOI polygon become nodata.

Memory: the mosaic is computed by blocks of ``block_px`` x ``block_px`` pixels, reading only the tile windows
that touch each block, with GDAL's block cache bounded (:data:`CACHE_MB`), so it does not grow with the area.
The blocks go into a temporary tiled GeoTIFF (uncompressed unless it would be large), which GDAL's COG driver
then turns into the final COG (DEFLATE, floating-point predictor, 256 px tiles, internal overviews); the DSM and
its filled mask are converted at the same time, at temporary names renamed into place when both are complete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from geoimplicit.errors import CorruptInputError, InputError, InputFileNotFoundError, NoDataError
from geoimplicit.outputs import atomic_output, check_output, partial_path
from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel
from geoimplicit.tiling.blend import feather_weights
from geoimplicit.tiling.grid import GridSpec

log = logging.getLogger(__name__)

__all__ = ["NODATA", "write_tile", "mosaic", "find_tiles", "TileSource", "TileFeed", "MosaicAborted"]

NODATA = -9999.0
CACHE_MB = 256  # GDAL's block cache during the mosaic (its default, 5 % of the RAM, held the whole output)
TAG_CORE = "GEOIMPLICIT_TILE_CORE_BOUNDS"
TAG_OVERLAP = "GEOIMPLICIT_TILE_OVERLAP_PX"
TAG_ID = "GEOIMPLICIT_TILE_ID"
# the blocks' temporary file is written uncompressed up to this size (2 GiB: 23 km² of float32 at 0.5 m)
UNCOMPRESSED_BLOCKS_BYTES = 2 << 30


def write_tile(path, height: np.ndarray, valid: np.ndarray, tile, *, filled: np.ndarray | None = None,
               tags: dict | None = None, overwrite: bool = True) -> Path:
    """Write one DSM tile GeoTIFF atomically: band 1 height (nodata -9999), band 2 the filled mask (0/1).

    ``tile`` is a :class:`~geoimplicit.tiling.grid.Tile` (its grid gives the georeferencing). The writer is the
    raster product kind's (:func:`geoimplicit.jobs.raster.write_raster_tile`); ``overwrite`` is kept for callers.
    """
    from geoimplicit.jobs.raster import dsm_bands, write_raster_tile

    del overwrite  # tiles are always replaced atomically
    if height.shape != tile.grid.shape:
        raise ValueError(f"write_tile: array {height.shape} does not match the tile grid {tile.grid.shape}")
    return write_raster_tile(path, dsm_bands(height, valid, filled), tile, nodata=NODATA,
                             band_names=("height", "filled"), tags=tags)


@dataclass
class TileSource:
    """A tile file placed in the mosaic grid."""

    path: Path
    bounds: tuple
    shape: tuple
    resolution: float
    overlap_px: int | None
    count: int
    window: object = None  # rasterio Window in the mosaic grid
    tags: dict = field(default_factory=dict)  # the tile's dataset tags
    units: tuple = ()  # band units ("m", "ft" or "")
    descriptions: tuple = ()  # band names
    opened: bool = True  # False: a tile of a feed not read yet


def _place(s: TileSource, grid: GridSpec, bands: list[int]) -> None:
    """Check that a tile lies on the mosaic's pixel grid and has the bands (once read), and give it its window."""
    if not GridSpec(s.bounds, s.resolution).is_aligned_with(grid):
        raise InputError("tile is not on the mosaic's pixel grid (other resolution or origin)", path=s.path,
                         hint="mosaic tiles made with one tile grid")
    s.window = grid.window(s.bounds)
    if s.opened and s.count < max(bands):
        raise InputError(f"tile has {s.count} bands, the mosaic asks for band {max(bands)}", path=s.path)


class TileFeed:
    """The tiles of a mosaic written while they are still being made (:func:`mosaic` ``feed=``): each tile's path,
    bounds and overlap (pixels) known up front, each one announced by :meth:`finished` (written: its file is
    complete; not written: an empty tile, no file). :meth:`abort` makes the waiting mosaic raise
    :class:`MosaicAborted`."""

    def __init__(self, planned: Sequence[tuple]):
        self.planned = [(Path(p), tuple(b), int(o)) for p, b, o in planned]
        self._index = {p: i for i, (p, _, _) in enumerate(self.planned)}
        self._written: dict[int, bool] = {}
        self._aborted = False
        self._cond = threading.Condition()
        self.all_finished = threading.Event()

    def finished(self, path, written: bool) -> None:
        with self._cond:
            self._written[self._index[Path(path)]] = bool(written)
            if len(self._written) == len(self.planned):
                self.all_finished.set()
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def planned_sources(self, grid: GridSpec) -> list[TileSource]:
        out = []
        for p, b, ov in self.planned:
            w = grid.window(b)
            out.append(TileSource(p, b, (int(w.height), int(w.width)), grid.resolution, ov, 0, opened=False))
        return out

    def _wait(self, indices: Sequence[int]) -> list[int]:
        """Block until the tiles ``indices`` are finished; those written."""
        with self._cond:
            while not self._aborted and not all(i in self._written for i in indices):
                self._cond.wait()
            if self._aborted:
                raise MosaicAborted("the tiles' run stopped")
            return [i for i in indices if self._written[i]]

    def when_finished(self, blocks, buckets: dict, live: dict, arrive: Callable[[int], None]) -> Iterable:
        """``blocks`` in order, each once its tiles are finished: ``arrive(i)`` the first time a written tile is
        needed, and the block's written tiles put in ``live`` for the blender."""
        arrived: set[int] = set()
        for block in blocks:
            key = block[4]
            written = self._wait(buckets.get(key, ()))
            for i in set(written) - arrived:
                arrive(i)
                arrived.add(i)
            live[key] = written
            yield block


class MosaicAborted(Exception):
    """The run that feeds a mosaic stopped before all its tiles were finished."""


def _open_sources(paths: Sequence) -> tuple[list[TileSource], object]:
    import rasterio

    sources, crs = [], None
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputFileNotFoundError("tile not found", path=p)
        try:
            with rasterio.open(p) as ds:
                t = ds.transform
                if t.b != 0 or t.d != 0 or abs(t.a + t.e) > 1e-9 * abs(t.a):
                    raise InputError("tile is rotated or has non-square pixels", path=p,
                                     hint="mosaic only north-up tiles with square pixels")
                tags = ds.tags()
                ov = tags.get(TAG_OVERLAP)
                sources.append(TileSource(p, tuple(ds.bounds), (ds.height, ds.width), t.a,
                                          None if ov is None else int(ov), ds.count, tags=tags,
                                          units=tuple(ds.units), descriptions=tuple(ds.descriptions)))
                if crs is None:
                    crs = ds.crs
                elif ds.crs != crs:
                    raise InputError(f"tile CRS {ds.crs} differs from the first tile's {crs}", path=p,
                                     hint="mosaic tiles of one run only")
        except rasterio.errors.RasterioIOError as exc:
            raise CorruptInputError(f"not a readable GeoTIFF ({exc})", path=p) from exc
    return sources, crs


_TILE_TAGS = (TAG_CORE, TAG_OVERLAP, TAG_ID, "AREA_OR_POINT")


def shared_tags(sources: list[TileSource]) -> dict:
    """The provenance tags every tile carries with the same value (not the tile's own id, core, overlap)."""
    common = {k: v for k, v in sources[0].tags.items() if k not in _TILE_TAGS}
    for s in sources[1:]:
        common = {k: v for k, v in common.items() if s.tags.get(k) == v}
    return common


def _band_units(sources: list[TileSource], bands: list[int], crs, units) -> list[str | None]:
    """Units of the output bands: given, else the tiles' own, else the CRS's height unit for a "height" band."""
    from geoimplicit.io.crs import height_unit

    if units is not None:
        return [units] * len(bands) if isinstance(units, str) else list(units)
    first = sources[0]
    out = []
    for b in bands:
        unit = first.units[b - 1] if len(first.units) >= b else ""
        name = first.descriptions[b - 1] if len(first.descriptions) >= b else None
        out.append(unit or (height_unit(crs) if name == "height" else None))
    return out


def _infer_feather(sources: list[TileSource], grid: GridSpec) -> None:
    """Tiles without an overlap tag: feather over the overlap implied by the tile lattice."""
    missing = [s for s in sources if s.overlap_px is None]
    if not missing:
        return
    offs = sorted({s.window.col_off for s in sources} | set())
    steps = np.diff(offs)
    step = int(steps[steps > 0].min()) if len(steps) and (steps > 0).any() else None
    for s in missing:
        s.overlap_px = max(0, (s.shape[1] - step) // 2) if step else 0


def find_tiles(inputs: Iterable) -> tuple[list[Path], object]:
    """Expand the mosaic inputs: tile files, folders of ``*.tif``, or a tile index ``.gpkg``.

    Returns (tile paths, the TileGrid of the index or None). A tile index's tiles are read from the
    ``tiles/`` folder beside it (the layout of a ``geoimplicit dsm`` work folder); tiles not finished are
    left out.
    """
    from geoimplicit.jobs.index import FINISHED, read_statuses
    from geoimplicit.tiling.grid import TileGrid

    paths, tilegrid = [], None
    for item in inputs:
        item = Path(item)
        if item.suffix.lower() == ".gpkg":
            tilegrid = TileGrid.read_index(item)
            status = read_statuses(item)
            folder = item.parent / "tiles"
            for t in tilegrid.tiles:
                f = folder / f"{t.id}.tif"
                if status.get(t.id) in FINISHED and f.exists():
                    paths.append(f)
        elif item.is_dir():
            paths.extend(sorted(p for p in item.glob("*.tif") if not p.name.startswith(".")))
        elif item.exists():
            paths.append(item)
        else:
            raise InputFileNotFoundError("tile, folder or tile index not found", path=item)
    return paths, tilegrid


class _Handles:
    """A small LRU of open tile datasets."""

    def __init__(self, size=64):
        self.size = size
        self.open = OrderedDict()

    def get(self, path):
        import rasterio

        ds = self.open.pop(path, None)
        if ds is None:
            ds = rasterio.open(path)
            if len(self.open) >= self.size:
                _, old = self.open.popitem(last=False)
                old.close()
        self.open[path] = ds
        return ds

    def close(self):
        for ds in self.open.values():
            ds.close()
        self.open.clear()


def _bounded_gdal_cache(fn):
    """``fn`` with GDAL's block cache at :data:`CACHE_MB` (unless GDAL_CACHEMAX is set): the blocks written
    and the COG's source read stayed in the default cache, so the mosaic's memory grew with the area."""
    @functools.wraps(fn)
    def bounded(*args, **kw):
        import rasterio

        if os.environ.get("GDAL_CACHEMAX"):
            return fn(*args, **kw)
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB):
            return fn(*args, **kw)

    return bounded


@_bounded_gdal_cache
def mosaic(
    tiles: Sequence,
    output,
    *,
    grid: GridSpec | None = None,
    aoi=None,
    crs=None,
    tags: dict | None = None,
    filled_output=None,
    overwrite: bool = False,
    block_px: int = 1024,
    bands: Sequence[int] | None = None,
    dtype: str = "float32",
    nodata: float = NODATA,
    units=None,
    alpha: bool = False,
    feed: "TileFeed | None" = None,
    scratch=None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> Path:
    """Blend tile GeoTIFFs into one COG.

    Args:
        tiles: tile paths (all on one pixel lattice, one CRS).
        output: the mosaic COG.
        grid: the output grid (default: the union of the tiles' cores, or of their bounds for foreign tiles).
            Must be aligned with the tiles' pixels.
        aoi: shapely (Multi)Polygon in the grid's CRS; pixels whose centre lies outside become nodata.
        crs: CRS to write when the tiles have none.
        tags: metadata tags (method, inputs, ...); the software version and resolution are added, and the
            provenance tags all tiles share are kept.
        filled_output: optional uint8 COG: 1 where the value comes from hole filling, 0 measured, 255 nodata.
        overwrite: replace existing outputs.
        block_px: side of the blocks computed at a time (memory ~ 24 bytes x block_px^2 per band).
        bands: the tile bands to blend, one output band each (default ``(1,)``; e.g. ``(1, 2, 3)`` for RGB
            tiles). A tile pixel counts only where all of them are valid.
        dtype: output data type; integer types are rounded and clipped to their range, and a value equal to
            ``nodata`` is moved one step inside the range (so it stays valid).
        nodata: output nodata value.
        units: band unit(s) ("m", "ft"); default: the tiles' units, else the CRS's height unit for a band the
            tiles call "height" (DSM tiles).
        alpha: add an alpha band after the blended ones (255 valid, 0 nodata), e.g. for an RGB image.
        feed: tiles still being made (:class:`TileFeed`; ``tiles`` is then ignored and ``grid`` needed): each
            block is blended as soon as every tile over it is finished, and progress is reported from when
            the last tile is.
        scratch: folder of the temporary blocks files (default: beside the output), e.g. a run's work folder,
            where a killed run's leftovers are cleared when it resumes.

    Raises:
        NoDataError: no tile, or no valid pixel at all.
        InputError: tiles not on one lattice, or not aligned with ``grid``.
    """
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window

    from geoimplicit import __version__

    if feed is not None and grid is None:
        raise ValueError("mosaic: a feed of tiles needs the output grid")
    tiles = [Path(t) for t in tiles] if feed is None else [p for p, _, _ in feed.planned]
    check_output(output, overwrite, inputs=tiles, folder=False)
    if filled_output is not None:
        check_output(filled_output, overwrite, inputs=tiles + [output], folder=False)
    bands = [1] if bands is None else [int(b) for b in bands]
    nb = len(bands)
    out_dtype = np.dtype(dtype)
    is_int = out_dtype.kind in "iu"
    if not bands or min(bands) < 1:
        raise InputError(f"bands must be 1-based band numbers, got {bands}")
    if filled_output is not None and nb > 1:
        raise InputError("a filled mask is only made for a single-band mosaic")
    if not tiles:
        raise NoDataError("no tiles to mosaic", path=output, hint="check that the run produced tiles")
    if feed is None:
        sources, tile_crs = _open_sources(tiles)
    else:
        sources, tile_crs = feed.planned_sources(grid), None
    res = sources[0].resolution
    if grid is None:
        core = []
        for s in sources:
            with rasterio.open(s.path) as ds:
                cb = ds.tags().get(TAG_CORE)
            core.append(tuple(json.loads(cb)) if cb else s.bounds)
        core = np.array(core)
        grid = GridSpec((core[:, 0].min(), core[:, 1].min(), core[:, 2].max(), core[:, 3].max()), res,
                        crs if tile_crs is None else tile_crs)
    for s in sources:
        _place(s, grid, bands)
    _infer_feather(sources, grid)
    from geoimplicit.io.crs import to_rasterio_crs

    out_crs = next((c for c in (grid.crs, tile_crs, crs) if c is not None), None)

    rio_crs = None if out_crs is None else to_rasterio_crs(out_crs)
    rows, cols = grid.shape
    bx = max(256, (int(block_px) // 256) * 256)
    # which tiles touch which block
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sources):
        w = s.window
        r0, r1 = max(0, w.row_off), min(rows, w.row_off + w.height)
        c0, c1 = max(0, w.col_off), min(cols, w.col_off + w.width)
        if r1 <= r0 or c1 <= c0:
            continue
        for br in range(r0 // bx, (r1 - 1) // bx + 1):
            for bc in range(c0 // bx, (c1 - 1) // bx + 1):
                buckets.setdefault((br, bc), []).append(i)
    n_blocks_r, n_blocks_c = -(-rows // bx), -(-cols // bx)
    total = n_blocks_r * n_blocks_c
    weight_cache: dict[tuple, np.ndarray] = {}

    profile = dict(driver="GTiff", width=cols, height=rows, count=nb + int(alpha), dtype=out_dtype.name, nodata=nodata,
                   crs=rio_crs, transform=grid.transform, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", zlevel=1, predictor=2 if is_int else 3, BIGTIFF="IF_SAFER",
                   num_threads=str(mosaic_threads()))  # the blocks compressed in GDAL's threads, off this one
    if nb == 3 and out_dtype == np.uint8:
        profile["photometric"] = "RGB"
    int_range = (np.iinfo(out_dtype).min, np.iinfo(out_dtype).max) if is_int else None
    want_filled = filled_output is not None
    block_profile = _block_file_profile(profile, rows * cols * (nb + int(alpha)) * out_dtype.itemsize)
    folder = Path(scratch) if scratch is not None else Path(output).parent
    tmp = partial_path(folder / (Path(output).stem + "_blocks.tif"))
    tmp_f = partial_path(folder / (Path(output).stem + "_filled_blocks.tif")) if want_filled else None
    n_valid = 0
    live = buckets if feed is None else {}  # with a feed: a block's written tiles, once they are all finished
    blend = _BlockBlender(sources, live, bands, want_filled, weight_cache, grid, aoi, nodata, out_dtype, int_range)
    try:
        dst = rasterio.open(tmp, "w", **block_profile)
        dst_f = None
        if want_filled:
            dst_f = rasterio.open(tmp_f, "w", **{**block_profile, "dtype": "uint8", "nodata": 255}
                                  | ({"predictor": 2} if "compress" in block_profile else {}))
        try:
            done = 0
            blocks = [(br * bx, bc * bx, min(bx, rows - br * bx), min(bx, cols - bc * bx), (br, bc))
                      for br in range(n_blocks_r) for bc in range(n_blocks_c)]
            if feed is not None:
                def arrive(i):  # a fed tile, finished: its header read now
                    sources[i] = _open_sources([sources[i].path])[0][0]
                    _place(sources[i], grid, bands)

                blocks = feed.when_finished(blocks, buckets, live, arrive)
            for (r0, c0, h, w, _), (out, valid, fo) in _ordered_map(blend, blocks, cancel):
                n_valid += int(valid.sum())
                dst.write(out, indexes=list(range(1, nb + 1)), window=Window(c0, r0, w, h))
                if alpha:
                    dst.write(np.where(valid, 255, 0).astype(out_dtype), nb + 1, window=Window(c0, r0, w, h))
                if want_filled:
                    dst_f.write(fo, 1, window=Window(c0, r0, w, h))
                done += 1
                if progress is not None and (feed is None or feed.all_finished.is_set()):
                    progress(done, total, "mosaic", f"block {done}/{total}")
            used = [s for s in sources if s.opened]
            if not used:
                raise NoDataError("the mosaic has no tile", path=output, hint="check that the AOI overlaps the data")
            all_tags = {**shared_tags(used), "AREA_OR_POINT": "Area", "software": f"geoimplicit {__version__}",
                        "resolution": repr(grid.resolution), "tiles": str(len(used))}
            all_tags.update({str(k): (v if isinstance(v, str) else json.dumps(v)) for k, v in (tags or {}).items()})
            dst.update_tags(**all_tags)
            for k, unit in enumerate(_band_units(used, bands, out_crs, units), start=1):
                if unit:
                    dst.set_band_unit(k, unit)
            if nb == 1:
                dst.set_band_description(1, str((tags or {}).get("band", "height")))
            else:
                with rasterio.open(used[0].path) as ds0:
                    names = ds0.descriptions
                for k, b in enumerate(bands):
                    if names[b - 1]:
                        dst.set_band_description(k + 1, names[b - 1])
            if alpha:
                from rasterio.enums import ColorInterp

                dst.set_band_description(nb + 1, "alpha")
                dst.colorinterp = [*dst.colorinterp[:nb], ColorInterp.alpha]
            if want_filled:
                dst_f.update_tags(**{**all_tags, "band": "filled: 1 filled hole, 0 measured, 255 nodata"})
        finally:
            dst.close()
            if dst_f is not None:
                dst_f.close()
            blend.close()
        if n_valid == 0:
            raise NoDataError("the mosaic has no valid pixel (every tile is nodata or outside the AOI)",
                              path=output, hint="check that the AOI overlaps the data")
        cogs = [(tmp, output, "STANDARD" if is_int else "FLOATING_POINT", "AVERAGE")]
        if want_filled:
            cogs.append((tmp_f, filled_output, "STANDARD", "NEAREST"))
        _to_cogs(cogs, overwrite)
    finally:
        for t in (tmp, tmp_f):
            if t is not None and Path(t).exists():
                Path(t).unlink()
    return Path(output)


def mosaic_threads() -> int:
    """Threads that blend mosaic blocks and compress the COG (:func:`geoimplicit.cores.thread_workers`)."""
    from geoimplicit.cores import thread_workers

    return thread_workers()


def _ordered_map(fn, items, cancel, threads: int | None = None):
    """``(item, fn(item))`` in order, ``fn`` run ahead in threads (at most ``2 x threads`` pending)."""
    import concurrent.futures as cf

    threads = mosaic_threads() if threads is None else threads
    if threads <= 1:
        for item in items:
            check_cancel(cancel)
            yield item, fn(item)
        return
    with cf.ThreadPoolExecutor(threads, thread_name_prefix="mosaic") as pool:
        pending = []
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= 2 * threads:
                check_cancel(cancel)
                it, fut = pending.pop(0)
                yield it, fut.result()
        for it, fut in pending:
            check_cancel(cancel)
            yield it, fut.result()


class _BlockBlender:
    """One mosaic block from the tiles over it: ``(values, valid, filled)``; each thread its own tile handles."""

    def __init__(self, sources, buckets, bands, want_filled, weight_cache, grid, aoi, nodata, out_dtype, int_range):
        self.sources, self.buckets, self.bands, self.want_filled = sources, buckets, bands, want_filled
        self.weight_cache, self.grid, self.aoi, self.nodata = weight_cache, grid, aoi, nodata
        self.out_dtype, self.int_range = out_dtype, int_range
        self._local, self._all, self._lock = threading.local(), [], threading.Lock()

    def _handles(self) -> "_Handles":
        h = getattr(self._local, "handles", None)
        if h is None:
            h = self._local.handles = _Handles()
            with self._lock:
                self._all.append(h)
        return h

    def _weights(self, s) -> np.ndarray:
        key = (s.shape, s.overlap_px)
        with self._lock:
            wt = self.weight_cache.get(key)
            if wt is None:
                wt = self.weight_cache[key] = feather_weights(s.shape, 2 * s.overlap_px)
        return wt

    def __call__(self, block):
        from rasterio.windows import Window

        r0, c0, h, w, key = block
        nb, want_filled = len(self.bands), self.want_filled
        acc, wsum = np.zeros((nb, h, w)), np.zeros((h, w))
        facc = np.zeros((h, w)) if want_filled else None
        for i in self.buckets.get(key, ()):
            s = self.sources[i]
            tw = s.window
            rr0, rr1 = max(r0, tw.row_off), min(r0 + h, tw.row_off + tw.height)
            cc0, cc1 = max(c0, tw.col_off), min(c0 + w, tw.col_off + tw.width)
            if rr1 <= rr0 or cc1 <= cc0:
                continue
            wt = self._weights(s)
            win = Window(cc0 - tw.col_off, rr0 - tw.row_off, cc1 - cc0, rr1 - rr0)
            ds = self._handles().get(s.path)
            read = self.bands + [2] if (want_filled and s.count >= 2) else self.bands
            data = ds.read(read, window=win).astype(np.float64)
            vals = data[:nb]
            ok = np.isfinite(vals).all(axis=0)
            if ds.nodata is not None:
                ok &= (vals != ds.nodata).all(axis=0)
            wwin = wt[win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width] * ok
            sl = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
            acc[(slice(None),) + sl] += wwin * np.where(ok, vals, 0.0)
            wsum[sl] += wwin
            if want_filled and len(read) == 2:
                facc[sl] += wwin * np.where(ok, data[1], 0.0)
        return self._finish(acc, wsum, facc, r0, c0, h, w)

    def _finish(self, acc, wsum, facc, r0, c0, h, w):
        from rasterio.features import geometry_mask
        from rasterio.windows import Window

        nodata, out_dtype = self.nodata, self.out_dtype
        valid = wsum > 0
        if self.aoi is not None and valid.any():
            btrans = self.grid.subgrid(Window(c0, r0, w, h)).transform
            valid &= geometry_mask([self.aoi], out_shape=(h, w), transform=btrans, invert=True)
        out = np.full((acc.shape[0], h, w), nodata, out_dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = acc[:, valid] / wsum[valid]
        if self.int_range is not None:
            lo, hi = self.int_range
            mean = np.clip(np.rint(mean), lo, hi)
            mean[mean == nodata] = nodata + 1 if nodata < hi else nodata - 1
        out[:, valid] = mean.astype(out_dtype)
        fo = None
        if self.want_filled:
            fo = np.full((h, w), 255, np.uint8)
            with np.errstate(invalid="ignore", divide="ignore"):
                fo[valid] = (facc[valid] / wsum[valid] > 0.5).astype(np.uint8)
        return out, valid, fo

    def close(self) -> None:
        for h in self._all:
            h.close()


def _block_file_profile(profile: dict, nbytes: int) -> dict:
    """The blocks' temporary GeoTIFF: uncompressed up to :data:`UNCOMPRESSED_BLOCKS_BYTES` (the COG driver
    recompresses everything anyway: DEFLATE there and back again cost more than the disk writes), else
    DEFLATE level 1 so that the temporary file stays small on large areas. The COG's bytes are the same."""
    if nbytes > UNCOMPRESSED_BLOCKS_BYTES:
        return profile
    return {k: v for k, v in profile.items() if k not in ("compress", "zlevel", "predictor", "num_threads")}


def _to_cogs(jobs: Sequence[tuple], overwrite: bool) -> None:
    """Each ``(source, output, predictor, resampling)`` into a COG, at the same time in threads (GDAL releases
    the GIL); all of them renamed into place only when all are complete, so a failure leaves none of them."""
    import concurrent.futures as cf

    import rasterio

    threads = str(cog_threads())
    # GDAL's configuration is global: set here once, not in the threads (a thread's Env clears it on exit).
    # GDAL_NUM_THREADS: the source's blocks decoded and the overviews computed in threads too.
    with contextlib.ExitStack() as stack, rasterio.Env(GDAL_NUM_THREADS=threads):
        tmps = [stack.enter_context(atomic_output(out, overwrite=overwrite)) for _, out, _, _ in jobs]
        with cf.ThreadPoolExecutor(len(jobs), thread_name_prefix="cog") as pool:
            futures = [pool.submit(_to_cog, src, tmp, predictor=pred, resampling=res, threads=threads)
                       for (src, _, pred, res), tmp in zip(jobs, tmps)]
            for f in futures:
                f.result()


def _to_cog(src, dst, *, predictor: str, resampling: str, threads: str) -> None:
    import rasterio.shutil

    rasterio.shutil.copy(
        src, dst, driver="COG", COMPRESS="DEFLATE", PREDICTOR=predictor, BLOCKSIZE=256, OVERVIEWS="AUTO",
        RESAMPLING=resampling, BIGTIFF="IF_SAFER",
        NUM_THREADS=threads,  # DEFLATE per 256 px block: the same bytes with any thread count
    )


def cog_threads() -> int:
    """GDAL's threads for the COG: every usable core (nothing else runs then; two threads were 1.8x faster than
    one on a 2-core machine)."""
    from geoimplicit.cores import usable_cores

    return usable_cores()


def mosaic_inputs(inputs: Sequence, output, *, aoi=None, filled_output=None, overwrite: bool = False,
                  progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> Path:
    """``geoimplicit mosaic``: expand ``inputs`` (:func:`find_tiles`), read the AOI file, mosaic.

    With a tile index the output grid is the index's (and its AOI polygon clips unless ``aoi`` is given).
    """
    import rasterio

    from geoimplicit.tiling.grid import read_metadata

    paths, tilegrid = find_tiles(inputs)
    index_tags = {}  # the provenance a DSM run stored in its tile index
    for item in inputs:
        if Path(item).suffix.lower() == ".gpkg":
            index_tags.update(read_metadata(item).get("tags") or {})
    if not paths:
        raise NoDataError("no finished tile found", path=", ".join(str(i) for i in inputs),
                          hint="give tile GeoTIFFs, a folder of them, or the tiles.gpkg of a run")
    grid = tilegrid.grid if tilegrid is not None else None
    geometry = tilegrid.aoi_geometry if tilegrid is not None else None
    if aoi is not None:
        from geoimplicit.io.vector import read_aoi

        with rasterio.open(paths[0]) as ds:
            crs = ds.crs
        if crs is None:
            raise InputError("the tiles have no CRS: cannot place the AOI", path=paths[0])
        geometry = read_aoi(aoi, crs=crs).geometry
    return mosaic(paths, output, grid=grid, aoi=geometry, filled_output=filled_output, overwrite=overwrite,
                  tags=index_tags or None, progress=progress, cancel=cancel)
