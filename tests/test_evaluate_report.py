"""The report folder: files exist, report.json equals the library's numbers and a numpy recomputation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import assert_clean_error
from evaluate_helpers import grid_xy, smooth_surface, write_dem
from geoimplicit.evaluate import residual_stats

T = Affine(0.5, 0, 770500.0, 0, -0.5, 6277600.0)


def _pair(tmp_path, shape=(80, 90), seed=3):
    rng = np.random.default_rng(seed)
    x, y = grid_xy(T, shape)
    truth = smooth_surface(x - 770500.0, y - 6277600.0)
    pred = truth + rng.normal(0.1, 0.4, shape)
    pred[5:15, 5:15] = np.nan
    truth[-6:, :] = np.nan
    write_dem(tmp_path / "truth.tif", truth, T, dtype="float64")
    write_dem(tmp_path / "pred.tif", pred, T, dtype="float64")
    return pred, truth


def test_report_files_and_numbers(tmp_path, cli):
    pred, truth = _pair(tmp_path)
    out = tmp_path / "report"
    result = cli("eval", tmp_path / "pred.tif", tmp_path / "truth.tif", "-o", out)
    assert result.exit_code == 0, result.output
    for name in ("report.json", "report.csv", "report.html", "residual.tif", "figures/error_map.png",
                 "figures/histogram.png", "figures/cdf.png", "figures/per_slope.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]  # no partial folder left
    report = json.loads((out / "report.json").read_text())
    e = pred - truth
    expected = residual_stats(e)
    for key, value in expected.items():
        assert report["overall"][key] == pytest.approx(value, rel=1e-12), key
    v = e[np.isfinite(e)]
    assert report["overall"]["count"] == v.size
    assert report["overall"]["rmse"] == pytest.approx(np.sqrt(np.mean(v**2)))
    assert report["overlap"]["valid_overlap_fraction"] == pytest.approx(v.size / np.isfinite(truth).sum())
    assert report["units"] == {"horizontal": "metre", "vertical": "metre", "metres_per_unit": 1.0}
    with rasterio.open(out / "residual.tif") as src:
        r = src.read(1, masked=True)
        assert src.nodata == -9999.0 and src.crs.to_epsg() == 2154
        assert np.ma.count(r) == v.size
        assert np.allclose(r.filled(np.nan)[np.isfinite(e)], e[np.isfinite(e)], atol=1e-5)
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert rows[0]["group"] == "overall" and float(rows[0]["nmad"]) == pytest.approx(expected["nmad"])
    assert [r["name"] for r in rows if r["group"] == "per_slope_band"][0] == "0-5%"
    html = (out / "report.html").read_text()
    assert "figures/error_map.png" in html and "NMAD" in html
    # existing folder: refused without --overwrite, replaced with it
    assert_clean_error(cli("eval", tmp_path / "pred.tif", tmp_path / "truth.tif", "-o", out), "--overwrite")
    result = cli("eval", tmp_path / "pred.tif", tmp_path / "truth.tif", "-o", out, "--overwrite", "--no-figures")
    assert result.exit_code == 0, result.output
    assert not (out / "figures" / "error_map.png").exists()


def test_json_progress_stream_names_outputs(tmp_path, cli):
    _pair(tmp_path)
    result = cli("--progress", "json", "eval", tmp_path / "pred.tif", tmp_path / "truth.tif", "-o",
                 tmp_path / "r", "--no-figures")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["type"] == "result" and lines[-1]["outputs"]["json"].endswith("report.json")


def test_conflicting_class_sources_is_clean_error(tmp_path, cli):
    _pair(tmp_path)
    result = cli("eval", tmp_path / "pred.tif", tmp_path / "truth.tif", "-o", tmp_path / "r", "--classes",
                 tmp_path / "truth.tif", "--class-polygons", tmp_path / "x.gpkg", "--class-field", "k")
    assert_clean_error(result, "only one class source")
    result = cli("eval", tmp_path / "pred.tif", tmp_path / "truth.tif", "-o", tmp_path / "r",
                 "--class-polygons", tmp_path / "x.gpkg")
    assert_clean_error(result, "--class-field")


@pytest.mark.shared
def test_ign_dsm_against_itself_shifted_by_a_constant(shared_data, tmp_path, cli):
    truth = shared_data / "ign_montpellier" / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif"
    with rasterio.open(truth) as src:
        data = src.read(1, masked=True)
        profile = src.profile
    offset = 0.37
    shifted = (data + offset).filled(profile["nodata"]).astype("float32")
    with rasterio.open(tmp_path / "pred.tif", "w", **profile) as dst:
        dst.write(shifted, 1)
    result = cli("eval", tmp_path / "pred.tif", truth, "-o", tmp_path / "rep", "--no-figures")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    o = report["overall"]
    assert o["count"] == np.ma.count(data)
    assert o["bias"] == pytest.approx(offset, abs=1e-4)
    assert o["median"] == pytest.approx(offset, abs=1e-4)
    assert o["nmad"] < 1e-4 and o["std"] < 1e-4
    assert o["within_0.5"] == 1.0 and o["within_1"] == 1.0
    assert report["overlap"]["valid_overlap_fraction"] == 1.0


@pytest.mark.shared
def test_ign_max_binned_lidar_against_ign_dsm_per_las_class(shared_data, tmp_path, cli):
    """A plain numpy max-per-cell DSM of the LiDAR tile vs IGN's own DSM: median residual about 0.1 m."""
    import laspy

    d = shared_data / "ign_montpellier"
    truth = d / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif"
    laz = d / "test_data_77055_627760_LA93_IGN69.laz"
    las = laspy.read(laz)
    with rasterio.open(truth) as src:
        t, shape = src.transform, src.shape
    keep = ~np.isin(np.asarray(las.classification), [7, 18])  # noise
    col = np.floor((np.asarray(las.x) - t.c) / t.a).astype(int)
    row = np.floor((np.asarray(las.y) - t.f) / t.e).astype(int)
    ok = keep & (col >= 0) & (col < shape[1]) & (row >= 0) & (row < shape[0])
    dsm = np.full(shape, -np.inf)
    np.maximum.at(dsm, (row[ok], col[ok]), np.asarray(las.z)[ok])
    dsm[~np.isfinite(dsm)] = np.nan
    write_dem(tmp_path / "maxdsm.tif", dsm, t)
    result = cli("eval", tmp_path / "maxdsm.tif", truth, "-o", tmp_path / "rep", "--class-points", laz,
                 "--dilate-buildings", "2")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["overlap"]["valid_overlap_fraction"] > 0.99
    assert 0.0 < report["overall"]["median"] < 0.2  # measured 0.093 m
    per = {e["class"]: e for e in report["per_class"]}
    assert set(per) == {"ground", "building", "vegetation"}
    assert abs(per["ground"]["median"]) < 0.1 and per["ground"]["nmad"] < 0.1  # measured 0.025 / 0.03 m
    assert per["vegetation"]["nmad"] > per["ground"]["nmad"]
    assert (tmp_path / "rep" / "figures" / "per_class.png").exists()


@pytest.mark.parametrize("crs,unit", [("EPSG:2154", "m"), ("EPSG:2994", "ft")])
def test_residual_is_a_cog_with_the_height_unit(tmp_path, cli, crs, unit):
    shape = (300, 300)  # more than one 256-pixel block: a COG has overviews and tiles
    x, y = grid_xy(T, shape)
    truth = smooth_surface(x - 770500.0, y - 6277600.0)
    write_dem(tmp_path / "truth.tif", truth, T, crs=crs)
    write_dem(tmp_path / "pred.tif", truth + 0.25, T, crs=crs)
    out = tmp_path / "report"
    assert cli("eval", tmp_path / "pred.tif", tmp_path / "truth.tif", "-o", out, "--no-figures").exit_code == 0
    with rasterio.open(out / "residual.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.overviews(1) and ds.block_shapes[0] == (256, 256) and ds.units == (unit,)
        assert ds.descriptions == ("residual = prediction - truth",) and ds.nodata == -9999.0
        assert np.allclose(ds.read(1), 0.25, atol=1e-4)
