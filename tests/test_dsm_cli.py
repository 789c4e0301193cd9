"""``geoimplicit dsm / tile / mosaic`` end to end: real LAZ files, tile-size independence, resume, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from geoimplicit.jobs.index import read_statuses
from tests.conftest import assert_clean_error

X0, Y0 = 770000.0, 6277000.0


def _scene(tmp_path, name="scene.laz", crs="EPSG:2154", seed=0, n=40_000):
    """A ground plane with a flat 100 m roof, some noise, written as a real LAZ file."""
    import laspy

    rng = np.random.default_rng(seed)
    x = rng.uniform(X0, X0 + 60, n)
    y = rng.uniform(Y0, Y0 + 40, n)
    z = 40.0 + 0.05 * (x - X0) + rng.normal(0, 0.02, n)
    roof = (x > X0 + 20) & (x < X0 + 40) & (y > Y0 + 10) & (y < Y0 + 30)
    z[roof] = 100.0
    # a hole (no points) 2 m wide in the ground
    keep = ~((x > X0 + 5) & (x < X0 + 7) & (y > Y0 + 5) & (y < Y0 + 7))
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.array([X0, Y0, 0.0])
    header.add_crs(__import__("pyproj").CRS(crs))
    las = laspy.LasData(header)
    las.x, las.y, las.z = x[keep], y[keep], z[keep]
    las.classification = np.where(roof[keep], 6, 2).astype(np.uint8)
    path = tmp_path / name
    las.write(path)
    return path


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.tags(), ds.nodata


def test_dsm_raster_end_to_end(tmp_path, cli):
    laz = _scene(tmp_path)
    out = tmp_path / "dsm.tif"
    r = cli("dsm", "--points", laz, "--bbox", X0, Y0, X0 + 60, Y0 + 40, "--resolution", 0.5, "--method", "raster",
            "-o", out)
    assert r.exit_code == 0, r.output
    a, t, tags, nodata = _read(out)
    assert a.shape == (80, 120) and (t.c, t.f, t.a) == (X0, Y0 + 40, 0.5)
    assert nodata == -9999.0 and a.dtype == np.float32
    assert tags["method"] == "raster" and tags["stat"] == "max" and "scene.laz" in tags["inputs"]
    # the flat roof comes back at 100 m, the ground on its plane, the hole filled
    assert np.all(a[25:55, 45:75] == np.float32(100.0))
    xs = X0 + (np.arange(120) + 0.5) * 0.5
    ground = 40 + 0.05 * (xs - X0)
    assert np.abs(a[70, :30] - ground[:30]).max() < 0.1
    filled, *_ = _read(tmp_path / "dsm_filled.tif")
    assert (filled[66:70, 10:14] == 1).all() and (filled == 1).sum() < 300  # the 2 m hole + random empty cells
    assert np.abs(a[67, 11] - ground[11]) < 0.1
    # a cell at the data's edge may be empty: it opens onto the no-data outside, so it is not filled
    assert (a != nodata).mean() > 0.995 and ((a == nodata) == (filled == 255)).all()
    # the whole run's state is in the tile index
    st = read_statuses(tmp_path / "dsm_work" / "tiles.gpkg")
    assert set(st.values()) == {"done"}
    assert not (tmp_path / "dsm_work" / "points").exists()


def test_result_does_not_depend_on_the_tiling(tmp_path, cli):
    laz = _scene(tmp_path, seed=1)
    ref = None
    for ts, ov in ((8, 6), (25, 8), (200, 8)):
        out = tmp_path / f"dsm_{ts}.tif"
        r = cli("dsm", "--points", laz, "--bbox", X0, Y0, X0 + 60, Y0 + 40, "--resolution", 0.5,
                "--method", "raster", "--tile-size", ts, "--overlap", ov, "-o", out)
        assert r.exit_code == 0, r.output
        a = _read(out)[0]
        if ref is None:
            ref = a
        else:
            assert np.abs(a - ref).max() < 1e-3


def test_resume_runs_only_unfinished_tiles(tmp_path, cli, monkeypatch):
    import geoimplicit.jobs.loop as loop

    laz = _scene(tmp_path, seed=2)
    args = ["dsm", "--points", laz, "--bbox", X0, Y0, X0 + 60, Y0 + 40, "--resolution", 0.5, "--tile-size", 20,
            "--method", "raster", "-o", tmp_path / "dsm.tif"]
    real = loop.execute
    calls = []

    interrupt = [True]

    def flaky(job, *args, **kwargs):
        calls.append(job.tile.id)
        if len(calls) == 3 and interrupt and interrupt.pop():
            raise KeyboardInterrupt  # the run is interrupted on its third tile
        return real(job, *args, **kwargs)

    monkeypatch.setattr(loop, "execute", flaky)
    r = cli(*args)
    assert r.exit_code == 130 and not (tmp_path / "dsm.tif").exists()
    st = read_statuses(tmp_path / "dsm_work" / "tiles.gpkg")
    assert sum(s == "done" for s in st.values()) == 2
    calls.clear()
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert len(calls) == len(st) - 2 and calls[0] == [k for k, s in st.items() if s != "done"][0]
    # same result as a fresh run
    monkeypatch.setattr(loop, "execute", real)
    r = cli(*args[:-2], "--workdir", tmp_path / "w2", "-o", tmp_path / "fresh.tif")
    assert r.exit_code == 0, r.output
    assert np.array_equal(_read(tmp_path / "dsm.tif")[0], _read(tmp_path / "fresh.tif")[0])


def test_empty_tile_stays_nodata(tmp_path, cli):
    laz = _scene(tmp_path, seed=3)
    # the bbox reaches 40 m east of the data: those tiles have no points -> nodata, never invented
    out = tmp_path / "dsm.tif"
    r = cli("dsm", "--points", laz, "--bbox", X0, Y0, X0 + 100, Y0 + 40, "--resolution", 0.5, "--tile-size", 20,
            "--overlap", 4, "--method", "raster", "-o", out)
    assert r.exit_code == 0, r.output
    a, *_ = _read(out)
    assert (a[:, 130:] == -9999).all()  # beyond x0+60 + the fill width
    assert (a[:, :110] != -9999).mean() > 0.99
    st = read_statuses(tmp_path / "dsm_work" / "tiles.gpkg")
    assert "empty" in st.values()


def test_bad_inputs_give_one_line_errors(tmp_path, cli):
    laz = _scene(tmp_path, seed=4)
    # AOI that misses the data
    r = cli("dsm", "--points", laz, "--bbox", X0 + 5000, Y0, X0 + 5100, Y0 + 40, "--resolution", 0.5,
            "-o", tmp_path / "x.tif")
    assert_clean_error(r, "does not overlap")
    assert not (tmp_path / "x.tif").exists()
    # missing file
    r = cli("dsm", "--points", tmp_path / "nope.laz", "--resolution", 0.5, "-o", tmp_path / "x.tif")
    assert_clean_error(r, "nope.laz")
    # truncated LAZ
    bad = tmp_path / "cut.laz"
    bad.write_bytes(laz.read_bytes()[:2000])
    r = cli("dsm", "--points", bad, "--resolution", 0.5, "-o", tmp_path / "x.tif")
    assert r.exit_code == 2 and "Traceback" not in r.output and "cut.laz" in r.stderr
    # unknown method
    r = cli("dsm", "--points", laz, "--resolution", 0.5, "--method", "magic", "-o", tmp_path / "x.tif")
    assert_clean_error(r, "magic")
    # existing output without --overwrite
    (tmp_path / "exists.tif").write_bytes(b"x")
    r = cli("dsm", "--points", laz, "--resolution", 0.5, "-o", tmp_path / "exists.tif")
    assert_clean_error(r, "exists.tif", "--overwrite")
    assert not list(tmp_path.glob("*.partial-*"))


def test_tile_and_mosaic_commands(tmp_path, cli):
    import geopandas

    r = cli("tile", "--bbox", X0, Y0, X0 + 100, Y0 + 50, "--crs", "EPSG:2154", "--tile-size", 32, "--overlap", 4,
            "--resolution", 0.5, "-o", tmp_path / "tiles.gpkg")
    assert r.exit_code == 0, r.output
    gdf = geopandas.read_file(tmp_path / "tiles.gpkg", layer="tiles")
    assert len(gdf) == 8 and set(gdf["status"]) == {"pending"} and gdf.crs.to_epsg() == 2154
    r = cli("tile", "--bbox", X0, Y0, X0 + 100, Y0 + 50, "--resolution", 0.5, "-o", tmp_path / "t2.gpkg")
    assert_clean_error(r, "--crs")
    # mosaic of a run's tile index, clipped to an AOI polygon file
    laz = _scene(tmp_path, seed=5)
    r = cli("dsm", "--points", laz, "--resolution", 0.5, "--method", "raster", "--tile-size", 20, "--keep-points", "-o",
            tmp_path / "dsm.tif")
    assert r.exit_code == 0, r.output
    import shapely

    from geoimplicit.io.vector import write_aoi

    write_aoi(tmp_path / "aoi.geojson", shapely.box(X0 + 10, Y0 + 10, X0 + 30, Y0 + 20), "EPSG:2154")
    r = cli("mosaic", tmp_path / "dsm_work" / "tiles.gpkg", "--aoi", tmp_path / "aoi.geojson",
            "-o", tmp_path / "m.tif")
    assert r.exit_code == 0, r.output
    m, t, *_ = _read(tmp_path / "m.tif")
    full, t2, *_ = _read(tmp_path / "dsm.tif")
    assert t == t2
    valid = m != -9999
    assert valid.sum() == 40 * 20
    assert np.array_equal(m[valid], full[valid])
    r = cli("mosaic", tmp_path / "missing_folder", "-o", tmp_path / "m2.tif")
    assert_clean_error(r, "missing_folder")


@pytest.mark.shared
def test_ign_tile_dsm_against_ign_dsm(shared_data, tmp_path, cli):
    d = shared_data / "ign_montpellier"
    with rasterio.open(d / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif") as src:
        truth = src.read(1)
        b = src.bounds
        truth_t = src.transform
    out = tmp_path / "dsm.tif"
    # all six tiles as input (a folder glob); the bbox of IGN's DSM: the same grid exactly
    r = cli("dsm", "--points", str(d / "*.laz"), "--bbox", b.left, b.bottom, b.right, b.top,
            "--resolution", 0.5, "--method", "raster", "-o", out)
    assert r.exit_code == 0, r.output
    a, t, *_ = _read(out)
    assert t.almost_equals(truth_t) and a.shape == truth.shape
    both = (a != -9999) & (truth != -9999)
    assert both.mean() > 0.99
    e = a[both].astype(np.float64) - truth[both]
    assert abs(np.median(e) - 0.1) < 0.05
    assert np.median(np.abs(e)) < 0.3


def test_cli_statistics_are_the_library_statistics():
    from cli.dsm import STATS as CLI_STATS
    from geoimplicit.dsm.rasterize import STATS

    assert CLI_STATS == STATS


def test_new_weights_at_the_same_path_redo_the_tiles(tmp_path, cli):
    """The resume key covers the model file: replacing the weights (same path) and re-running gives the new
    model's DSM, the one a fresh run with those weights gives, not the tiles of the old one."""
    import shutil

    import torch

    from geoimplicit.dsm.occupancy.checkpoint import DEFAULT_WEIGHTS

    laz = _scene(tmp_path, seed=4, n=8_000)
    weights = tmp_path / "model.pt"
    shutil.copy(DEFAULT_WEIGHTS, weights)
    args = ["dsm", "--points", laz, "--bbox", X0, Y0, X0 + 40, Y0 + 20, "--resolution", 0.5, "--tile-size", 20,
            "--method", "occupancy", "--device", "cpu", "--weights", weights, "--overwrite", "-o", tmp_path / "dsm.tif"]
    assert cli(*args).exit_code == 0
    first, *_ = _read(tmp_path / "dsm.tif")
    ckpt = torch.load(weights, weights_only=True)
    ckpt["model"]["decoder.fc_out.bias"] = ckpt["model"]["decoder.fc_out.bias"] - 4.0  # a lower surface
    torch.save(ckpt, weights)
    r = cli(*args)
    assert r.exit_code == 0, r.output
    again, *_ = _read(tmp_path / "dsm.tif")
    r = cli(*args[:-2], "--workdir", tmp_path / "fresh_work", "-o", tmp_path / "fresh.tif")
    assert r.exit_code == 0, r.output
    fresh, *_ = _read(tmp_path / "fresh.tif")
    ok = (first != -9999) & (fresh != -9999)
    assert ok.mean() > 0.9
    assert np.median(first[ok] - fresh[ok]) > 0.05  # the changed model really gives another DSM
    assert np.array_equal(again, fresh)


def _ortho(tmp_path, seed=0):
    """A textured RGB GeoTIFF (EPSG:2154, 0.5 m) over the scene of :func:`_scene`, the block in its own colour."""
    from affine import Affine

    rng = np.random.default_rng(seed)
    img = rng.integers(40, 120, (3, 80, 120)).astype(np.uint8)
    img[:, 20:60, 40:80] = np.array([200, 60, 100], np.uint8)[:, None, None]  # the roof (x 20-40 m, y 10-30 m)
    path = tmp_path / "ortho.tif"
    with rasterio.open(path, "w", driver="GTiff", width=120, height=80, count=3, dtype="uint8", crs="EPSG:2154",
                       transform=Affine(0.5, 0, X0, 0, -0.5, Y0 + 40)) as ds:
        ds.write(img)
    return path


@pytest.mark.parametrize("flagged", [False, True])
def test_true_ortho_reaches_the_model_and_the_resume_key(tmp_path, cli, flagged):
    """``--true-ortho`` changes the DSM of a model that reads the flag (a re-run in the same work folder redoes
    the tiles: it is the DSM a fresh run gives) and leaves the DSM of a model that does not read it unchanged."""
    from geoimplicit.dsm.occupancy.config import Config, ModelConfig
    from geoimplicit.dsm.occupancy.checkpoint import save_checkpoint
    from geoimplicit.dsm.occupancy.model import OccupancyNet

    import torch

    torch.manual_seed(1)
    cfg = Config()
    cfg.model = ModelConfig(variant="stereo", unet_channels=[8, 16], point_features=8, image_features=4, features=8,
                            decoder_hidden=16, decoder_blocks=2, true_ortho_input=flagged)
    model = OccupancyNet(cfg.model)  # untrained, random features; a hand-set decoder reads them as a height:
    with torch.no_grad():  # logit = relu(-10 (z - prior) + c0) - relu(10 (z - prior) + c1), c from the features
        d = model.decoder
        d.fc_p.weight.zero_(), d.fc_p.bias.zero_(), d.fc_out.weight.zero_(), d.fc_out.bias.zero_()
        d.fc_p.weight[0, 1], d.fc_p.weight[1, 1] = -10.0, 10.0  # input 1 is z minus the prior
        d.fc_out.weight[0, 0], d.fc_out.weight[0, 1] = 1.0, -1.0
    weights = tmp_path / "model.pt"
    save_checkpoint(weights, model, cfg, step=0)
    laz, ortho = _scene(tmp_path, seed=4, n=8_000), _ortho(tmp_path)
    args = ["dsm", "--points", laz, "--ortho", ortho, "--bbox", X0, Y0, X0 + 40, Y0 + 20, "--resolution", 0.5,
            "--tile-size", 20, "--method", "occupancy", "--device", "cpu", "--weights", weights, "--overwrite"]
    assert cli(*args, "-o", tmp_path / "dsm.tif").exit_code == 0
    plain, *_ = _read(tmp_path / "dsm.tif")
    r = cli(*args, "--true-ortho", "-o", tmp_path / "dsm.tif")  # same work folder: resumes where it can
    assert r.exit_code == 0, r.output
    said, *_ = _read(tmp_path / "dsm.tif")
    r = cli(*args, "--true-ortho", "--workdir", tmp_path / "fresh_work", "-o", tmp_path / "fresh.tif")
    assert r.exit_code == 0, r.output
    fresh, *_ = _read(tmp_path / "fresh.tif")
    assert np.array_equal(said, fresh)
    assert (not np.array_equal(said, plain)) == flagged
    r = cli("dsm", "--points", laz, "--resolution", 0.5, "--method", "raster", "--true-ortho", "-o", tmp_path / "r.tif")
    assert r.exit_code == 2 and "Traceback" not in r.output  # a usage error, as click gives them
    assert "--true-ortho" in r.stderr.splitlines()[-1] and "--method occupancy" in r.stderr.splitlines()[-1]
