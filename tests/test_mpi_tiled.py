"""Tiled geo-MPI fit (`geoimplicit nvs fit --aoi`): view selection, crops, multi-band mosaic, the run (grid, CRS,
resume), its height raster through `geoimplicit eval`, bad AOIs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoimplicit.synthetic.views import make_camera
from tests.conftest import assert_clean_error, run_cli

# a 24 x 12 m AOI at the centre of a generated 48 m scene: 2 tiles of 12 m (+1 m overlap) that the views see
ORIGIN = (770000.0, 6277000.0)
AOI = (770012.0, 6277018.0, 770036.0, 6277030.0)
FIT = ["--planes", "6", "--steps", "30", "--tile-size", "12", "--overlap", "1", "--resolution", "0.5",
       "--device", "cpu"]


def _write_aoi(path: Path, bounds, crs="EPSG:2154") -> Path:
    left, bottom, right, top = bounds
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    path.write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}],
    }))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpi_tiled")
    r = run_cli("generate", str(root / "city"), "--views", "--no-points", "--view-size", "64", "--n-views", "8",
                "--size", "48", "--origin", *map(str, ORIGIN))
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="module")
def fitted(scene):
    out = scene / "fit"
    aoi = _write_aoi(scene / "aoi.geojson", AOI)
    r = run_cli("nvs", "fit", "--aoi", str(aoi), "--views", str(scene / "city" / "views"), "-o", str(out), *FIT)
    assert r.exit_code == 0, r.output
    return out


# ------------------------------------------------------------------------------------------------- geometry
def test_view_selection_known_cameras():
    from geoimplicit.mpi.tiled import coverage, crop_window, select_views, sees

    # a nadir camera 100 m above (500, 500), 64 px, 40 deg: it sees 2 * 100 * tan(20) = 72.8 m at z = 0
    nadir = make_camera((500.0, 500.0, 100.0), (500.0, 500.0, 0.0), size=64, fov_deg=40.0)
    # a camera looking away (up): sees nothing; one over another place: sees other tiles only
    up = make_camera((500.0, 500.0, 100.0), (500.0, 500.0, 200.0), size=64, fov_deg=40.0)
    away = make_camera((900.0, 500.0, 100.0), (900.0, 500.0, 0.0), size=64, fov_deg=40.0)
    cams = {"000": nadir, "001": up, "002": away}
    heights = (0.0, 10.0)
    centre = (490.0, 490.0, 510.0, 510.0)
    assert select_views(cams, centre, heights) == ["000"]
    assert select_views(cams, centre, heights, 0.5) == ["000"]
    # half of a tile straddling the image's east edge (x = 500 + 32.8 at the top height 10: 90 m away)
    edge = (500 + 36.4 * 0.9 - 10, 490.0, 500 + 36.4 * 0.9 + 10, 510.0)
    assert not sees(nadir, edge, heights)
    assert 0.3 < coverage(nadir, edge, heights) < 0.7
    assert select_views(cams, (890.0, 490.0, 910.0, 510.0), heights) == ["002"]
    assert select_views(cams, (5000.0, 5000.0, 5020.0, 5020.0), heights, 0.1) == []
    # the crop holds the tile's projection, and the cropped camera sees the same points at shifted pixels
    c0, r0, w, h = crop_window(nadir, centre, heights, margin_px=2)
    cropped = nadir.cropped(c0, r0, w, h)
    pts = np.array([[490.0, 490.0, 0.0], [510.0, 510.0, 10.0], [500.0, 500.0, 5.0]])
    uv, _ = nadir.project(pts)
    uv_c, _ = cropped.project(pts)
    np.testing.assert_allclose(uv_c, uv - [c0, r0], atol=1e-9)
    assert (uv_c >= -0.5).all() and (uv_c[:, 0] <= w - 0.5).all() and (uv_c[:, 1] <= h - 0.5).all()
    # tile of 20 m at 90-100 m depth, f = 32 / tan(20) = 87.9 px: 17.6-19.5 px, plus 2 x 2 px of margin
    assert 20 <= w <= 25 and 20 <= h <= 25


def test_mosaic_multiband(tmp_path):
    """RGB tiles blend band by band (uint8, nodata 0), on the grid asked for."""
    from geoimplicit.mosaic import mosaic
    from geoimplicit.tiling.grid import GridSpec

    crs = "EPSG:32632"
    paths = []
    for k, (left, value) in enumerate(((500000.0, (10, 100, 200)), (500008.0, (30, 120, 220)))):
        arr = np.empty((3, 8, 12), np.uint8)
        arr[:] = np.array(value, np.uint8)[:, None, None]
        arr[:, 0, 0] = 0  # nodata in every band
        p = tmp_path / f"t{k}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=12, height=8, count=3, dtype="uint8", nodata=0, crs=crs,
                           transform=Affine(1, 0, left, 0, -1, 4000008.0)) as ds:
            ds.write(arr)
            ds.update_tags(GEOIMPLICIT_TILE_CORE_BOUNDS=json.dumps([left + 2, 4000000.0, left + 10, 4000008.0]),
                           GEOIMPLICIT_TILE_OVERLAP_PX="2")
        paths.append(p)
    grid = GridSpec((500000.0, 4000000.0, 500020.0, 4000008.0), 1.0, crs)
    out = mosaic(paths, tmp_path / "rgb.tif", grid=grid, bands=(1, 2, 3), dtype="uint8", nodata=0)
    with rasterio.open(out) as ds:
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.nodata == 0
        assert ds.bounds == grid.bounds and ds.crs.to_epsg() == 32632
        data = ds.read()
    np.testing.assert_array_equal(data[:, 4, 1], [10, 100, 200])  # only tile 0
    np.testing.assert_array_equal(data[:, 4, 18], [30, 120, 220])  # only tile 1
    assert (data[:, 0, 0] == 0).all()  # nodata of the only tile there
    mid = data[:, 4, 8:12].astype(int)  # the overlap: between the two, each band alike
    assert ((mid >= [[10], [100], [200]]) & (mid <= [[30], [120], [220]])).all()
    np.testing.assert_array_equal(mid[1] - mid[0], 90)
    # single-band default unchanged: band 1 as float32
    out1 = mosaic(paths, tmp_path / "band1.tif", grid=grid)
    with rasterio.open(out1) as ds:
        assert ds.count == 1 and ds.dtypes[0] == "float32"
        assert ds.read(1)[4, 1] == 10


# ------------------------------------------------------------------------------------------------- the run
def test_tiled_fit_outputs(fitted, scene):
    from geoimplicit.tiling.grid import TileGrid, read_statuses

    tg = TileGrid.read_index(fitted / "tiles.gpkg")
    assert [t.id for t in tg.tiles] == ["r0000_c0000", "r0000_c0001"]
    assert set(read_statuses(fitted / "tiles.gpkg").values()) == {"done"}
    data = {}
    for name, count, dtype in (("height.tif", 1, "float32"), ("true_ortho.tif", 4, "uint8")):  # RGB + alpha
        with rasterio.open(fitted / name) as ds:
            assert ds.count == count and ds.dtypes[0] == dtype
            assert ds.bounds == tg.grid.bounds == AOI
            assert ds.transform == tg.grid.transform and ds.res == (0.5, 0.5)
            assert ds.crs.to_epsg() == 2154
            data[name] = ds.read()
            interp = ds.colorinterp
    valid = data["height.tif"][0] != -9999
    assert valid.mean() > 0.9
    # the true ortho is transparent exactly where there is no height (both: the render's opacity <= 0.5)
    assert interp[3] == rasterio.enums.ColorInterp.alpha
    np.testing.assert_array_equal(data["true_ortho.tif"][3], np.where(valid, 255, 0))
    assert (data["true_ortho.tif"][:3, valid] > 0).all() and (data["true_ortho.tif"][:3, ~valid] == 0).all()
    for t in tg.tiles:
        d = fitted / "tiles" / t.id
        for f in ("model.pt", "config.json", "true_ortho.tif", "height.tif", "views/view_split.txt", "views/crs.txt"):
            assert (d / f).exists(), d / f
        with rasterio.open(d / "height.tif") as ds:
            assert ds.bounds == t.bounds  # the tile's grid, overlap included
        assert json.loads((d / "config.json").read_text())["layout"] == "geo"


def test_tiled_fit_eval(fitted, scene, cli):
    """The height raster is a DSM for `geoimplicit eval`. Bound: a height guess that knows only the scene's
    height range (its middle) is off by up to half of it; the fitted planes must place the surface clearly
    better than that (median absolute error under 30 % of the range; measured ~2.5-3.5 m of ~17.8 m with 30
    steps on 6 planes, the single-scene geo fit reaching the same ~2.7 m)."""
    r = cli("eval", str(fitted / "height.tif"), str(scene / "city" / "truth_dsm.tif"), "-o", str(scene / "eval"),
            "--no-figures")
    assert r.exit_code == 0, r.output
    overall = json.loads((scene / "eval" / "report.json").read_text())["overall"]
    with rasterio.open(fitted / "height.tif") as ds:
        lo, hi = json.loads(ds.tags()["height_range"])
    mae = overall["median_abs_error"]
    assert math.isfinite(mae) and overall["count"] > 0.9 * 48 * 24
    assert mae < 0.3 * (hi - lo), (mae, hi - lo)


def test_tiled_fit_resumes(fitted, scene, monkeypatch):
    import geoimplicit.mpi.fit as fit_mod
    from geoimplicit.tiling.grid import read_statuses, update_status

    calls = []
    real = fit_mod.fit_mpi

    def counting(views_dir, model_dir, *a, **k):
        calls.append(Path(model_dir).name)
        return real(views_dir, model_dir, *a, **k)

    monkeypatch.setattr(fit_mod, "fit_mpi", counting)
    models = {p: p.stat().st_mtime_ns for p in (fitted / "tiles").glob("*/model.pt")}
    args = ("nvs", "fit", "--aoi", str(scene / "aoi.geojson"), "--views", str(scene / "city" / "views"),
            "-o", str(fitted), *FIT)
    # a finished run: the mosaics exist, so a plain re-run refuses; --overwrite re-mosaics without refitting
    assert_clean_error(run_cli(*args), "exists")
    r = run_cli(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in models} == models
    # an interrupted run: one tile failed and lost its products -> only that one runs again
    index = fitted / "tiles.gpkg"
    update_status(index, "r0000_c0001", "failed", "killed")
    (fitted / "tiles" / "r0000_c0001" / "height.tif").unlink()
    (fitted / "tiles" / "r0000_c0001" / "model.pt").unlink()
    r = run_cli(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert calls == ["r0000_c0001"]
    assert set(read_statuses(index).values()) == {"done"}
    assert (fitted / "tiles" / "r0000_c0000" / "model.pt").stat().st_mtime_ns == models[
        fitted / "tiles" / "r0000_c0000" / "model.pt"]


def test_bad_aoi(scene, tmp_path, cli):
    views = str(scene / "city" / "views")
    far = _write_aoi(tmp_path / "far.geojson", (780000.0, 6280000.0, 780100.0, 6280100.0))
    assert_clean_error(cli("nvs", "fit", "--aoi", str(far), "--views", views, "-o", str(tmp_path / "o1"), *FIT),
                       "far.geojson", "no view sees")
    assert_clean_error(cli("nvs", "fit", "--aoi", str(tmp_path / "missing.geojson"), "--views", views,
                           "-o", str(tmp_path / "o2"), *FIT), "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    assert_clean_error(cli("nvs", "fit", "--aoi", str(bad), "--views", views, "-o", str(tmp_path / "o3"), *FIT),
                       "bad.geojson")
    assert not (tmp_path / "o1" / "height.tif").exists()


@pytest.mark.slow
def test_tiled_fit_dask_matches_local(scene, tmp_path):
    """The same run on a local Dask cluster of 2 workers gives the local run's mosaics (float noise aside)."""
    aoi = _write_aoi(tmp_path / "aoi.geojson", AOI)
    outs = {}
    for name, extra in (("local", []), ("dask", ["--dask-workers", "2"])):
        r = run_cli("nvs", "fit", "--aoi", str(aoi), "--views", str(scene / "city" / "views"),
                    "-o", str(tmp_path / name), *FIT, *extra)
        assert r.exit_code == 0, r.output
        with rasterio.open(tmp_path / name / "height.tif") as ds:
            outs[name] = ds.read(1)
    np.testing.assert_allclose(outs["dask"], outs["local"], atol=0.01)


def test_readme_example_on_sample_data_fits_every_tile(sample_data, tmp_path, cli):
    """The README's ``nvs fit --aoi`` on ``sample_data/``: 20 near-nadir views each see 25-50 % of a 64 m tile
    (none sees half of most tiles, which left every tile unfitted), so each tile is fitted from every view that
    sees part of it, cropped to that part; the products start at the AOI's corner (0.3 m does not divide
    770000: a snapped grid would start 0.2 m west of it) and the true ortho has an alpha band. A tiny fit
    (2 steps, 4 planes, images at 1/4): the plane-sweep start already places the surface within 30 % of the
    height range (measured 4.2 m of 25.5 m)."""
    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.mpi.tiled import coverage, scene_height_range
    from geoimplicit.tiling.grid import TileGrid

    city = sample_data / "synthetic_city"
    out = tmp_path / "nvs_out"
    r = cli("nvs", "fit", "--aoi", city / "aoi.geojson", "--views", city / "views", "-o", out, "--tile-size", 64.2,
            "--steps", 2, "--planes", 4, "--image-scale", 0.25, "--device", "cpu")
    assert r.exit_code == 0, r.output
    tg = TileGrid.read_index(out / "tiles.gpkg")
    assert len(tg.tiles) == 4
    views = ViewSet.load(city / "views")
    heights = scene_height_range(views)
    for t in tg.tiles:
        seen = [v for v in views.train_ids if coverage(views.cameras[v], t.bounds, heights) >= 0.1]
        assert len(seen) >= 10
        assert json.loads((out / "tiles" / t.id / "tile.json").read_text())["views"] == len(seen)
    with rasterio.open(out / "height.tif") as h, rasterio.open(out / "true_ortho.tif") as o:
        assert h.transform.c == 770000.0 and h.transform.f == 6277128.0 and h.res == (0.3, 0.3)
        assert o.transform == h.transform and o.count == 4
        valid = h.read(1) != -9999
        assert valid.mean() > 0.95 and (o.read(4) == np.where(valid, 255, 0)).all()
    r = cli("eval", out / "height.tif", city / "truth_dsm.tif", "-o", tmp_path / "eval", "--no-figures")
    assert r.exit_code == 0, r.output
    overall = json.loads((tmp_path / "eval" / "report.json").read_text())["overall"]
    assert overall["median_abs_error"] < 0.3 * (heights[1] - heights[0])
