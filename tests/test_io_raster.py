"""Raster reading (windows, world files, warping, resampling, masks) and GeoTIFF/COG writing."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import rasterio
from affine import Affine

from geoimplicit.errors import AOIError, CorruptInputError, MissingCRSError, NoDataError, OutputExistsError
from geoimplicit.io.crs import crs_equal
from geoimplicit.io.raster import raster_info, read_raster, require_valid, write_geotiff

CRSS = {"EPSG:2154": (770500.0, 6277600.0), "EPSG:32632": (500000.0, 5000000.0), "EPSG:2994": (636000.0, 849500.0)}


def _ramp(rows=60, cols=80, bands=1, dtype="float32"):
    r, c = np.mgrid[0:rows, 0:cols]
    arr = np.stack([(r * 1000 + c + 10000 * b) for b in range(bands)]).astype(dtype)
    return arr


@pytest.mark.parametrize("crs", list(CRSS))
@pytest.mark.parametrize("dtype,bands", [("float32", 1), ("uint8", 3), ("int16", 2), ("uint16", 4), ("float64", 1)])
def test_roundtrip_and_window(tmp_path, crs, dtype, bands):
    left, top = CRSS[crs]
    arr = _ramp(bands=bands, dtype="float64")
    arr = (arr % 250).astype(dtype) if dtype == "uint8" else arr.astype(dtype)
    transform = Affine(0.5, 0, left, 0, -0.5, top)
    path = write_geotiff(tmp_path / "r.tif", arr if bands > 1 else arr[0], transform, crs)
    info = raster_info(path)
    assert crs_equal(info["crs"], crs) and info["count"] == bands and info["dtype"] == dtype
    assert info["shape"] == (60, 80) and info["block_shapes"][0] == (256, 256)
    assert info["compression"] == "deflate"
    # window: columns 10..29 and rows 4..13 exactly
    bounds = (left + 10 * 0.5, top - 14 * 0.5, left + 30 * 0.5, top - 4 * 0.5)
    data = read_raster(path, bounds)
    np.testing.assert_array_equal(data.array, arr[:, 4:14, 10:30])
    assert data.bounds == pytest.approx(bounds) and data.resolution == (0.5, 0.5)
    assert data.mask.all()
    # bounds not on pixel edges widen to whole pixels
    data = read_raster(path, (bounds[0] + 0.1, bounds[1] + 0.1, bounds[2] - 0.1, bounds[3] - 0.1))
    np.testing.assert_array_equal(data.array, arr[:, 4:14, 10:30])


def test_partial_outside_is_masked(tmp_path):
    arr = _ramp()[0]
    t = Affine(1, 0, 1000, 0, -1, 2000)
    path = write_geotiff(tmp_path / "r.tif", arr, t, "EPSG:2154")
    data = read_raster(path, (990, 1990, 1010, 2010))  # 10 px outside on the left and the top
    assert data.array.shape == (1, 20, 20)
    assert not data.mask[:10].any() and not data.mask[:, :10].any()
    assert data.mask[10:, 10:].all()
    np.testing.assert_array_equal(data.array[0, 10:, 10:], arr[:10, :10])
    with pytest.raises(AOIError, match="does not overlap"):
        read_raster(path, (0, 0, 10, 10))


def test_nan_and_nodata_mask(tmp_path):
    arr = np.ones((2, 10, 10), np.float32)
    arr[:, 0, 0] = np.nan
    arr[0, 1, 1] = -9999  # one band nodata: the pixel is still valid
    arr[:, 2, 2] = -9999
    path = write_geotiff(tmp_path / "r.tif", arr, Affine(1, 0, 0, 0, -1, 10), "EPSG:32632")
    with rasterio.open(path) as ds:
        assert ds.nodata == -9999 and not np.isnan(ds.read()).any()  # NaN is never written
    data = read_raster(path)
    expected = np.ones((10, 10), bool)
    expected[0, 0] = expected[2, 2] = False
    np.testing.assert_array_equal(data.mask, expected)
    empty = write_geotiff(tmp_path / "e.tif", np.full((5, 5), np.nan), Affine(1, 0, 0, 0, -1, 5), "EPSG:32632")
    with pytest.raises(NoDataError, match="e.tif"):
        require_valid(read_raster(empty), empty)


def test_masked_array_and_int_nodata(tmp_path):
    arr = np.ma.masked_array(np.arange(16, dtype=np.int16).reshape(4, 4), mask=np.eye(4, dtype=bool))
    path = write_geotiff(tmp_path / "m.tif", arr, Affine(1, 0, 0, 0, -1, 4), "EPSG:2154")
    data = read_raster(path)
    np.testing.assert_array_equal(data.mask, ~np.eye(4, dtype=bool))
    # uint8 cannot hold -9999: written without nodata
    path = write_geotiff(tmp_path / "u.tif", np.zeros((3, 4, 4), np.uint8), Affine(1, 0, 0, 0, -1, 4), "EPSG:2154")
    assert raster_info(path)["nodata"] is None


def test_warp_to_other_crs(tmp_path):
    """A raster of its own easting, warped from Lambert-93 to UTM 31N: each pixel holds the L93 x of its centre."""
    res, left, top = 1.0, 770500.0, 6277600.0
    cols = rows = 100
    x = left + (np.arange(cols) + 0.5) * res
    arr = np.broadcast_to(x, (rows, cols)).astype(np.float64)
    path = write_geotiff(tmp_path / "x.tif", arr, Affine(res, 0, left, 0, -res, top), "EPSG:2154")
    to_utm = pyproj.Transformer.from_crs(2154, 32631, always_xy=True)
    l, b, r, t = to_utm.transform_bounds(left + 20, top - 80, left + 80, top - 20)
    data = read_raster(path, (l, b, r, t), dst_crs="EPSG:32631", resolution=2.0)
    assert crs_equal(data.crs, "EPSG:32631") and data.resolution == (2.0, 2.0)
    rr, cc = np.nonzero(data.mask)
    t = data.transform
    ex, ny = t.c + (cc + 0.5) * t.a, t.f + (rr + 0.5) * t.e
    back_x, _ = pyproj.Transformer.from_crs(32631, 2154, always_xy=True).transform(ex, ny)
    err = np.abs(data.array[0][rr, cc] - back_x)
    assert err.max() < 0.05  # bilinear of a linear field is exact up to the warper's approximation


def test_resample_average(tmp_path):
    arr = np.random.default_rng(0).random((40, 40))
    path = write_geotiff(tmp_path / "a.tif", arr, Affine(0.5, 0, 100, 0, -0.5, 200), "EPSG:2994")
    data = read_raster(path, (100, 180, 120, 200), resolution=1.0, resampling="average")
    expected = arr.reshape(20, 2, 20, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(data.array[0], expected, rtol=1e-6)


def test_cog_with_overviews_and_tags(tmp_path):
    arr = np.random.default_rng(1).random((1100, 700)).astype(np.float32)
    path = write_geotiff(tmp_path / "c.tif", arr, Affine(0.5, 0, 0, 0, -0.5, 550), "EPSG:2154", cog=True,
                         tags={"made_by": "test"}, band_descriptions=["height"])
    with rasterio.open(path) as ds:
        assert ds.driver == "GTiff" and ds.block_shapes[0] == (256, 256)
        assert ds.overviews(1) and ds.tags()["made_by"] == "test" and ds.descriptions == ("height",)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.profile["compress"] == "deflate" and ds.nodata == -9999
        np.testing.assert_array_equal(ds.read(1), arr)
    assert [p.name for p in tmp_path.iterdir()] == ["c.tif"]  # nothing partial left behind


def test_overwrite_and_atomic(tmp_path):
    path = tmp_path / "o.tif"
    write_geotiff(path, np.zeros((4, 4), np.float32), Affine(1, 0, 0, 0, -1, 4), "EPSG:2154")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_geotiff(path, np.ones((4, 4), np.float32), Affine(1, 0, 0, 0, -1, 4), "EPSG:2154")
    write_geotiff(path, np.ones((4, 4), np.float32), Affine(1, 0, 0, 0, -1, 4), "EPSG:2154", overwrite=True)
    assert read_raster(path).array.max() == 1
    with pytest.raises(Exception):  # a failing write leaves nothing behind
        write_geotiff(tmp_path / "bad.tif", np.zeros((4, 4)), Affine(1, 0, 0, 0, -1, 4), "EPSG:99999")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]


def test_world_file_image(tmp_path):
    from PIL import Image

    img = (np.arange(20 * 30 * 3) % 256).astype(np.uint8).reshape(20, 30, 3)
    Image.fromarray(img).save(tmp_path / "ortho.png")
    # world file: pixel size, rotation, rotation, -pixel size, x and y of the CENTRE of the top-left pixel
    (tmp_path / "ortho.wld").write_text("2.0\n0.0\n0.0\n-2.0\n1001.0\n4999.0\n")
    with pytest.raises(MissingCRSError, match="--crs"):
        read_raster(tmp_path / "ortho.png")
    data = read_raster(tmp_path / "ortho.png", crs="EPSG:2994")
    assert data.transform == Affine(2, 0, 1000, 0, -2, 5000)  # outer corner = centre - half a pixel
    np.testing.assert_array_equal(data.array, img.transpose(2, 0, 1))
    assert raster_info(tmp_path / "ortho.png")["georeferencing"] == "world file"


def test_world_file_image_with_a_prj_beside_it(tmp_path):
    from PIL import Image

    img = (np.arange(20 * 30 * 3) % 256).astype(np.uint8).reshape(20, 30, 3)
    Image.fromarray(img).save(tmp_path / "ortho.png")
    (tmp_path / "ortho.wld").write_text("2.0\n0.0\n0.0\n-2.0\n1001.0\n4999.0\n")
    (tmp_path / "ortho.prj").write_text(pyproj.CRS.from_epsg(2994).to_wkt(version="WKT1_ESRI"))
    data = read_raster(tmp_path / "ortho.png")  # no --crs needed: the .prj says it
    assert crs_equal(data.crs, "EPSG:2994") and data.transform == Affine(2, 0, 1000, 0, -2, 5000)
    assert crs_equal(raster_info(tmp_path / "ortho.png")["crs"], "EPSG:2994")
    warped = read_raster(tmp_path / "ortho.png", dst_crs="EPSG:2994", resolution=4.0)
    assert warped.array.shape == (3, 10, 15)


def test_not_a_raster(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 50)
    with pytest.raises(CorruptInputError, match="bad.tif"):
        read_raster(bad)
    text = tmp_path / "text.tif"
    text.write_text("hello")
    with pytest.raises(CorruptInputError, match="text.tif"):
        raster_info(text)


@pytest.mark.shared
def test_autzen_world_file_matches_geotiff(shared_data):
    wkt = shared_data / "autzen" / "autzen-srs.wkt"
    bounds = (636000.0, 849000.0, 636200.0, 849100.0)  # feet
    jpg = read_raster(shared_data / "autzen" / "autzen.jpg", bounds, crs=wkt)
    tif = read_raster(shared_data / "derived" / "autzen_ortho_ft.tif", bounds)
    assert jpg.transform == tif.transform and jpg.array.shape == (3, 101, 201)
    assert crs_equal(jpg.crs, "EPSG:2994") and crs_equal(tif.crs, "EPSG:2994")
    assert np.abs(jpg.array.astype(int) - tif.array).mean() < 1.0  # two JPEG decodes of the same pixels


@pytest.mark.shared
def test_autzen_world_file_image_as_dsm_ortho(shared_data, tmp_path, cli):
    """The README's world-file ortho (autzen.jpg + .wld, no CRS inside) in ``dsm --ortho`` with ``--crs``."""
    autzen = shared_data / "autzen"
    common = ["dsm", "--points", autzen / "autzen_trim.laz", "--bbox", 636500, 849000, 636580, 849080,
              "--resolution", 4, "--device", "cpu", "--tile-size", 80, "--overlap", 16]
    result = cli(*common, "--ortho", autzen / "autzen.jpg", "-o", tmp_path / "nocrs.tif")
    assert result.exit_code == 2 and "--crs" in result.stderr and "autzen.prj" in result.stderr, result.output
    heights = {}
    for name, ortho in (("jpg", autzen / "autzen.jpg"), ("tif", shared_data / "derived" / "autzen_ortho_ft.tif"),
                        ("none", None)):
        extra = ["--ortho", ortho] if ortho else []
        out = tmp_path / f"{name}.tif"
        result = cli(*common, *extra, "--crs", autzen / "autzen-srs.wkt", "-o", out)
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds:
            heights[name] = ds.read(1, masked=True)
    # the same pixels as the GeoTIFF copy with the CRS inside (two JPEG decodes: within a hundredth of a foot),
    # and the ortho was used (the DSM differs from the points-only one)
    assert heights["jpg"].count() == 400 and np.abs(heights["jpg"] - heights["tif"]).max() < 0.01
    assert np.abs(heights["jpg"] - heights["none"]).max() > 0


@pytest.mark.shared
def test_ign_dsm_window_and_ortho_crs(shared_data):
    dsm_path = shared_data / "ign_montpellier" / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif"
    full = read_raster(dsm_path)
    win = read_raster(dsm_path, (770560.25, 6277560.25, 770570.25, 6277570.25))
    np.testing.assert_array_equal(win.array[0], full.array[0, 60:80, 21:41])
    assert 0.99 < full.mask.mean() < 1.0  # a few nodata pixels
    # the ortho's WKT has no EPSG code but is Lambert-93: no warp, exact pixels
    ortho = shared_data / "ign_montpellier" / "test_data_rgb.tif"
    a = read_raster(ortho, (770560, 6277560, 770570, 6277570), dst_crs="EPSG:2154")
    b = read_raster(shared_data / "derived" / "test_data_rgb_epsg2154.tif", (770560, 6277560, 770570, 6277570))
    np.testing.assert_array_equal(a.array, b.array)
