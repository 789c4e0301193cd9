"""Routing points to tiles: every point reaches exactly the tiles whose bounds hold it, read once."""

from __future__ import annotations

import numpy as np
import pytest

from geoimplicit.io.pointcloud import PointCloudDataset, write_las
from geoimplicit.tiling.grid import TileGrid
from geoimplicit.tiling.route import assign_to_tiles, load_tile_points, route_points


def _brute_force(x, y, tiles):
    pairs = set()
    for t_idx, t in enumerate(tiles):
        left, bottom, right, top = t.bounds
        inside = (x >= left) & (x < right) & (y >= bottom) & (y < top)
        pairs.update((int(i), t_idx) for i in np.flatnonzero(inside))
    return pairs


@pytest.mark.parametrize("overlap", [0.0, 3.0, 8.0])
def test_assignment_equals_brute_force(overlap):
    rng = np.random.default_rng(3)
    x0, y0 = 770_000.0, 6_277_000.0
    # an L-shaped AOI, so that some lattice cells have no tile
    from shapely.geometry import Polygon

    aoi = Polygon([(x0, y0), (x0 + 100, y0), (x0 + 100, y0 + 40), (x0 + 40, y0 + 40), (x0 + 40, y0 + 100),
                   (x0, y0 + 100)])
    grid = TileGrid.from_aoi(aoi, tile_size=20.0, overlap=overlap, resolution=0.5, crs="EPSG:2154")
    x = rng.uniform(x0 - 15, x0 + 115, 20_000)
    y = rng.uniform(y0 - 15, y0 + 115, 20_000)
    # points exactly on tile edges and corners too
    x[:200] = x0 + 20.0 * rng.integers(0, 5, 200)
    y[:200] = y0 + 20.0 * rng.integers(0, 5, 200)
    pid, tid = assign_to_tiles(x, y, grid.tiles)
    got = set(zip(pid.tolist(), tid.tolist()))
    assert len(got) == len(pid), "a point was routed twice to the same tile"
    assert got == _brute_force(x, y, grid.tiles)


def test_route_points_streams_chunks_and_reuses_a_finished_routing(tmp_path):
    rng = np.random.default_rng(4)
    n = 30_000
    pts = {"x": rng.uniform(500_000, 500_090, n), "y": rng.uniform(5_000_000, 5_000_090, n),
           "z": rng.uniform(100, 120, n), "classification": rng.integers(1, 7, n).astype(np.uint8)}
    las = tmp_path / "pts.laz"
    write_las(las, pts, "EPSG:32632")
    ds = PointCloudDataset(las)
    grid = TileGrid.from_aoi(ds.bounds, tile_size=30.0, overlap=4.0, resolution=1.0, crs=ds.crs)
    calls = []
    route_dir = route_points(ds, grid.tiles, tmp_path / "route", fields=("x", "y", "z", "classification"),
                             chunk_size=7_000, progress=lambda d, t, s="", m="": calls.append(d))
    assert len(calls) == 5  # 30 000 points in chunks of 7 000, read once
    x, y = np.round(pts["x"], 2), np.round(pts["y"], 2)  # as stored at the LAS scale
    expected = _brute_force(x, y, grid.tiles)
    for t_idx, tile in enumerate(grid.tiles):
        got = load_tile_points(route_dir, tile.id)
        want = sorted(i for i, t in expected if t == t_idx)
        assert len(got["x"]) == len(want)
        assert set(got) == {"x", "y", "z", "classification"}
        np.testing.assert_allclose(np.sort(got["x"]), np.sort(x[want]), atol=1e-6)
    marker = (route_dir / "routing.json").stat().st_mtime_ns
    route_points(ds, grid.tiles, tmp_path / "route", fields=("x", "y", "z", "classification"), chunk_size=7_000)
    assert (route_dir / "routing.json").stat().st_mtime_ns == marker


def test_a_chunk_read_in_parts_routes_the_same_points_in_the_same_order(tmp_path, monkeypatch):
    """A worker decodes its chunk ``READ_POINTS`` at a time (its memory): each tile's file holds the same points
    in the same order as when the whole chunk was read at once (the methods see the same input)."""
    import geoimplicit.tiling.route as route

    rng = np.random.default_rng(5)
    n = 30_000
    pts = {"x": rng.uniform(500_000, 500_090, n), "y": rng.uniform(5_000_000, 5_000_090, n),
           "z": rng.uniform(100, 120, n)}
    las = tmp_path / "pts.laz"
    write_las(las, pts, "EPSG:32632")
    ds = PointCloudDataset(las)
    grid = TileGrid.from_aoi(ds.bounds, tile_size=30.0, overlap=4.0, resolution=1.0, crs=ds.crs)
    routed = {}
    for read in (n, 1_700):
        monkeypatch.setattr(route, "READ_POINTS", read)
        out = route_points(ds, grid.tiles, tmp_path / f"route_{read}", chunk_size=15_000, workers=1)
        routed[read] = {t.id: load_tile_points(out, t.id) for t in grid.tiles}
    for tile in grid.tiles:
        whole, parts = routed[n][tile.id], routed[1_700][tile.id]
        assert len(whole["x"]) > 0
        for f in ("x", "y", "z"):
            np.testing.assert_array_equal(whole[f], parts[f])


# ------------------------------------------------------------------ routing behind the tiles (issue 21)
def _four_files(tmp_path, n=12_000, side=45.0):
    """Four LAZ files in a 2 x 2 layout (north-west, north-east, south-west, south-east written in a shuffled
    order), each ``side`` metres across."""
    rng = np.random.default_rng(6)
    x0, y0 = 500_000.0, 5_000_000.0
    paths = []
    for name, (i, j) in (("se", (1, 0)), ("nw", (0, 1)), ("sw", (0, 0)), ("ne", (1, 1))):
        pts = {"x": rng.uniform(x0 + i * side, x0 + (i + 1) * side, n),
               "y": rng.uniform(y0 + j * side, y0 + (j + 1) * side, n), "z": rng.uniform(100, 120, n)}
        p = tmp_path / f"{name}.laz"
        write_las(p, pts, "EPSG:32632")
        paths.append(p)
    return paths


def test_routing_behind_the_tiles_tells_each_tile_when_its_files_are_routed(tmp_path):
    from geoimplicit.tiling.route import RoutingBehind, tile_files, top_down_files, wait_routed

    ds = PointCloudDataset(_four_files(tmp_path))
    assert [ds.files[i].path.stem for i in top_down_files(ds)] == ["nw", "ne", "sw", "se"]
    grid = TileGrid.from_aoi(ds.bounds, tile_size=30.0, overlap=4.0, resolution=1.0, crs=ds.crs)
    plain = route_points(ds, grid.tiles, tmp_path / "plain", chunk_size=5_000)
    behind = RoutingBehind(ds, grid.tiles, tmp_path / "behind", fields=("x", "y", "z"), chunk_size=5_000,
                           workers=1)
    for tile in grid.tiles:  # each tile's points, as soon as they are routed: the plain routing's, in order
        wait_routed(tmp_path / "behind", tile.id)
        got, want = load_tile_points(tmp_path / "behind", tile.id), load_tile_points(plain, tile.id)
        for f in "xyz":
            np.testing.assert_array_equal(got[f], want[f])
    behind.join()
    assert (tmp_path / "behind" / "routing.json").exists()
    # told in the order the files finish: a tile only once the last of its files is routed
    rank = {f: r for r, f in enumerate(top_down_files(ds))}
    last = [max(rank[f] for f in files) for files in tile_files(ds, grid.tiles)]
    assert sorted(behind.order) == list(range(len(grid.tiles)))
    told = [last[p] for p in behind.order]
    assert told == sorted(told) and told[0] == 0 and told[-1] == 3


def test_a_run_routing_behind_its_tiles_gives_the_same_dsm_and_its_failure_names_the_file(tmp_path, monkeypatch):
    import rasterio

    import geoimplicit.run as run_module
    import geoimplicit.tiling.route as route
    from geoimplicit.errors import InputError
    from geoimplicit.jobs.executors import LocalExecutor

    paths = _four_files(tmp_path)

    def dsm(name, behind: bool):
        monkeypatch.setattr(run_module, "routes_behind", lambda plan, jobs, executor: behind)
        out = tmp_path / f"{name}.tif"
        run_module.run_dsm(paths, out, resolution=1.0, tile_size=30.0, overlap=4.0, workdir=tmp_path / f"{name}_work",
                           executor=LocalExecutor(processes=1))
        with rasterio.open(out) as ds:
            return ds.read()

    plain = dsm("plain", False)
    np.testing.assert_array_equal(dsm("behind", True), plain)

    real = route._route_piece

    def broken(piece):  # the third file turns out corrupt while the first tiles already run
        if piece[0] == 2:
            raise InputError("corrupt LAZ data", path=str(paths[2]), hint="re-export the file")
        return real(piece)

    monkeypatch.setattr(route, "_route_piece", broken)
    with pytest.raises(InputError, match="corrupt LAZ data") as err:
        dsm("failed", True)
    assert str(paths[2]) in str(err.value.path)
    assert not (tmp_path / "failed.tif").exists() and not route._BEHIND
    monkeypatch.setattr(route, "_route_piece", real)
    np.testing.assert_array_equal(dsm("failed", True), plain)  # the same command resumes
