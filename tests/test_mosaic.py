"""Mosaic: feathered blending without seams, nodata, AOI clipping, COG layout and tags, atomic outputs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely

from geoimplicit.errors import DiskFullError, InputError, NoDataError, OutputExistsError
from geoimplicit.mosaic import NODATA, find_tiles, mosaic, write_tile
from geoimplicit.tiling.grid import TileGrid

X0, Y0 = 500000.0, 4500000.0


def _plane(xx, yy):
    return 120.0 + 0.3 * (xx - X0) - 0.2 * (yy - Y0)


def _write_tiles(tmp_path, fn, crs="EPSG:32632", res=0.5, holes=False, size=(140, 45), tile_size=16):
    tg = TileGrid.from_aoi((X0, Y0, X0 + size[0], Y0 + size[1]), tile_size=tile_size, overlap=3, resolution=res,
                           crs=crs)
    paths = []
    for t in tg.tiles:
        xs, ys = t.grid.pixel_centers()
        xx, yy = np.meshgrid(xs, ys)
        h = fn(xx, yy).astype(np.float32)
        valid = np.ones(h.shape, bool)
        if holes and t.row == 1 and t.col == 1:
            valid[:] = False  # an empty tile
        paths.append(write_tile(tmp_path / "tiles" / f"{t.id}.tif", h, valid, t))
    return tg, paths


def _truth(grid, fn):
    xs, ys = grid.pixel_centers()
    xx, yy = np.meshgrid(xs, ys)
    return fn(xx, yy).astype(np.float32)


@pytest.mark.parametrize("fn", [lambda x, y: np.full(x.shape, 42.5), _plane], ids=["constant", "planar"])
def test_constant_and_planar_surfaces_come_back_unchanged(tmp_path, fn):
    tg, paths = _write_tiles(tmp_path, fn)
    out = mosaic(paths, tmp_path / "m.tif", grid=tg.grid, tags={"method": "test"}, block_px=256)
    with rasterio.open(out) as ds:
        a = ds.read(1)
        assert ds.transform.almost_equals(tg.grid.transform)
        assert ds.crs.to_epsg() == 32632
    assert (a != NODATA).all()
    assert np.abs(a - _truth(tg.grid, fn)).max() <= 1e-4


def test_seams_are_blended_and_nodata_respected(tmp_path):
    tg, paths = _write_tiles(tmp_path, _plane, holes=True)
    # a tile offset by +1 m: the blend must ramp smoothly, never jump by the full step
    t = tg.tiles[0]
    xs, ys = t.grid.pixel_centers()
    xx, yy = np.meshgrid(xs, ys)
    write_tile(paths[0], (_plane(xx, yy) + 1.0).astype(np.float32), np.ones(xx.shape, bool), t)
    out = mosaic(paths, tmp_path / "m.tif", grid=tg.grid)
    with rasterio.open(out) as ds:
        a = ds.read(1)
    truth = _truth(tg.grid, _plane)
    d = np.where(a != NODATA, a - truth, np.nan)
    # inside tile 0's core, away from the overlaps: the offset is there in full
    assert np.nanmax(d[8:20, 8:20]) == pytest.approx(1.0, abs=1e-4)
    # along a row crossing the seam, consecutive differences are small (no step of 1 m)
    row = d[10, :60]
    assert np.nanmax(np.abs(np.diff(row))) < 0.15
    # the empty tile's core far from its neighbours is nodata; its overlap is covered by the neighbours
    w = tg.grid.window(tg.tiles[[x.id for x in tg.tiles].index("r0001_c0001")].core_bounds)
    core = a[w.row_off + 6: w.row_off + w.height - 6, w.col_off + 6: w.col_off + w.width - 6]
    assert (core == NODATA).all()
    near_edge = a[w.row_off + 1, w.col_off + 10]
    assert near_edge != NODATA and near_edge == pytest.approx(truth[w.row_off + 1, w.col_off + 10], abs=1e-3)


def test_cog_layout_tags_and_aoi_clip(tmp_path):
    tg, paths = _write_tiles(tmp_path, _plane)
    circle = shapely.Point(X0 + 35, Y0 + 22).buffer(15)
    out = mosaic(paths, tmp_path / "m.tif", grid=tg.grid, aoi=circle, tags={"method": "raster", "inputs": ["a.laz"]},
                 filled_output=tmp_path / "m_filled.tif")
    with rasterio.open(out) as ds:
        a = ds.read(1)
        tags = ds.tags()
        assert ds.profile["compress"] == "deflate" and ds.profile["tiled"]
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "3"
        assert ds.overviews(1)
    assert tags["method"] == "raster" and tags["software"].startswith("geoimplicit ")
    assert float(tags["resolution"]) == 0.5 and "a.laz" in tags["inputs"]
    xs, ys = tg.grid.pixel_centers()
    xx, yy = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(circle, xx, yy)
    assert ((a != NODATA) == inside).all()
    with rasterio.open(tmp_path / "m_filled.tif") as ds:
        f = ds.read(1)
    assert set(np.unique(f)) <= {0, 255} and ((f == 0) == inside).all()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_mosaic_from_a_folder_infers_the_grid(tmp_path):
    tg, paths = _write_tiles(tmp_path, _plane)
    files, index = find_tiles([tmp_path / "tiles"])
    assert len(files) == len(tg.tiles) and index is None
    out = mosaic(files, tmp_path / "m.tif")
    with rasterio.open(out) as ds:
        # the union of the cores (tags written by write_tile) = the tile lattice
        assert ds.bounds.left == tg.tiles[0].core_bounds[0] and ds.bounds.top == tg.tiles[0].core_bounds[3]


def test_bad_mosaic_inputs(tmp_path):
    tg, paths = _write_tiles(tmp_path, _plane)
    out = mosaic(paths, tmp_path / "m.tif", grid=tg.grid)
    with pytest.raises(OutputExistsError):
        mosaic(paths, out, grid=tg.grid)
    with pytest.raises(NoDataError):
        mosaic([], tmp_path / "n.tif")
    # a tile off the lattice by a quarter pixel
    import dataclasses

    from geoimplicit.tiling.grid import GridSpec

    t = tg.tiles[0]
    b = tuple(v + 0.125 for v in t.bounds)
    shifted = dataclasses.replace(t, bounds=b, grid=GridSpec(b, 0.5, t.grid.crs))
    bad = write_tile(tmp_path / "bad" / "x.tif", np.zeros(t.grid.shape, np.float32), np.ones(t.grid.shape, bool),
                     shifted)
    with pytest.raises(InputError, match="pixel grid"):
        mosaic(paths + [bad], tmp_path / "b.tif", grid=tg.grid)
    assert not (tmp_path / "b.tif").exists()
    # all nodata -> a clean error and no output
    with pytest.raises(NoDataError):
        mosaic(paths, tmp_path / "far.tif", grid=tg.grid, aoi=shapely.box(0, 0, 1, 1))
    assert not (tmp_path / "far.tif").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


# ---------------------------------------------------------------------- provenance and band units (issue 16)
@pytest.mark.parametrize("crs,unit", [("EPSG:32632", "m"), ("EPSG:2994", "ft")])
def test_height_mosaic_has_the_crs_height_unit(tmp_path, crs, unit):
    tg, paths = _write_tiles(tmp_path, lambda x, y: np.full(x.shape, 42.5), crs=crs)
    out = mosaic(paths, tmp_path / "m.tif", grid=tg.grid, filled_output=tmp_path / "f.tif")
    with rasterio.open(out) as ds:
        assert ds.units == (unit,) and ds.descriptions == ("height",)
    with rasterio.open(tmp_path / "f.tif") as ds:  # a 0/1 mask has no unit
        assert ds.units == ("",) or ds.units == (None,)


def test_mosaic_keeps_the_tiles_shared_provenance(tmp_path):
    tg = TileGrid.from_aoi((X0, Y0, X0 + 40, Y0 + 20), tile_size=16, overlap=3, resolution=0.5,
                           crs="EPSG:32632")
    paths = []
    for t in tg.tiles:
        h = np.full(t.grid.shape, 7.0, np.float32)
        tags = {"method": "raster", "stat": "max", "made_on": t.id}  # made_on differs per tile: not kept
        paths.append(write_tile(tmp_path / f"{t.id}.tif", h, np.ones(h.shape, bool), t, tags=tags))
    out = mosaic(paths, tmp_path / "m.tif")
    with rasterio.open(out) as ds:
        tags = ds.tags()
    assert tags["method"] == "raster" and tags["stat"] == "max" and "made_on" not in tags
    assert "GEOIMPLICIT_TILE_ID" not in tags and tags["tiles"] == str(len(paths))


def test_mosaic_of_a_run_index_has_the_dsm_s_tags(tmp_path, cli, sample_data):
    city = sample_data / "synthetic_city"
    run = cli("dsm", "--points", city / "points.laz", "--aoi", city / "aoi.geojson", "--resolution", 1,
              "--method", "raster", "--stat", "median", "--tile-size", 40, "-o", tmp_path / "dsm.tif")
    assert run.exit_code == 0, run.output
    again = cli("mosaic", tmp_path / "dsm_work" / "tiles.gpkg", "-o", tmp_path / "again.tif")
    assert again.exit_code == 0, again.output
    with rasterio.open(tmp_path / "dsm.tif") as a, rasterio.open(tmp_path / "again.tif") as b:
        assert b.tags() == a.tags() and b.tags()["stat"] == "median" and "points.laz" in b.tags()["inputs"]
        assert a.units == b.units == ("m",)
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_mosaic_bounds_gdal_block_cache(tmp_path, monkeypatch):
    """GDAL's default block cache (5 % of the RAM) held the whole mosaic: the blocks and the COG's copy run
    with the mosaic's own cache size, and a GDAL_CACHEMAX the user set is left alone."""
    from rasterio._env import get_gdal_config

    import geoimplicit.mosaic as m

    seen, to_cog = [], m._to_cog

    def spy(*a, **kw):
        seen.append(get_gdal_config("GDAL_CACHEMAX"))  # GDAL's own (global) setting, seen by the COG threads
        return to_cog(*a, **kw)

    monkeypatch.setattr(m, "_to_cog", spy)
    tg, paths = _write_tiles(tmp_path, lambda xx, yy: 0 * xx + 7.0)
    mosaic(paths, tmp_path / "a.tif", grid=tg.grid)
    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    mosaic(paths, tmp_path / "b.tif", grid=tg.grid)
    assert seen[0] == m.CACHE_MB and seen[1] != m.CACHE_MB


def test_a_failed_cog_conversion_leaves_neither_output(tmp_path, monkeypatch):
    """The DSM and its filled mask are converted together: when one fails, neither appears, nor any temporary."""
    import geoimplicit.mosaic as m

    to_cog = m._to_cog

    def fail_on_mask(src, dst, **kw):
        if kw["resampling"] == "NEAREST":
            raise OSError(28, "No space left on device")
        return to_cog(src, dst, **kw)

    monkeypatch.setattr(m, "_to_cog", fail_on_mask)
    tg, paths = _write_tiles(tmp_path, lambda xx, yy: 0 * xx + 7.0)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DiskFullError):
        mosaic(paths, out / "dsm.tif", grid=tg.grid, filled_output=out / "dsm_filled.tif")
    assert sorted(p.name for p in out.iterdir()) == []


def test_tiles_are_written_with_the_fast_codec_and_the_cog_does_not_depend_on_it(tmp_path):
    """A run's tiles are written with ZSTD level 1 (read again soon, 3-4x faster to write than DEFLATE 6); the
    same tiles recompressed with DEFLATE 6 give the same mosaic COG bytes."""
    import rasterio.shutil

    from geoimplicit.io.raster import fast_codec_profile

    tg, paths = _write_tiles(tmp_path, _plane, holes=True)
    with rasterio.open(paths[0]) as ds:
        assert ds.compression.name.lower() == fast_codec_profile()["compress"]
    deflated = []
    for p in paths:
        q = tmp_path / "deflate" / p.name
        q.parent.mkdir(exist_ok=True)
        rasterio.shutil.copy(p, q, driver="GTiff", COMPRESS="DEFLATE", ZLEVEL=6, PREDICTOR=3, TILED="YES")
        deflated.append(q)
    with rasterio.open(deflated[0]) as ds:
        assert ds.compression.name.lower() == "deflate"
    a = mosaic(paths, tmp_path / "a.tif", grid=tg.grid, filled_output=tmp_path / "a_filled.tif")
    b = mosaic(deflated, tmp_path / "b.tif", grid=tg.grid, filled_output=tmp_path / "b_filled.tif")
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a_filled.tif").read_bytes() == (tmp_path / "b_filled.tif").read_bytes()


def _feed_for(tg, paths):
    from geoimplicit.mosaic import TileFeed

    overlap_px = int(round(tg.overlap / tg.grid.resolution))
    return TileFeed([(p, t.bounds, overlap_px) for p, t in zip(paths, tg.tiles)])


def test_a_mosaic_fed_while_its_tiles_are_made_blends_early_and_gives_the_same_bytes(tmp_path, monkeypatch):
    """Tiles announced one by one (an empty one without a file): blocks are blended before the last tile is
    finished, and the COGs are the batch mosaic's bytes."""
    import threading

    import geoimplicit.mosaic as m

    tg, paths = _write_tiles(tmp_path, _plane, holes=True, size=(140, 300), tile_size=40)  # 3 rows of blocks
    written = [p.exists() for p in paths]
    batch = mosaic([p for p, w in zip(paths, written) if w], tmp_path / "batch.tif", grid=tg.grid,
                   filled_output=tmp_path / "batch_filled.tif", block_px=256)
    blended, call = threading.Event(), m._BlockBlender.__call__

    def spy(self, block):
        blended.set()
        return call(self, block)

    monkeypatch.setattr(m._BlockBlender, "__call__", spy)
    feed = _feed_for(tg, paths)
    errors = []
    worker = threading.Thread(target=lambda: errors.extend(_try(lambda: mosaic(
        [], tmp_path / "fed.tif", grid=tg.grid, filled_output=tmp_path / "fed_filled.tif", block_px=256, feed=feed))))
    worker.start()
    for p, w in list(zip(paths, written))[:-1]:
        feed.finished(p, w)
    assert blended.wait(30), "no block was blended before the last tile was finished"
    feed.finished(paths[-1], written[-1])
    worker.join(60)
    assert not errors
    assert (tmp_path / "fed.tif").read_bytes() == batch.read_bytes()
    assert (tmp_path / "fed_filled.tif").read_bytes() == (tmp_path / "batch_filled.tif").read_bytes()


def _try(fn):
    try:
        fn()
        return []
    except Exception as exc:  # noqa: BLE001 - handed to the test thread
        return [exc]


def test_an_aborted_feed_stops_the_mosaic_and_leaves_nothing(tmp_path):
    from geoimplicit.mosaic import MosaicAborted

    tg, paths = _write_tiles(tmp_path, _plane)
    feed = _feed_for(tg, paths)
    out = tmp_path / "out"
    out.mkdir()
    feed.finished(paths[0], True)
    feed.abort()
    with pytest.raises(MosaicAborted):
        mosaic([], out / "dsm.tif", grid=tg.grid, filled_output=out / "dsm_filled.tif", feed=feed)
    assert list(out.iterdir()) == []
