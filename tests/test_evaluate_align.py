"""Prediction resampled onto the truth's grid: exact on planes, nodata respected, overlap reported, CRS checked."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject

from conftest import assert_clean_error
from evaluate_helpers import grid_xy, write_dem
from geoimplicit.errors import CRSMismatchError, MissingCRSError
from geoimplicit.evaluate.align import align_to_truth

TRUTH_T = Affine(0.5, 0, 770500.0, 0, -0.5, 6277600.0)


def plane(x, y):
    return 40.0 + 0.02 * (x - 770500.0) - 0.05 * (y - 6277500.0)


def test_half_pixel_shifted_grid_is_exact_on_a_plane_and_nodata_never_bleeds(tmp_path):
    shape = (60, 80)
    truth = plane(*grid_xy(TRUTH_T, shape))
    # prediction grid: offset by a quarter and a half pixel, covering the truth fully
    pt = Affine(0.5, 0, 770500.0 - 1.125, 0, -0.5, 6277600.0 + 1.25)
    pshape = (66, 86)
    pred = plane(*grid_xy(pt, pshape))
    pred[20:30, 30:40] = np.nan  # a nodata block
    write_dem(tmp_path / "truth.tif", truth, TRUTH_T)
    write_dem(tmp_path / "pred.tif", pred, pt)
    pair = align_to_truth(tmp_path / "pred.tif", tmp_path / "truth.tif")
    r = pair.residual[pair.valid]
    assert np.abs(r).max() < 1e-3  # bilinear on a plane is exact (float32 storage)
    # the nodata block (in truth pixels, about rows 17.5-27.5, cols 27.75-37.75) plus the bilinear support
    # is invalid; nothing near -9999 leaks into the valid cells
    assert not pair.valid[22, 32]
    invalid = (~pair.valid).sum()
    assert 100 <= invalid <= 12 * 12
    assert pair.overlap_fraction == pytest.approx(1 - invalid / truth.size)


def test_same_lattice_window_is_copied_exactly_and_overlap_fraction(tmp_path):
    shape = (40, 40)
    truth = np.random.default_rng(1).normal(50, 5, shape)
    truth[:, :5] = np.nan  # truth nodata
    # prediction: the right half only, same lattice, values = truth + 1
    pt = Affine(0.5, 0, 770500.0 + 20 * 0.5, 0, -0.5, 6277600.0)
    pred = truth[:, 20:] + 1.0
    write_dem(tmp_path / "truth.tif", truth, TRUTH_T, dtype="float64")
    write_dem(tmp_path / "pred.tif", pred, pt, dtype="float64")
    pair = align_to_truth(tmp_path / "pred.tif", tmp_path / "truth.tif")
    assert np.allclose(pair.residual[pair.valid], 1.0, atol=1e-12)
    ov = pair.overlap()
    assert ov["truth_valid"] == 40 * 35
    assert ov["both_valid"] == 40 * 20
    assert ov["valid_overlap_fraction"] == pytest.approx(20 / 35)


def test_coarser_prediction_is_resampled(tmp_path):
    shape = (60, 60)
    truth = plane(*grid_xy(TRUTH_T, shape))
    pt = Affine(1.5, 0, 770500.0, 0, -1.5, 6277600.0)
    pred = plane(*grid_xy(pt, (20, 20))) + 0.3
    write_dem(tmp_path / "truth.tif", truth, TRUTH_T)
    write_dem(tmp_path / "pred.tif", pred, pt)
    pair = align_to_truth(tmp_path / "pred.tif", tmp_path / "truth.tif")
    assert pair.overlap_fraction > 0.85
    assert np.median(pair.residual[pair.valid]) == pytest.approx(0.3, abs=1e-3)


def test_crs_mismatch_is_a_clean_error_unless_reproject(tmp_path, cli):
    shape = (40, 40)
    truth = plane(*grid_xy(TRUTH_T, shape))
    write_dem(tmp_path / "truth.tif", truth, TRUTH_T, crs="EPSG:2154")
    # the same surface warped into UTM 31N (EPSG:32631)
    from rasterio.warp import calculate_default_transform

    dst_t, w, h = calculate_default_transform("EPSG:2154", "EPSG:32631", 40, 40,
                                              *rasterio.transform.array_bounds(40, 40, TRUTH_T), resolution=0.5)
    pred = np.full((h, w), np.nan)
    reproject(truth, pred, src_transform=TRUTH_T, src_crs="EPSG:2154", dst_transform=dst_t, dst_crs="EPSG:32631",
              resampling=Resampling.bilinear, dst_nodata=np.nan)
    write_dem(tmp_path / "pred.tif", pred, dst_t, crs="EPSG:32631")
    with pytest.raises(CRSMismatchError):
        align_to_truth(tmp_path / "pred.tif", tmp_path / "truth.tif")
    result = cli("eval", tmp_path / "pred.tif", tmp_path / "truth.tif", "-o", tmp_path / "rep")
    assert_clean_error(result, "EPSG:32631", "EPSG:2154", "--reproject")
    assert not (tmp_path / "rep").exists()
    pair = align_to_truth(tmp_path / "pred.tif", tmp_path / "truth.tif", reproject=True)
    assert pair.overlap_fraction > 0.7
    assert abs(np.median(pair.residual[pair.valid])) < 0.02


def test_missing_crs_and_missing_file(tmp_path, cli):
    truth = np.ones((10, 10))
    write_dem(tmp_path / "truth.tif", truth, TRUTH_T)
    write_dem(tmp_path / "nocrs.tif", truth, TRUTH_T, crs=None)
    with pytest.raises(MissingCRSError):
        align_to_truth(tmp_path / "nocrs.tif", tmp_path / "truth.tif")
    assert_clean_error(cli("eval", tmp_path / "absent.tif", tmp_path / "truth.tif", "-o", tmp_path / "r"),
                       "absent.tif")
    (tmp_path / "junk.tif").write_text("not a tiff")
    assert_clean_error(cli("eval", tmp_path / "junk.tif", tmp_path / "truth.tif", "-o", tmp_path / "r"), "junk.tif")
