"""`geoimplicit dsm` checks every input before anything is written, whatever the method (issue 15 defect 2,
issue 16): orthos that are not rasters, in another CRS, with too few bands, off the area; resolutions that do
not fit the area; --aoi with --bbox. Feet CRSs get the method's metric tiling converted; tiles are no larger
than the area needs. Through the real CLI only (real LAZ and GeoTIFF files)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import assert_clean_error
from tests.test_dsm_cli import X0, Y0, _scene


def _ortho(tmp_path, name="ortho.tif", *, left=X0, top=Y0 + 40, width=60.0, height=40.0, bands=3,
           crs="EPSG:2154", res=0.5):
    rng = np.random.default_rng(0)
    cols, rows = int(width / res), int(height / res)
    path = tmp_path / name
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=bands, dtype="uint8", crs=crs,
                       transform=Affine(res, 0, left, 0, -res, top)) as ds:
        ds.write(rng.integers(40, 200, (bands, rows, cols)).astype(np.uint8))
    return path


def _dsm(laz, out, *extra, method="raster"):
    return ["dsm", "--points", laz, "--bbox", X0, Y0, X0 + 60, Y0 + 40, "--resolution", 0.5, "--method", method,
            *extra, "-o", out]


def _nothing_written(tmp_path):
    return not (tmp_path / "dsm.tif").exists() and not (tmp_path / "dsm_work").exists()


@pytest.fixture
def laz(tmp_path):
    return _scene(tmp_path, n=6_000)


def test_ortho_that_is_not_a_raster_is_refused_by_every_method(tmp_path, cli, laz):
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    for method in ("raster", "occupancy"):
        r = cli(*_dsm(laz, tmp_path / "dsm.tif", "--ortho", bad, method=method))
        assert_clean_error(r, "notes.tif", "raster")
        assert _nothing_written(tmp_path)


def test_ortho_in_another_crs_is_refused(tmp_path, cli, laz):
    utm = _ortho(tmp_path, "utm.tif", left=500000.0, top=4800040.0, crs="EPSG:32631")
    r = cli(*_dsm(laz, tmp_path / "dsm.tif", "--ortho", utm))
    assert_clean_error(r, "utm.tif", "32631", "gdalwarp")
    assert _nothing_written(tmp_path)


def test_one_band_ortho_is_refused_with_the_bands_the_method_needs(tmp_path, cli, laz):
    grey = _ortho(tmp_path, "grey.tif", bands=1)
    r = cli(*_dsm(laz, tmp_path / "dsm.tif", "--ortho", grey, "--device", "cpu", method="occupancy"))
    assert_clean_error(r, "grey.tif", "1 band", "needs 3")
    assert _nothing_written(tmp_path)


def test_ortho_off_the_area_is_refused_and_a_partial_one_named(tmp_path, cli, laz, caplog):
    far = _ortho(tmp_path, "far.tif", left=X0 + 1000)
    r = cli(*_dsm(laz, tmp_path / "dsm.tif", "--ortho", far, "--device", "cpu", method="occupancy"))
    assert_clean_error(r, "far.tif", "does not overlap")
    assert _nothing_written(tmp_path)
    half = _ortho(tmp_path, "half.tif", width=30.0)  # the west half of the 60 x 40 m area
    r = cli(*_dsm(laz, tmp_path / "dsm.tif", "--ortho", half, "--device", "cpu", method="occupancy"))
    assert r.exit_code == 0, r.output
    assert "half.tif covers 50 % of the area" in caplog.text  # a WARNING line on stderr (cli.main's logging)


def test_ortho_the_method_does_not_use_is_named(tmp_path, cli, laz, caplog):
    good = _ortho(tmp_path)
    r = cli(*_dsm(laz, tmp_path / "dsm.tif", "--ortho", good))
    assert r.exit_code == 0, r.output
    warning = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert any("raster method does not use ortho images" in w and "ortho.tif" in w for w in warning), warning


def test_resolution_larger_than_the_area_is_refused(tmp_path, cli, laz):
    r = cli("dsm", "--points", laz, "--bbox", X0, Y0, X0 + 50, Y0 + 40, "--resolution", 1e6, "--method", "raster",
            "-o", tmp_path / "dsm.tif")
    assert_clean_error(r, "resolution", "larger than the area")
    assert _nothing_written(tmp_path)


def test_too_fine_a_resolution_says_so(tmp_path, cli, laz):
    r = cli("dsm", "--points", laz, "--bbox", X0, Y0, X0 + 50, Y0 + 40, "--resolution", 0.001, "--method",
            "raster", "-o", tmp_path / "dsm.tif")
    assert_clean_error(r, "resolution 0.001", "pixels")
    assert "overlap" not in r.stderr
    # finer than the raster method's tiles can hold its reach: the resolution is named, not the overlap
    r = cli("dsm", "--points", laz, "--bbox", X0, Y0, X0 + 50, Y0 + 40, "--resolution", 0.005, "--method",
            "raster", "-o", tmp_path / "dsm.tif")
    assert_clean_error(r, "resolution 0.005", "too small", "--tile-size")
    assert _nothing_written(tmp_path)


def test_aoi_and_bbox_together_are_refused(tmp_path, cli, laz):
    import shapely

    from geoimplicit.io.vector import write_aoi

    aoi = write_aoi(tmp_path / "aoi.geojson", shapely.box(X0, Y0, X0 + 20, Y0 + 20), "EPSG:2154")
    r = cli("dsm", "--points", laz, "--aoi", aoi, "--bbox", X0, Y0, X0 + 60, Y0 + 40, "--resolution", 0.5,
            "--method", "raster", "-o", tmp_path / "dsm.tif")
    assert_clean_error(r, "--aoi", "--bbox")
    assert _nothing_written(tmp_path)


def test_tiles_are_no_larger_than_the_area(tmp_path, cli, laz):
    """A 10 m bbox: the occupancy method computes the 10 m plus its 16 m of context on every side (42 m, 84
    pixels at 0.5 m), not a whole 128 m tile; the heights are those of a run over a larger area whose tile holds
    the same lattice cell (same top-left corner), for both methods."""
    small = ["--bbox", X0 + 20, Y0 + 10, X0 + 30, Y0 + 20, "--resolution", 0.5]
    large = ["--bbox", X0 + 20, Y0 - 20, X0 + 60, Y0 + 20, "--resolution", 0.5]
    for method, extra in (("occupancy", ["--device", "cpu"]), ("raster", [])):
        for name, box in (("small", small), ("large", large)):
            r = cli("dsm", "--points", laz, *box, "--method", method, *extra, "-o", tmp_path / f"{method}_{name}.tif")
            assert r.exit_code == 0, r.output
        with rasterio.open(tmp_path / f"{method}_small_work" / "tiles" / "r0000_c0000.tif") as ds:
            side = 20 + 2 * int(ds.tags()["GEOIMPLICIT_TILE_OVERLAP_PX"])  # the bbox's 20 pixels + the overlap
            assert ds.shape == (side, side) and (method == "raster" or side == 84)
        with rasterio.open(tmp_path / f"{method}_small.tif") as a, rasterio.open(tmp_path / f"{method}_large.tif") as b:
            assert a.shape == (20, 20)
            window = b.read(1, window=rasterio.windows.from_bounds(*a.bounds, transform=b.transform))
            np.testing.assert_array_equal(a.read(1), window)


@pytest.mark.shared
def test_feet_crs_gets_metric_tiling_in_feet(shared_data, tmp_path, cli):
    """Autzen is in international feet (EPSG:2994): the occupancy method's 128 m tiles and 16 m of context are
    419.9 and 52.5 ft (rounded to the 3 ft pixels: 420 and 51 ft), not 128 and 16 ft."""
    laz = shared_data / "autzen" / "autzen_trim.laz"
    r = cli("dsm", "--points", laz, "--bbox", 636500, 849100, 636560, 849160, "--resolution", 3, "--method",
            "occupancy", "--device", "cpu", "-o", tmp_path / "dsm.tif")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "dsm.tif") as ds:
        tags = ds.tags()
    assert float(tags["tile_size"]) == pytest.approx(128 / 0.3048, abs=3)
    assert float(tags["overlap"]) == pytest.approx(16 / 0.3048, abs=3)
