"""The parallel run path (routing and raster tiles in worker processes, mosaic in threads) gives the serial
path's bytes."""

from __future__ import annotations

from pathlib import Path

import laspy
import numpy as np
import pytest

from geoimplicit import mosaic as mosaic_module
from geoimplicit.jobs.executors import LocalExecutor
from geoimplicit.io.pointcloud import PointCloudDataset, write_las
from geoimplicit.run import run_dsm
from geoimplicit.tiling import route as route_module
from geoimplicit.tiling.grid import TileGrid
from geoimplicit.tiling.route import load_tile_points, route_points

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "synthetic_city" / "points.laz"


def _dsm(tmp_path, name, workers, threads, monkeypatch, uncompressed_blocks_bytes=2 << 30):
    monkeypatch.setattr(route_module, "route_workers", lambda total, chunk, w=None: workers)
    monkeypatch.setattr(mosaic_module, "mosaic_threads", lambda: threads)
    monkeypatch.setattr(mosaic_module, "cog_threads", lambda: threads)
    monkeypatch.setattr(mosaic_module, "UNCOMPRESSED_BLOCKS_BYTES", uncompressed_blocks_bytes)
    out = tmp_path / f"{name}.tif"
    run_dsm(str(SAMPLE), out, resolution=0.5, method="raster", tile_size=40.0, workdir=tmp_path / f"{name}_work",
            executor=LocalExecutor(processes=workers))
    return out.read_bytes(), out.with_name(f"{name}_filled.tif").read_bytes()


def test_raster_dsm_bytes_do_not_depend_on_workers_or_threads(tmp_path, monkeypatch):
    """Nor on the mosaic's temporary blocks file being compressed (large areas) or not."""
    serial = _dsm(tmp_path, "serial", 1, 1, monkeypatch, uncompressed_blocks_bytes=0)
    parallel = _dsm(tmp_path, "parallel", 2, 4, monkeypatch)
    assert serial[0] == parallel[0] and serial[1] == parallel[1]


def test_routed_points_do_not_depend_on_the_workers(tmp_path):
    """Each tile gets exactly the points inside its context, in the same order with 1 or 3 worker processes."""
    rng = np.random.default_rng(7)
    paths = []
    for k in range(2):
        n = 9_000
        pts = {"x": rng.uniform(0, 60, n) + 500_000 + 30 * k, "y": rng.uniform(0, 60, n) + 5_000_000,
               "z": rng.uniform(100, 120, n)}
        paths.append(write_las(tmp_path / f"p{k}.laz", pts, "EPSG:32632"))
    ds = PointCloudDataset(paths)
    grid = TileGrid.from_aoi(ds.bounds, tile_size=25.0, overlap=3.0, resolution=0.5, crs=ds.crs)
    for workers in (1, 3):
        route_points(ds, grid.tiles, tmp_path / f"route{workers}", chunk_size=2_500, workers=workers)
    las = [laspy.read(p) for p in paths]
    x, y, z = (np.concatenate([np.asarray(getattr(a, k)) for a in las]) for k in "xyz")
    for t in grid.tiles:
        left, bottom, right, top = t.context_bounds
        want = (x >= left) & (x < right) & (y >= bottom) & (y < top)
        one, three = (load_tile_points(tmp_path / f"route{w}", t.id) for w in (1, 3))
        for k in "xyz":
            np.testing.assert_array_equal(one[k], three[k])
        np.testing.assert_array_equal(np.sort(one["z"]), np.sort(z[want]))


def test_an_error_in_a_worker_keeps_its_file_and_hint(tmp_path):
    """A corrupt chunk read in a worker process is re-raised here naming the file and the fix."""
    from geoimplicit.errors import CorruptInputError

    rng = np.random.default_rng(8)
    n = 20_000
    p = write_las(tmp_path / "p.laz", {"x": rng.uniform(0, 50, n) + 5e5, "y": rng.uniform(0, 50, n) + 5e6,
                                       "z": rng.uniform(0, 9, n)}, "EPSG:32632")
    ds = PointCloudDataset(p)
    data = bytearray(p.read_bytes())
    start = len(data) // 2
    data[start:start + 4000] = bytes(4000)  # zeros in the middle of the compressed points
    p.write_bytes(bytes(data))
    grid = TileGrid.from_aoi(ds.bounds, tile_size=25.0, overlap=3.0, resolution=0.5, crs=ds.crs)
    with pytest.raises(CorruptInputError) as err:
        route_points(ds, grid.tiles, tmp_path / "route", chunk_size=5_000, workers=2)
    assert err.value.path == str(p) and err.value.hint


def test_occupancy_framing_ahead_in_threads_gives_the_same_dsm(tmp_path, monkeypatch):
    """The occupancy tiles framed ahead in the prefetch threads give the bytes of tiles framed in turn."""
    from geoimplicit.dsm.occupancy.method import OccupancyMethod

    city = SAMPLE.parent
    kw = dict(resolution=0.5, bbox=(770000.0, 6277000.0, 770064.0, 6277032.0), method="occupancy", tile_size=32.0,
              ortho=[str(city / "ortho.tif")], method_options={"device": "cpu", "true_ortho": True})
    ahead = tmp_path / "ahead.tif"
    run_dsm(str(SAMPLE), ahead, executor=LocalExecutor(threads=4, lookahead=4), **kw)
    monkeypatch.delattr(OccupancyMethod, "prepare_tile")  # run_tile frames each tile itself, in turn
    inline = tmp_path / "inline.tif"
    run_dsm(str(SAMPLE), inline, executor=LocalExecutor(lookahead=0), **kw)
    assert ahead.read_bytes() == inline.read_bytes()


def test_a_failed_tile_stops_the_mosaic_behind_the_tiles_and_leaves_no_output(tmp_path, monkeypatch):
    """The mosaic written behind the tiles is aborted when a tile fails: RunError naming the tile, no DSM, no
    temporary blocks file, no merge thread left; the same command then resumes to the full run's bytes."""
    import threading

    from geoimplicit import run as run_module
    from geoimplicit.errors import RunError

    full = _dsm(tmp_path, "full", 1, 1, monkeypatch)
    compute = run_module.TileJob.compute
    failing = {"id": None}

    def fail_one(self, loaded, progress=None):
        if failing["id"] is None:
            failing["id"] = self.tile_id
        if self.tile_id == failing["id"]:
            raise ValueError("broken tile")
        return compute(self, loaded, progress)

    out, work = tmp_path / "dsm.tif", tmp_path / "dsm_work"
    kw = dict(resolution=0.5, method="raster", tile_size=40.0, workdir=work, executor=LocalExecutor(processes=1))
    monkeypatch.setattr(run_module.TileJob, "compute", fail_one)
    with pytest.raises(RunError, match=r"tile \S+ failed: ValueError: broken tile"):
        run_dsm(str(SAMPLE), out, **kw)
    assert not out.exists() and not out.with_name("dsm_filled.tif").exists()
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
    assert not [t for t in threading.enumerate() if t.name.startswith("merge-")]
    monkeypatch.setattr(run_module.TileJob, "compute", compute)
    run_dsm(str(SAMPLE), out, **kw)
    assert out.read_bytes() == full[0] and out.with_name("dsm_filled.tif").read_bytes() == full[1]
    assert not (work / "merge").exists()  # the blocks files' folder goes once the merge is complete
