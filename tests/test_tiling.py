"""Grids, the tile grid over an AOI, the GeoPackage tile index and seam weights."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from geoimplicit.errors import AOIError, InputError
from geoimplicit.tiling.blend import feather_weights, ramp
from geoimplicit.tiling.grid import GridSpec, TileGrid, read_statuses, update_status


def test_gridspec_snaps_outwards_to_the_resolution():
    g = GridSpec.from_bounds((770000.3, 6277000.1, 770010.2, 6277005.6), 0.5, "EPSG:2154")
    assert g.bounds == (770000.0, 6277000.0, 770010.5, 6277006.0)
    assert g.shape == (12, 21)
    t = g.transform
    assert (t.a, t.e, t.c, t.f) == (0.5, -0.5, 770000.0, 6277006.0)


def test_gridspec_exact_bbox_keeps_the_origin():
    g = GridSpec.from_bounds((770549.75, 6277550.25, 770599.75, 6277600.25), 0.5, "EPSG:2154", snap=False)
    assert g.bounds == (770549.75, 6277550.25, 770599.75, 6277600.25)
    assert g.shape == (100, 100)


def test_gridspec_window_and_subgrid_round_trip():
    g = GridSpec.from_bounds((0, 0, 100, 50), 0.5, "EPSG:32632")
    w = g.window((10, 20, 30, 40))
    assert (w.col_off, w.row_off, w.width, w.height) == (20, 20, 40, 40)
    assert g.subgrid(w).bounds == (10, 20, 30, 40)
    # windows may reach outside the grid
    w2 = g.window((-5, 45, 5, 55))
    assert (w2.col_off, w2.row_off) == (-10, -10)


def test_invalid_grid_inputs():
    with pytest.raises(InputError):
        GridSpec.from_bounds((0, 0, 10, 10), 0, "EPSG:2154")
    with pytest.raises(AOIError):
        GridSpec.from_bounds((10, 0, 0, 10), 1, "EPSG:2154")


@pytest.mark.parametrize("crs,res", [("EPSG:2154", 0.5), ("EPSG:32632", 0.25), ("EPSG:2994", 1.0)])
def test_tiles_are_windows_of_the_mosaic_grid(crs, res):
    aoi = (500000.3, 4000000.7, 500203.1, 4000151.2)
    tg = TileGrid.from_aoi(aoi, tile_size=64, overlap=8, resolution=res, crs=crs)
    g = tg.grid
    rows, cols = g.shape
    ts_px = int(round(64 / res))
    assert len(tg.tiles) == int(np.ceil(rows / ts_px) * np.ceil(cols / ts_px))
    cores = []
    for t in tg.tiles:
        assert t.grid.is_aligned_with(g)
        w = g.window(t.bounds)
        # the window maps exactly back onto the tile's bounds (whole pixels)
        assert g.subgrid(w).bounds == pytest.approx(t.bounds, abs=1e-6)
        assert t.grid.shape == (w.height, w.width)
        assert t.core_bounds[0] - t.bounds[0] == pytest.approx(8 if res != 0.25 else 8)
        cores.append(shapely.box(*t.core_bounds))
    # the cores cover the grid without overlapping each other
    union = shapely.union_all(cores)
    assert union.contains(shapely.box(*g.bounds))
    assert sum(c.area for c in cores) == pytest.approx(union.area)


def test_only_tiles_touching_the_aoi():
    tri = shapely.Polygon([(0, 0), (256, 0), (0, 256)])
    tg = TileGrid.from_aoi(tri, tile_size=64, overlap=4, resolution=1.0, crs="EPSG:2154")
    ids = {t.id for t in tg.tiles}
    # 4 x 4 lattice over the bbox, row 0 at the top: the triangle (x + y < 256) covers tiles with col <= row
    assert ids == {f"r{r:04d}_c{c:04d}" for r in range(4) for c in range(4) if c <= r}
    for t in tg.tiles:
        assert tri.intersection(shapely.box(*t.core_bounds)).area > 0


def test_overlap_larger_than_tile_is_refused():
    with pytest.raises(InputError):
        TileGrid.from_aoi((0, 0, 100, 100), tile_size=10, overlap=20, resolution=1, crs="EPSG:2154")


def test_tile_index_round_trip_and_status(tmp_path):
    import geopandas

    tg = TileGrid.from_aoi((770000, 6277000, 770200, 6277100), tile_size=64, overlap=8, resolution=0.5,
                           crs="EPSG:2154")
    path = tg.write_index(tmp_path / "tiles.gpkg")
    gdf = geopandas.read_file(path, layer="tiles")
    assert list(gdf["id"]) == [t.id for t in tg.tiles]
    assert set(gdf["status"]) == {"pending"}
    assert gdf.crs.to_epsg() == 2154
    assert gdf.geometry.iloc[0].bounds == tg.tiles[0].core_bounds
    for col in ("left", "bottom", "right", "top", "row", "col"):
        assert col in gdf.columns
    update_status(path, tg.tiles[1].id, "done")
    st = read_statuses(path)
    assert st[tg.tiles[1].id] == "done" and st[tg.tiles[0].id] == "pending"
    # GDAL still reads it after the sqlite update (R-tree triggers ran)
    gdf2 = geopandas.read_file(path, layer="tiles", bbox=tg.tiles[1].core_bounds)
    assert tg.tiles[1].id in set(gdf2["id"])
    back = TileGrid.read_index(path)
    assert back.grid == tg.grid and back.tiles == tg.tiles
    assert back.tile_size == tg.tile_size and back.overlap == tg.overlap


def test_tile_index_is_not_overwritten(tmp_path):
    from geoimplicit.errors import OutputExistsError

    tg = TileGrid.from_aoi((0, 0, 64, 64), tile_size=32, overlap=4, resolution=1, crs="EPSG:2154")
    tg.write_index(tmp_path / "t.gpkg")
    with pytest.raises(OutputExistsError):
        tg.write_index(tmp_path / "t.gpkg")
    tg.write_index(tmp_path / "t.gpkg", overwrite=True)


def test_feather_weights_sum_to_one_across_an_overlap():
    ov, core = 4, 16  # overlap and core in pixels
    n = core + 2 * ov
    w = ramp(n, 2 * ov)
    total = np.zeros(5 * core + 2 * ov)
    for k in range(5):  # five tiles in a row, tile k's first pixel at k * core
        total[k * core: k * core + n] += w
    # away from the two outer ends the weights are a partition of unity
    assert np.allclose(total[2 * ov: -2 * ov], 1.0)
    fw = feather_weights((n, n), 2 * ov)
    assert fw.min() > 0 and fw.max() == 1.0


def test_index_without_pyogrio_reads_like_pyogrios(tmp_path):
    """The sqlite3 fallback (for GPU nodes without pyogrio) writes a GeoPackage that GDAL reads the same."""
    import geopandas as gpd
    import pyproj

    from geoimplicit.tiling import grid as grid_module
    from geoimplicit.tiling.grid import TileGrid, read_statuses, update_status

    tg = TileGrid.from_aoi((770_000.0, 6_277_000.0, 770_100.0, 6_277_050.0), tile_size=32.0, overlap=4.0,
                           resolution=0.5, crs="EPSG:2154")
    normal = tg.write_index(tmp_path / "normal.gpkg", "pending")
    cols = {"id": [t.id for t in tg.tiles], "row": np.array([t.row for t in tg.tiles], np.int32),
            "status": ["pending"] * len(tg.tiles), "message": [""] * len(tg.tiles)}
    grid_module._write_gpkg_layer(tmp_path / "fallback.gpkg", "tiles", [t.core_bounds for t in tg.tiles], cols,
                                  tg.grid.crs)
    a = gpd.read_file(normal, layer="tiles")
    b = gpd.read_file(tmp_path / "fallback.gpkg", layer="tiles")
    assert pyproj.CRS(b.crs).equals(pyproj.CRS("EPSG:2154"))
    assert list(b["id"]) == list(a["id"]) and list(b["row"]) == list(a["row"])
    assert all(ga.equals(gb) for ga, gb in zip(a.geometry, b.geometry))
    update_status(tmp_path / "fallback.gpkg", tg.tiles[0].id, "done")
    assert read_statuses(tmp_path / "fallback.gpkg")[tg.tiles[0].id] == "done"
