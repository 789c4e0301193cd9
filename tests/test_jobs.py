"""The job layer (geoimplicit.jobs): methods and product kinds plugged in by name (also through a real entry
point), the one tile loop (status, failure recording, resume), the run index (one spatial layer), in-tile
progress, the checkpoint read once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoimplicit.jobs.index import read_metadata, read_statuses
from tests.conftest import assert_clean_error, run_cli
from tests.test_dsm_cli import X0, Y0, _scene

FLAT_PLUGIN = '''
import numpy as np

from geoimplicit.dsm.method import TileOutput


class FlatMethod:
    """Every cell that holds a point gets ``height`` (a method of another package)."""

    name = "flat"
    point_fields = ("x", "y", "z")
    needs_ortho = False
    needs_gpu = False

    def __init__(self, height=42.0):
        self.height = float(height)

    def default_tiling(self, resolution, density, metres_per_unit=1.0):
        return 40 * resolution, 2 * resolution

    def prepare(self, inputs):
        return None

    def run_tile(self, tile, points, ortho, state, progress=None):
        g = tile.grid
        left, _, _, top = g.bounds
        col = np.floor((points["x"] - left) / g.resolution).astype(int)
        row = np.floor((top - points["y"]) / g.resolution).astype(int)
        ok = (col >= 0) & (col < g.width) & (row >= 0) & (row < g.height)
        valid = np.zeros(g.shape, bool)
        valid[row[ok], col[ok]] = True
        return TileOutput(np.full(g.shape, self.height, np.float32), valid)

    def tags(self):
        return {"method": "flat"}


class Broken(FlatMethod):
    """A method with a bug: it raises, or returns a tile of the wrong shape."""

    name = "broken"

    def __init__(self, mode="raise"):
        super().__init__()
        self.mode = mode

    def run_tile(self, tile, points, ortho, state, progress=None):
        if self.mode == "raise":
            raise RuntimeError("boom")
        return TileOutput(np.zeros((3, 3), np.float32), np.ones((3, 3), bool))
'''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A tiny installed distribution (a ``*.dist-info`` with ``entry_points.txt``) that offers the DSM method
    ``flat`` through the entry-point group ``geoimplicit.dsm_methods``."""
    site = tmp_path / "site"
    (site / "flat_plugin").mkdir(parents=True)
    (site / "flat_plugin" / "__init__.py").write_text(FLAT_PLUGIN)
    info = site / "flat_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flat-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[geoimplicit.dsm_methods]\nflat = flat_plugin:FlatMethod\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("flat_plugin", None)


def test_method_from_an_entry_point_runs_through_the_cli(plugin_dist, tmp_path, cli):
    from geoimplicit.dsm.method import method_names

    assert "flat" in method_names()
    laz = _scene(tmp_path, n=4_000)
    out = tmp_path / "dsm.tif"
    r = cli("dsm", "--points", laz, "--bbox", X0, Y0, X0 + 60, Y0 + 40, "--resolution", 1, "--method", "flat",
            "-o", out)
    assert r.exit_code == 0, r.output
    with rasterio.open(out) as ds:
        dsm = ds.read(1)
        assert ds.tags()["method"] == "flat"
    # 4,000 points on 2,400 cells: most cells hold one (those are exactly 42), the rest are nodata
    assert set(np.unique(dsm)) <= {np.float32(42.0), np.float32(-9999.0)}
    assert 0.7 < (dsm == 42).mean() < 0.9
    r = cli("dsm", "--points", laz, "--resolution", 1, "--method", "nope", "-o", tmp_path / "x.tif")
    assert_clean_error(r, "nope", "flat")  # the plugin is offered in the hint


def test_an_entry_point_cannot_take_a_built_in_name(plugin_dist):
    from geoimplicit.dsm.method import method_class
    from geoimplicit.dsm.rasterize import RasterMethod

    info = next(plugin_dist.glob("*.dist-info"))
    (info / "entry_points.txt").write_text("[geoimplicit.dsm_methods]\nraster = flat_plugin:FlatMethod\n")
    assert method_class("raster") is RasterMethod


# ------------------------------------------------------------------------------------------ a new product kind
@dataclass(frozen=True)
class CountProduct:
    """A product kind of its own: one JSON file per tile (its point count), merged into their sum."""

    kind: str = "count"

    def files(self, workdir, tile_id):
        return [Path(workdir) / "counts" / f"{tile_id}.json"]

    def write(self, workdir, tile, data, tags):
        from geoimplicit.outputs import atomic_output

        path = self.files(workdir, tile.id)[0]
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"count": int(data)}))
        return [path]

    def finished(self, workdir, tile_id):
        return self.files(workdir, tile_id)[0].exists()

    def merge(self, workdir, tile_ids, outputs, *, tilegrid, aoi=None, tags=None, overwrite=False,
              progress=None, cancel=None):
        total = sum(json.loads(self.files(workdir, t)[0].read_text())["count"] for t in tile_ids)
        outputs["total"].write_text(json.dumps({"total": total}))
        return {"total": outputs["total"]}

    def to_dict(self):
        return {"kind": self.kind}

    @classmethod
    def from_dict(cls, d):
        return cls()


@dataclass
class CountJob:
    """Counts the cells of its tile whose column index is odd; tile r0000_c0001 fails while ``fail`` is set."""

    tile: object
    workdir: str
    fail: bool = False
    product: CountProduct = CountProduct()

    @property
    def tile_id(self):
        return self.tile.id

    def load(self):
        return self.tile.grid.shape

    def compute(self, loaded, progress=None):
        from geoimplicit.jobs.loop import TileOutcome

        if self.fail and self.tile_id == "r0000_c0001":
            raise ZeroDivisionError("a bug in the job")
        rows, cols = loaded
        if self.tile.col == 2:
            return TileOutcome(None, message="nothing here")
        return TileOutcome(rows * (cols // 2))


def test_a_new_product_kind_plugs_into_the_loop(tmp_path):
    from geoimplicit.errors import RunError
    from geoimplicit.jobs.index import open_run_index
    from geoimplicit.jobs.loop import finished_tiles, run_jobs, unfinished
    from geoimplicit.jobs.products import product_from_dict, register_product_kind
    from geoimplicit.tiling.grid import TileGrid

    register_product_kind("count", CountProduct)
    tg = TileGrid.from_aoi((0, 0, 30, 10), tile_size=10, overlap=1, resolution=1, crs="EPSG:2154")
    kind = CountProduct()
    statuses = open_run_index(tmp_path, tg, "key-1", metadata={"product": kind.to_dict()})
    assert product_from_dict(read_metadata(tmp_path / "tiles.gpkg")["product"]) == kind
    seen = []
    jobs = [CountJob(t, str(tmp_path), fail=True) for t in unfinished(tmp_path, tg.tiles, statuses, kind)]
    with pytest.raises(RunError, match=r"r0000_c0001 failed: ZeroDivisionError: a bug in the job"):
        run_jobs(jobs, total=3, progress=lambda d, t, s="", m="": seen.append((d, m)))
    st = read_statuses(tmp_path / "tiles.gpkg")
    assert st == {"r0000_c0000": "done", "r0000_c0001": "failed", "r0000_c0002": "pending"}
    with pytest.raises(RunError, match="2 of 3 tiles are not finished"):
        finished_tiles(tmp_path, tg.tiles, kind)
    # the re-run does only the unfinished tiles; the empty one writes nothing
    todo = unfinished(tmp_path, tg.tiles, open_run_index(tmp_path, tg, "key-1"), kind)
    assert [t.id for t in todo] == ["r0000_c0001", "r0000_c0002"]
    results = run_jobs([CountJob(t, str(tmp_path)) for t in todo], total=3)
    assert [(r.tile_id, r.status) for r in results] == [("r0000_c0001", "done"), ("r0000_c0002", "empty")]
    done = finished_tiles(tmp_path, tg.tiles, kind)
    assert done == ["r0000_c0000", "r0000_c0001"] and not (tmp_path / "counts" / "r0000_c0002.json").exists()
    kind.merge(tmp_path, done, {"total": tmp_path / "total.json"}, tilegrid=tg)
    # 12 x 12 cells per tile (10 + 2 x 1 overlap), 6 odd columns each
    assert json.loads((tmp_path / "total.json").read_text()) == {"total": 2 * 12 * 6}
    # a product file lost after its tile was done: the tile runs again
    (tmp_path / "counts" / "r0000_c0000.json").unlink()
    again = unfinished(tmp_path, tg.tiles, read_statuses(tmp_path / "tiles.gpkg"), kind)
    assert [t.id for t in again] == ["r0000_c0000"]


# ------------------------------------------------------------------------------------------------ the run index
def test_run_index_is_one_spatial_layer_with_its_metadata(tmp_path, cli):
    import pyogrio

    laz = _scene(tmp_path, n=4_000)
    r = cli("dsm", "--points", laz, "--resolution", 1, "--method", "raster", "--tile-size", 30,
            "-o", tmp_path / "dsm.tif")
    assert r.exit_code == 0, r.output
    index = tmp_path / "dsm_work" / "tiles.gpkg"
    assert [name for name, _ in pyogrio.list_layers(index)] == ["tiles"]
    # GDAL reads the run's metadata as the layer's own (what QGIS shows in its properties)
    gdal_meta = pyogrio.read_info(index, layer="tiles")["layer_metadata"]
    ours = read_metadata(index)
    assert json.loads(gdal_meta["run_key"]) == ours["run_key"] and len(ours["run_key"]) == 16
    assert ours["product"]["kind"] == "raster" and ours["tile_size"] == 30
    # a re-run of the same command resumes from it: nothing is computed again
    r = run_cli("--progress", "json", "dsm", "--points", laz, "--resolution", 1, "--method", "raster",
                "--tile-size", 30, "-o", tmp_path / "dsm.tif", "--overwrite")
    assert r.exit_code == 0 and '"stage": "tiles"' not in r.stdout


def test_index_of_an_older_version_is_still_read(tmp_path):
    """Indexes written before the metadata moved kept it in an attribute table ``tiling``."""
    import sqlite3

    from geoimplicit.jobs.index import read_index
    from geoimplicit.tiling.grid import TileGrid

    tg = TileGrid.from_aoi((0, 0, 64, 32), tile_size=32, overlap=4, resolution=1, crs="EPSG:2154")
    path = tg.write_index(tmp_path / "tiles.gpkg")
    con = sqlite3.connect(path)
    with con:
        con.execute("DELETE FROM gpkg_metadata_reference")
        con.execute("CREATE TABLE tiling (key TEXT PRIMARY KEY, value TEXT)")
        con.executemany("INSERT INTO tiling VALUES (?, ?)", [(k, json.dumps(v)) for k, v in tg.metadata().items()])
    con.close()
    back = read_index(path)
    assert back.grid == tg.grid and back.tiles == tg.tiles


QGIS_SUBLAYERS = """
import os, sys
from qgis.core import QgsApplication, QgsProviderRegistry
app = QgsApplication([], False)
app.initQgis()
print([s.name() for s in QgsProviderRegistry.instance().querySublayers(sys.argv[1])])
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.qgis
def test_qgis_opens_the_index_without_asking_which_layer(tmp_path):
    if shutil.which("/usr/bin/python3") is None or subprocess.run(
            ["/usr/bin/python3", "-c", "import qgis.core"], capture_output=True).returncode != 0:
        pytest.skip("Debian's QGIS (python3-qgis) is not installed")
    from geoimplicit.tiling.grid import TileGrid

    tg = TileGrid.from_aoi((0, 0, 64, 32), tile_size=32, overlap=4, resolution=1, crs="EPSG:2154")
    path = tg.write_index(tmp_path / "tiles.gpkg", metadata={"run_key": "abc"})
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(["/usr/bin/python3", "-c", QGIS_SUBLAYERS, str(path)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.stdout.strip().splitlines()[-1] == "['tiles']", out.stdout + out.stderr


# -------------------------------------------------------------------------------- progress, checkpoint reads
def test_occupancy_reports_progress_within_a_tile(tmp_path):
    """One tile: the bar moves before the tile is done (today's run reported 0 then 1)."""
    laz = _scene(tmp_path, n=8_000)
    r = run_cli("--progress", "json", "dsm", "--points", laz, "--bbox", X0, Y0, X0 + 40, Y0 + 20, "--resolution",
                0.5, "--method", "occupancy", "--device", "cpu", "-o", tmp_path / "dsm.tif")
    assert r.exit_code == 0, r.output
    tiles = [e for e in map(json.loads, r.stdout.splitlines()) if e.get("stage") == "tiles"]
    assert tiles[-1]["done"] == 1 and tiles[-1]["total"] == 1
    within = [e["done"] for e in tiles if 0 < e["done"] < 1]
    assert len(within) >= 3 and within == sorted(within)


def test_checkpoint_is_read_once_per_run(tmp_path, cli, monkeypatch):
    import geoimplicit.dsm.occupancy.checkpoint as checkpoint

    reads = []
    real = checkpoint.load_checkpoint

    def counting(*args, **kwargs):
        reads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint", counting)
    laz = _scene(tmp_path, n=4_000)
    r = cli("dsm", "--points", laz, "--bbox", X0, Y0, X0 + 40, Y0 + 40, "--resolution", 1, "--tile-size", 20,
            "--method", "occupancy", "--device", "cpu", "-o", tmp_path / "dsm.tif")
    assert r.exit_code == 0, r.output
    assert len(reads) == 1  # four tiles, one read (it was four for any run)


# ------------------------------------------------------------------------------------- errors from the run
@pytest.mark.parametrize("mode", ["raise", "shape"])
def test_errors_inside_the_run_are_not_internal_errors(plugin_dist, tmp_path, cli, monkeypatch, mode):
    from geoimplicit.dsm.method import METHODS

    monkeypatch.setitem(METHODS._registered, "broken", "flat_plugin:Broken")  # register_method, undone after
    if mode == "shape":
        from geoimplicit.run import run_dsm

        with pytest.raises(Exception) as info:
            run_dsm(_scene(tmp_path, n=2_000), tmp_path / "d.tif", resolution=1, method="broken",
                    method_options={"mode": "shape"})
        assert type(info.value).__name__ == "RunError" and "tile grid" in str(info.value)
        return
    r = cli("dsm", "--points", _scene(tmp_path, n=2_000), "--resolution", 1, "--method", "broken",
            "-o", tmp_path / "dsm.tif")
    assert_clean_error(r, "r0000_c0000 failed: RuntimeError: boom", "re-run", code=1)
    assert "internal error" not in r.stderr
    st = read_statuses(tmp_path / "dsm_work" / "tiles.gpkg")
    assert st["r0000_c0000"] == "failed"


# ------------------------------------------------------------------------------------------------ dask keys
@pytest.mark.dask
def test_dask_task_keys_are_tile_ids():
    from geoimplicit.jobs.executors import DaskExecutor

    @dataclass
    class Job:
        tile_id: str

    ex = DaskExecutor(n_workers=1)
    try:
        keys = dict((job.tile_id, key) for job, key in ex.map(_current_task, [Job("r0001_c0002"), Job("r0003_c0004")]))
    finally:
        ex.close()
    assert keys["r0001_c0002"].startswith("tile-r0001_c0002-") and keys["r0003_c0004"].startswith("tile-r0003_c0004-")


def _current_task(job):
    from distributed import get_worker

    return get_worker().get_current_task()


def test_no_second_tiled_loop_module():
    """The executors live in the job layer; the old module only re-exports them."""
    import geoimplicit.executors as old
    import geoimplicit.jobs.executors as new

    assert old.DaskExecutor is new.DaskExecutor and old.make_executor is new.make_executor
    assert not hasattr(old, "run_all") and not hasattr(new, "run_all")
    src = Path(old.__file__).read_text()
    assert len(textwrap.dedent(src).splitlines()) < 10
