"""Per-class, per-slope-band and per-tile statistics on a synthetic DEM with known classes and errors."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from evaluate_helpers import grid_xy, write_dem
from geoimplicit.evaluate import evaluate_dsm
from geoimplicit.evaluate.align import Grid
from geoimplicit.evaluate.classes import dilate_buildings, slope_band_zones, zones_from_class_raster

T = Affine(0.5, 0, 770500.0, 0, -0.5, 6277600.0)
SHAPE = (60, 80)


@pytest.fixture
def scene(tmp_path):
    """Flat ground at 40 m (error 0), a building block (error +1), a tree patch (error -0.5), LAS codes."""
    classes = np.full(SHAPE, 2, dtype=np.uint8)
    classes[10:30, 10:30] = 6
    classes[40:50, 50:70] = 5
    truth = np.full(SHAPE, 40.0)
    truth[classes == 6] = 52.0
    truth[classes == 5] = 45.0
    error = np.select([classes == 6, classes == 5], [1.0, -0.5], 0.0)
    write_dem(tmp_path / "truth.tif", truth, T)
    write_dem(tmp_path / "pred.tif", truth + error, T)
    with __import__("rasterio").open(tmp_path / "classes.tif", "w", driver="GTiff", width=SHAPE[1], height=SHAPE[0],
                                     count=1, dtype="uint8", crs="EPSG:2154", transform=T, nodata=0) as dst:
        dst.write(classes, 1)
    return tmp_path, classes


def _by(entries, key):
    return {e[key]: e for e in entries}


def test_class_raster(scene):
    tmp, classes = scene
    report = evaluate_dsm(tmp / "pred.tif", tmp / "truth.tif", None, classes=tmp / "classes.tif")
    per = _by(report["per_class"], "class")
    assert set(per) == {"ground", "building", "high vegetation"}
    assert per["building"]["count"] == 400 and per["building"]["bias"] == pytest.approx(1.0)
    assert per["high vegetation"]["count"] == 200 and per["high vegetation"]["bias"] == pytest.approx(-0.5)
    assert per["ground"]["rmse"] == pytest.approx(0.0)
    assert per["building"]["code"] == 6


def test_building_dilation_moves_facade_band(scene):
    tmp, classes = scene
    report = evaluate_dsm(tmp / "pred.tif", tmp / "truth.tif", None, classes=tmp / "classes.tif",
                          dilate_buildings_px=2)
    per = _by(report["per_class"], "class")
    assert per["building"]["count"] == 24 * 24  # 20 x 20 block grown by 2 on each side
    assert per["building"]["dilated_px"] == 2
    assert per["ground"]["count"] == SHAPE[0] * SHAPE[1] - 24 * 24 - 200
    # the band has zero error: building bias = 400 / 576
    assert per["building"]["bias"] == pytest.approx(400 / 576)
    zones = zones_from_class_raster(tmp / "classes.tif", Grid(T, SHAPE, None))
    assert dilate_buildings(zones, 0) is zones


def test_class_polygons(scene):
    import geopandas as gpd
    from shapely.geometry import box

    tmp, _ = scene
    # the building block in map coordinates: cols 10-30, rows 10-30
    b = box(770500 + 5.0, 6277600 - 15.0, 770500 + 15.0, 6277600 - 5.0)
    rest = box(770500, 6277570, 770540, 6277600).difference(b)
    gpd.GeoDataFrame({"kind": ["roof", "other"]}, geometry=[b, rest], crs="EPSG:2154").to_file(tmp / "c.gpkg")
    report = evaluate_dsm(tmp / "pred.tif", tmp / "truth.tif", None, class_polygons=tmp / "c.gpkg",
                          class_field="kind")
    per = _by(report["per_class"], "class")
    assert per["roof"]["count"] == 400 and per["roof"]["bias"] == pytest.approx(1.0)
    assert per["other"]["count"] == SHAPE[0] * SHAPE[1] - 400


def test_class_points_majority(scene):
    from geoimplicit.io.pointcloud import write_las

    tmp, classes = scene
    x, y = grid_xy(T, SHAPE)
    rng = np.random.default_rng(0)
    # three points per cell: two of the true class and one of a wrong class (majority wins); vegetation as 3/4/5
    code = np.where(classes == 5, 4, classes).astype(np.uint8)
    wrong = np.where(classes == 2, 6, 2).astype(np.uint8)
    xs = np.concatenate([x.ravel()] * 3) + rng.uniform(-0.2, 0.2, 3 * x.size)
    ys = np.concatenate([y.ravel()] * 3) + rng.uniform(-0.2, 0.2, 3 * x.size)
    cls = np.concatenate([code.ravel(), code.ravel(), wrong.ravel()])
    write_las(tmp / "pts.laz", {"x": xs, "y": ys, "z": np.full(xs.size, 40.0), "classification": cls}, "EPSG:2154")
    report = evaluate_dsm(tmp / "pred.tif", tmp / "truth.tif", None, class_points=[tmp / "pts.laz"])
    per = _by(report["per_class"], "class")
    assert per["building"]["count"] == 400 and per["building"]["bias"] == pytest.approx(1.0)
    assert per["vegetation"]["count"] == 200 and per["vegetation"]["bias"] == pytest.approx(-0.5)
    assert per["ground"]["count"] == SHAPE[0] * SHAPE[1] - 600


def test_slope_bands_on_two_planes(tmp_path):
    x, y = grid_xy(T, SHAPE)
    xl = x - 770500.0
    kink = 20.0  # metres: column 40
    truth = np.where(xl < kink, 0.03 * xl, 0.03 * kink + 0.30 * (xl - kink)) + 100.0
    error = np.where(xl < kink, 1.0, 2.0)
    write_dem(tmp_path / "truth.tif", truth, T, dtype="float64")
    write_dem(tmp_path / "pred.tif", truth + error, T, dtype="float64")
    report = evaluate_dsm(tmp_path / "pred.tif", tmp_path / "truth.tif", None)
    per = _by(report["per_slope_band"], "band")
    assert list(per) == ["0-5%", "5-10%", "10-25%", "25-45%", "45-90%", ">=90%"]
    assert per["0-5%"]["count"] == 60 * 39 and per["0-5%"]["bias"] == pytest.approx(1.0)
    assert per["25-45%"]["count"] == 60 * 39 and per["25-45%"]["bias"] == pytest.approx(2.0)
    # the two columns beside the kink (x = 20 m), central differences over 1 m: 9.75 % and 23.25 %
    assert per["5-10%"]["count"] == 60 and per["5-10%"]["bias"] == pytest.approx(1.0)
    assert per["10-25%"]["count"] == 60 and per["10-25%"]["bias"] == pytest.approx(2.0)
    assert per["45-90%"]["count"] == 0
    zones = slope_band_zones(truth, Grid(T, SHAPE, None))
    assert sum(z.mask.sum() for z in zones) == truth.size


def test_per_tile(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    x, y = grid_xy(T, SHAPE)
    truth = np.full(SHAPE, 10.0)
    pred = truth + np.where(x < 770520.0, 0.5, -1.0)
    write_dem(tmp_path / "truth.tif", truth, T)
    write_dem(tmp_path / "pred.tif", pred, T)
    tiles = [box(770500, 6277570, 770520, 6277600), box(770520, 6277570, 770540, 6277600)]
    gpd.GeoDataFrame({"id": ["r0000_c0000", "r0000_c0001"]}, geometry=tiles, crs="EPSG:2154").to_file(
        tmp_path / "tiles.gpkg", layer="tiles")
    report = evaluate_dsm(tmp_path / "pred.tif", tmp_path / "truth.tif", None, tiles=tmp_path / "tiles.gpkg")
    per = _by(report["per_tile"], "tile")
    assert per["r0000_c0000"]["bias"] == pytest.approx(0.5) and per["r0000_c0000"]["count"] == 60 * 40
    assert per["r0000_c0001"]["bias"] == pytest.approx(-1.0)


def test_dilate_buildings_with_polygon_classes_names_the_class(scene, cli):
    """Polygon classes are named by their field value: "roof" is the building class only when the user says so
    (before, --dilate-buildings silently did nothing)."""
    import geopandas as gpd
    from shapely.geometry import box

    from conftest import assert_clean_error

    tmp, _ = scene
    b = box(770500 + 5.0, 6277600 - 15.0, 770500 + 15.0, 6277600 - 5.0)  # cols 10-30, rows 10-30
    rest = box(770500, 6277570, 770540, 6277600).difference(b)
    gpd.GeoDataFrame({"kind": ["roof", "other"]}, geometry=[b, rest], crs="EPSG:2154").to_file(tmp / "c.gpkg")
    args = ("eval", tmp / "pred.tif", tmp / "truth.tif", "--class-polygons", tmp / "c.gpkg", "--class-field", "kind",
            "--dilate-buildings", 2, "--no-figures")
    assert_clean_error(cli(*args, "-o", tmp / "r0"), "--dilate-buildings", "'roof', 'other'", "--building-class")
    assert not (tmp / "r0").exists()
    ok = cli(*args, "--building-class", "roof", "-o", tmp / "r1")
    assert ok.exit_code == 0, ok.output
    import json

    per = _by(json.loads((tmp / "r1" / "report.json").read_text())["per_class"], "class")
    assert per["roof"]["count"] == 24 * 24 and per["roof"]["dilated_px"] == 2  # 20 x 20 grown by 2 a side
    assert per["other"]["count"] == SHAPE[0] * SHAPE[1] - 24 * 24
    # a class raster's code works too, and the default (LAS code 6) is unchanged
    report = evaluate_dsm(tmp / "pred.tif", tmp / "truth.tif", None, classes=tmp / "classes.tif",
                          dilate_buildings_px=1, building_class="5")
    assert _by(report["per_class"], "class")["high vegetation"]["count"] == 12 * 22
