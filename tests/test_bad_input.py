"""Bad input through the CLI: one ``Error:`` line naming the file, what is wrong and the fix; exit 2; no traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from affine import Affine
from shapely.geometry import box

from conftest import assert_clean_error
from geoimplicit.io.pointcloud import write_las
from geoimplicit.io.raster import write_geotiff
from geoimplicit.io.vector import write_aoi


def _pts(origin, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": origin[0] + rng.random(n) * 50, "y": origin[1] + rng.random(n) * 50, "z": 30 + rng.random(n)}


@pytest.fixture
def l93_laz(tmp_path):
    return write_las(tmp_path / "l93.laz", _pts((770500.0, 6277500.0), n=40000), "EPSG:2154")


def test_missing_file(cli, tmp_path):
    for name in ("missing.laz", "missing.tif", "missing.geojson"):
        assert_clean_error(cli("info", tmp_path / name), name, "not found")
    assert_clean_error(cli("info", str(tmp_path / "*.laz")), "matches no")


def test_truncated_laz_and_las(cli, tmp_path, l93_laz):
    cut = tmp_path / "cut.laz"
    cut.write_bytes(l93_laz.read_bytes()[: l93_laz.stat().st_size // 2])
    assert_clean_error(cli("info", cut), "cut.laz", "truncated", "re-export")
    las = write_las(tmp_path / "p.las", _pts((770500.0, 6277500.0)), "EPSG:2154", point_format=1, version="1.2")
    cut_las = tmp_path / "cut.las"
    cut_las.write_bytes(las.read_bytes()[:-500])
    assert_clean_error(cli("info", cut_las), "cut.las", "truncated")
    junk = tmp_path / "junk.las"
    junk.write_bytes(b"LASF" + b"\x00" * 40)
    assert_clean_error(cli("info", junk), "junk.las", "corrupt")


def test_tiff_that_is_not_a_raster(cli, tmp_path):
    bad = tmp_path / "not_raster.tif"
    bad.write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\xff" * 64)
    assert_clean_error(cli("info", bad), "not_raster.tif", "not a readable raster")
    text = tmp_path / "notes.tif"
    text.write_text("this is a text file with a .tif name\n")
    assert_clean_error(cli("info", text), "notes.tif")


def test_truncated_geotiff(cli, tmp_path):
    rng = np.random.default_rng(0)
    good = write_geotiff(tmp_path / "good.tif", rng.random((600, 600)), Affine(1, 0, 0, 0, -1, 600), "EPSG:2154",
                         overviews=False)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_clean_error(cli("info", cut), "cut.tif")


def test_no_crs_anywhere(cli, tmp_path):
    none = write_las(tmp_path / "nocrs.las", _pts((770500.0, 6277500.0)), None, point_format=1, version="1.2")
    assert cli("info", none).exit_code == 0  # describing is fine: it says "pass --crs"
    assert "pass --crs" in cli("info", none).stdout
    assert_clean_error(cli("info", "--check", none), "nocrs.las", "--crs")
    ok = cli("info", "--check", none, "--crs", "EPSG:2154")
    assert ok.exit_code == 0, ok.output
    # a world-file image without CRS next to a LAS file without CRS
    from PIL import Image

    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "img.wld").write_text("1\n0\n0\n-1\n770500.5\n6277549.5\n")
    assert_clean_error(cli("info", "--check", none, tmp_path / "img.png"), "no CRS", "--crs")


def test_crs_disagree(cli, tmp_path, l93_laz):
    utm = write_las(tmp_path / "utm.laz", _pts((500000.0, 5000000.0)), "EPSG:32632")
    assert_clean_error(cli("info", "--check", l93_laz, utm), "l93.laz", "utm.laz", "EPSG:2154", "EPSG:32632", "--crs")
    # the same data set mixing CRSs within a folder
    assert_clean_error(cli("info", "--check", tmp_path), "--crs")
    assert cli("info", "--check", l93_laz, utm, "--crs", "EPSG:2154").exit_code == 0


def test_geographic_crs(cli, tmp_path):
    geo = write_las(tmp_path / "lonlat.laz", {"x": np.array([3.87, 3.88]), "y": np.array([43.60, 43.61]),
                                               "z": np.array([1.0, 2.0])}, "EPSG:4326", scale=1e-7)
    assert_clean_error(cli("info", "--check", geo), "lonlat.laz", "geographic", "EPSG:32631")
    dem = write_geotiff(tmp_path / "dem_ll.tif", np.ones((10, 10), np.float32),
                        Affine(0.001, 0, 3.87, 0, -0.001, 43.61), "EPSG:4326")
    assert_clean_error(cli("info", "--check", dem), "dem_ll.tif", "projected", "EPSG:32631")
    assert cli("info", "--check", dem, "--crs", "EPSG:32631").exit_code == 0


def test_aoi_misses_the_data(cli, tmp_path, l93_laz):
    far = write_aoi(tmp_path / "far.geojson", box(3.0, 45.0, 3.01, 45.01), "EPSG:4326")
    assert_clean_error(cli("info", l93_laz, "--aoi", far), "far.geojson", "does not overlap")
    assert_clean_error(cli("info", l93_laz, "--bbox", 0, 0, 10, 10), "does not overlap")
    assert_clean_error(cli("info", l93_laz, "--bbox", 10, 10, 0, 0), "inverted")
    near = write_aoi(tmp_path / "near.gpkg", box(770510, 6277510, 770520, 6277520), "EPSG:2154")
    assert cli("info", l93_laz, "--aoi", near).exit_code == 0
    pts = tmp_path / "points.geojson"
    pts.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": {"type": "Point", "coordinates": [3.87, 43.6]}}))
    assert_clean_error(cli("info", l93_laz, "--aoi", pts), "points.geojson", "no polygon")


def test_nan_and_nodata_only_rasters(cli, tmp_path):
    t = Affine(0.5, 0, 770500, 0, -0.5, 6277600)
    nan = write_geotiff(tmp_path / "nan.tif", np.full((20, 20), np.nan), t, "EPSG:2154")  # written as nodata
    assert_clean_error(cli("info", nan), "nan.tif", "only", "nodata")
    import rasterio

    raw = tmp_path / "raw_nan.tif"
    with rasterio.open(raw, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                       crs="EPSG:2154", transform=t) as ds:  # NaN pixels and no nodata value at all
        ds.write(np.full((1, 8, 8), np.nan, np.float32))
    assert_clean_error(cli("info", raw), "raw_nan.tif", "NaN")
    ok = cli("info", "--json", write_geotiff(tmp_path / "half.tif", np.where(np.eye(20) > 0, np.nan, 1.0), t,
                                             "EPSG:2154"))
    assert ok.exit_code == 0 and json.loads(ok.stdout)["valid_fraction"] == pytest.approx(0.95)


def test_verbose_shows_traceback(cli, tmp_path):
    result = cli("-v", "info", tmp_path / "missing.laz")
    assert result.exit_code == 2 and "Traceback" in result.stderr


@pytest.mark.shared
def test_real_files(cli, shared_data):
    autzen = shared_data / "autzen"
    assert_clean_error(cli("info", "--check", autzen / "autzen-thin-srs.las"), "autzen-thin-srs.las", "--crs")
    ok = cli("info", "--json", "--check", autzen / "autzen-thin-srs.las", "--crs", autzen / "autzen-srs.wkt")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["check"]["units"] == "foot"
    assert_clean_error(cli("info", "--check", autzen / "autzen_trim.laz", shared_data / "ign_montpellier"),
                       "autzen_trim.laz", "ign_montpellier", "--crs")
    assert_clean_error(cli("info", "--check", shared_data / "demcompare" / "srtm_ref.tif"), "srtm_ref.tif",
                       "geographic")
    assert_clean_error(cli("info", autzen / "autzen.jpg", "--check"), "autzen.jpg", "--crs")
    # the IGN ortho's CRS has no EPSG code and still agrees with the tiles
    ok = cli("info", "--check", shared_data / "ign_montpellier", shared_data / "ign_montpellier" / "test_data_rgb.tif")
    assert ok.exit_code == 0, ok.output
    assert_clean_error(cli("info", shared_data / "ign_montpellier", "--bbox", 0, 0, 100, 100), "does not overlap")


@pytest.mark.shared
def test_info_real_json(cli, shared_data):
    out = cli("info", "--json", shared_data / "ign_montpellier", shared_data / "autzen" / "autzen_trim.laz",
              shared_data / "autzen" / "autzen.jpg", "--crs", shared_data / "autzen" / "autzen-srs.wkt")
    assert out.exit_code == 0, out.output
    ign, autzen, jpg = json.loads(out.stdout)
    assert ign["point_count"] == 405937 and ign["files"] == 6 and ign["units"] == "metre"
    assert autzen["units"] == "foot" and autzen["z_units"] == "foot" and autzen["point_count"] == 110000
    assert jpg["georeferencing"] == "world file" and jpg["crs_source"].startswith("assumed")
    assert jpg["size"] == [3248, 4385] and jpg["units"] == "foot"


def _dsm_cli_available():
    from cli.main import LazyGroup

    try:
        return LazyGroup._load("dsm") is not None
    except Exception:
        return False


@pytest.mark.skipif(not _dsm_cli_available(), reason="geoimplicit dsm is not installed in this build")
def test_dsm_bad_inputs_leave_no_output(cli, tmp_path, l93_laz):
    out = tmp_path / "out" / "dsm.tif"
    cut = tmp_path / "cut.laz"
    cut.write_bytes(l93_laz.read_bytes()[: l93_laz.stat().st_size // 2])
    utm = write_las(tmp_path / "utm.laz", _pts((500000.0, 5000000.0)), "EPSG:32632")
    cases = [
        (("--points", tmp_path / "missing.laz"), ("missing.laz",)),
        (("--points", cut), ("cut.laz",)),
        (("--points", l93_laz, "--points", utm), ("--crs",)),
        (("--points", l93_laz, "--bbox", 0, 0, 10, 10), ("overlap",)),
    ]
    for args, fragments in cases:
        result = cli("dsm", *args, "--resolution", 1.0, "-o", out)
        assert_clean_error(result, *fragments)
        assert not out.exists(), args


# ------------------------------------------------------------------ issue 16: the sweep's cases, one test each
_BBOX = ("--bbox", 770500, 6277500, 770650, 6277600, "--crs", "EPSG:2154")


def test_tile_refuses_sizes_that_cannot_fit_before_any_work(cli, tmp_path):
    out = tmp_path / "t.gpkg"
    # 5-pixel tiles: a MemoryError after 32 s before
    assert_clean_error(cli("tile", *_BBOX, "--tile-size", 0.05, "--resolution", 0.01, "-o", out),
                       "5 pixels", "at least 16", "--tile-size 0.16")
    # a tile smaller than a pixel: a 21 MB index of 1-pixel tiles before
    assert_clean_error(cli("tile", *_BBOX, "--tile-size", 0.1, "--overlap", 0, "--resolution", 0.5, "-o", out),
                       "0.2 pixels", "--tile-size 8")
    big = ("--bbox", 700000, 6200000, 800000, 6300000, "--crs", "EPSG:2154")
    assert_clean_error(cli("tile", *big, "--tile-size", 8, "--overlap", 0, "--resolution", 0.5, "-o", out),
                       "156,250,000 tiles", "--tile-size")
    assert not out.exists()
    ok = cli("tile", *_BBOX, "--tile-size", 8, "--overlap", 0, "--resolution", 0.5, "-o", out)
    assert ok.exit_code == 0 and "count: 247" in ok.stdout, ok.output  # 19 x 13 tiles of 16 pixels


def test_tile_refuses_a_wrong_extension(cli, tmp_path):
    result = cli("tile", *_BBOX, "--tile-size", 20, "--resolution", 0.5, "-o", tmp_path / "t.tif")
    assert_clean_error(result, "t.tif", "GeoPackage", ".gpkg", "-o t.gpkg")
    assert "RuntimeWarning" not in result.output and not (tmp_path / "t.tif").exists()


def test_eval_refuses_an_rgb_image_as_classes_or_as_a_dsm(cli, sample_data, tmp_path):
    city = sample_data / "synthetic_city"
    out = tmp_path / "report"
    result = cli("eval", city / "truth_dsm.tif", city / "truth_dsm.tif", "--classes", city / "ortho.tif", "-o", out)
    assert_clean_error(result, "ortho.tif", "3 bands", "one band of class codes", "--class-polygons")
    for pred, truth in ((city / "ortho.tif", city / "truth_dsm.tif"), (city / "truth_dsm.tif", city / "ortho.tif")):
        result = cli("eval", pred, truth, "-o", out, "--reproject")
        assert_clean_error(result, "ortho.tif", "is an image", "3 bands of uint8", "single-band DSM")
    assert not out.exists()
    fractional = tmp_path / "frac.tif"
    write_geotiff(fractional, np.full((8, 8), 2.5, np.float32), Affine(4, 0, 770500, 0, -4, 6277532), "EPSG:2154")
    truth = write_geotiff(tmp_path / "truth.tif", np.full((8, 8), 10.0, np.float32),
                          Affine(4, 0, 770500, 0, -4, 6277532), "EPSG:2154")
    assert_clean_error(cli("eval", truth, truth, "--classes", fractional, "-o", out), "frac.tif", "fractional")


@pytest.fixture
def empty_laz(tmp_path):
    return write_las(tmp_path / "empty.laz", {"x": np.zeros(0), "y": np.zeros(0), "z": np.zeros(0)}, "EPSG:2154")


def test_a_laz_without_points_says_so(cli, tmp_path, empty_laz, l93_laz):
    out = tmp_path / "dsm.tif"
    result = cli("dsm", "--points", empty_laz, "--method", "raster", "--resolution", 1, "-o", out)
    assert_clean_error(result, "empty.laz", "no points")  # was "AOI does not overlap ... data bounds 0, 0, 0, 0"
    assert "0.00, 0.00" not in result.output and not out.exists()
    # info describes it with a warning and no made-up bounds; --check refuses it
    info = cli("info", "--json", empty_laz)
    assert info.exit_code == 0 and json.loads(info.stdout)["warning"].startswith("holds no points")
    assert json.loads(info.stdout)["bounds"] is None
    assert_clean_error(cli("info", "--check", empty_laz), "empty.laz", "no points")
    # beside a file with points it is skipped: the extent is the other file's, not one reaching (0, 0)
    both = cli("dsm", "--points", empty_laz, "--points", l93_laz, "--method", "raster", "--resolution", 1,
               "-o", out)
    assert both.exit_code == 0, both.output
    import rasterio

    with rasterio.open(out) as ds:
        assert ds.bounds.left > 770000 and ds.width <= 51


def test_an_aoi_whose_polygon_is_empty_says_so(cli, tmp_path, l93_laz):
    aoi = tmp_path / "empty.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": []}}]}))
    result = cli("info", l93_laz, "--aoi", aoi)
    assert_clean_error(result, "empty.geojson", "polygon geometry is empty", "--bbox")
    assert "only polygon" not in result.stderr.lower()


def test_eval_class_points_without_crs_are_refused_unless_given(cli, tmp_path):
    t = Affine(0.5, 0, 770500, 0, -0.5, 6277550)
    truth = write_geotiff(tmp_path / "truth.tif", np.full((100, 100), 30.0, np.float32), t, "EPSG:2154")
    pts = _pts((770500.0, 6277500.0), n=20000)
    pts["classification"] = np.where(pts["x"] < 770525, 2, 6).astype(np.uint8)
    las = write_las(tmp_path / "nocrs.las", pts, None, point_format=1, version="1.2")
    out = tmp_path / "report"
    assert_clean_error(cli("eval", truth, truth, "--class-points", las, "-o", out, "--no-figures"),
                       "nocrs.las", "no CRS", "--class-points-crs", "EPSG:2154")
    assert not out.exists()
    ok = cli("eval", truth, truth, "--class-points", las, "--class-points-crs", "EPSG:2154", "-o", out,
             "--no-figures")
    assert ok.exit_code == 0, ok.output
    classes = {c["class"]: c["cells"] for c in json.loads((out / "report.json").read_text())["per_class"]}
    assert set(classes) == {"ground", "building"} and abs(classes["ground"] - classes["building"]) < 300


def test_geographic_crs_suggests_the_data_s_utm_zone_everywhere(cli, l93_laz, tmp_path):
    # Montpellier (3.9 E) is UTM zone 31: info --check suggested zone 60 (the Lambert-93 metres read as degrees)
    for command in (("info", "--check", l93_laz, "--crs", "EPSG:4326"),
                    ("dsm", "--points", l93_laz, "--crs", "EPSG:4326", "--method", "raster", "--resolution", 1,
                     "-o", tmp_path / "unused.tif")):
        assert_clean_error(cli(*command), "geographic", "EPSG:32631")


def test_yaml_syntax_error_names_line_and_column(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\n   lr: 0.001\n")
    assert_clean_error(cli("train", bad, "-o", tmp_path / "run"), "bad.yaml", "line 3, column 6",
                       "mapping values are not allowed")
    assert not (tmp_path / "run").exists()


def test_every_point_in_an_excluded_class_names_the_exclusion_and_the_option(cli, tmp_path):
    pts = _pts((770500.0, 6277500.0), n=4000)
    pts["classification"] = np.full(4000, 7, np.uint8)  # all "low noise"
    noise = write_las(tmp_path / "noise.laz", pts, "EPSG:2154")
    out = tmp_path / "dsm.tif"
    args = ("dsm", "--points", noise, "--method", "raster", "--resolution", 1, "-o", out)
    assert_clean_error(cli(*args), "4,000 points", "classes 7, 18", "--exclude-classes none")
    assert not out.exists()
    ok = cli(*args, "--exclude-classes", "none")
    assert ok.exit_code == 0, ok.output
    import rasterio

    with rasterio.open(out) as ds:  # the points' heights (30-31 m) with nothing left out
        heights = ds.read(1, masked=True)
        assert heights.count() > 2000 and 29.9 < heights.min() and heights.max() < 31.1
        assert json.loads(ds.tags()["exclude_classes"]) == []
    bad = cli(*args, "--exclude-classes", "7,x", "--overwrite")
    assert bad.exit_code == 2 and "LAS class codes" in bad.stderr


# ------------------------------------------------ the sweep's good cases: they stay good (one line, exit 2)
def _good_cases(city, ign, tmp):
    truth, dsm_ign = city / "truth_dsm.tif", ign / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif"
    return [
        (("eval", truth, tmp / "missing.tif", "-o", tmp / "r"), ("missing.tif", "not found")),
        (("eval", truth, dsm_ign, "-o", tmp / "r"), ("no valid cell in common",)),
        (("eval", truth, city / "points.laz", "-o", tmp / "r"), ("points.laz", "raster")),
        (("eval", truth, truth, "--class-polygons", city / "aoi.geojson", "-o", tmp / "r"), ("--class-field",)),
        (("eval", truth, truth, "--tiles", city / "aoi.geojson", "-o", tmp / "r"), ("aoi.geojson", "'id'")),
        (("mosaic", tmp / "missing.tif", "-o", tmp / "m.tif"), ("missing.tif", "not found")),
        (("mosaic", truth, dsm_ign, "-o", tmp / "m.tif"), ("pixel grid",)),
        (("mosaic", truth, "--aoi", tmp / "missing.geojson", "-o", tmp / "m.tif"), ("missing.geojson",)),
        (("tile", "--bbox", 10, 10, 0, 0, "--crs", "EPSG:2154", "--resolution", 1, "-o", tmp / "t.gpkg"),
         ("inverted",)),
        (("tile", "--bbox", 0, 0, 10, 10, "--resolution", 1, "-o", tmp / "t.gpkg"), ("--crs",)),
        (("train", tmp / "missing.yaml", "-o", tmp / "run"), ("missing.yaml", "not found")),
        (("train", tmp / "typo.yaml", "-o", tmp / "run"), ("train.stepz", "train.steps")),
        (("nvs", "fit", tmp / "views_bad", "-o", tmp / "m"), ("views_bad", "Images/")),
        (("nvs", "render", tmp / "no_model", "--cams", tmp / "views_bad", "-o", tmp / "r"), ("model.pt",)),
        (("nvs", "eval", tmp / "no_model", tmp / "views_bad", "-o", tmp / "r"), ("model.pt",)),
        (("generate", tmp / "g", "--crs", "EPSG:9999"), ("EPSG:9999",)),
        (("dsm", "--points", city / "points.laz", "--resolution", 1, "--method", "nope", "-o", tmp / "d.tif"),
         ("unknown DSM method", "raster")),
    ]


def test_the_sweep_s_good_cases_stay_good(cli, sample_data, tmp_path):
    """Bad inputs that were handled well in issue 16's sweep: one ``Error:`` line with the file and the fix,
    exit 2, no traceback, nothing written."""
    (tmp_path / "typo.yaml").write_text("train:\n  stepz: 3\n")
    (tmp_path / "views_bad").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, fragments in _good_cases(sample_data / "synthetic_city", sample_data / "ign_montpellier", tmp_path):
        assert_clean_error(cli(*args), *fragments)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args
