"""``eval --conventions demcompare`` reproduces demcompare's own end-to-end reference statistics.

The reference numbers (tests/data/demcompare_srtm_reference.json) are copied from CNES/demcompare at commit
ef977d5, ``tests/data/end_to_end_data/srtm_test_data/ref_output/``, made by demcompare from the same two files
as ``../shared/data/demcompare/`` with its test config (Nuth and Kaab, slope classes 0/5/10/25/45 %, outliers
removed); demcompare checks its own CSV against them with ``atol = 1e-2``, and so does this test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from geoimplicit.evaluate.conventions import demcompare_slope_percent, outlier_free, percentil_90

REFERENCE = json.loads((Path(__file__).parent / "data" / "demcompare_srtm_reference.json").read_text())
ATOL = REFERENCE["tolerance_atol"]
BANDS = {"0-5%": "[0%;5%[:0", "5-10%": "[5%;10%[:5", "10-25%": "[10%;25%[:10", "25-45%": "[25%;45%[:25",
         ">=45%": "[45%;inf[:45"}


@pytest.fixture(scope="module")
def demcompare_report(shared_data, tmp_path_factory):
    from conftest import run_cli

    d = shared_data / "demcompare"
    out = tmp_path_factory.mktemp("dc") / "report"
    result = run_cli("eval", d / "srtm_blurred_and_shifted.tif", d / "srtm_ref.tif", "--coregister",
                     "--conventions", "demcompare", "--no-figures", "-o", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


@pytest.mark.shared
def test_shift_is_demcompare_s(demcompare_report):
    c, ref = demcompare_report["coregistration"], REFERENCE["coregistration"]
    assert c["dx_px"] == pytest.approx(ref["dx_total_offset_px"], rel=1e-2)  # demcompare's TEST_TOL
    assert c["dy_px"] == pytest.approx(ref["dy_total_offset_px"], rel=1e-2)


@pytest.mark.shared
def test_statistics_per_slope_class_are_demcompare_s(demcompare_report):
    ours = {b["band"]: b for b in demcompare_report["per_slope_band"]}
    assert list(ours) == list(BANDS)
    for band, name in BANDS.items():
        ref, got = REFERENCE["slope_classes"][name], ours[band]
        # demcompare's residual is ref - sec: the signed statistics change sign, min and max swap
        pairs = {"mean": -got["bias"], "median": -got["median"], "max": -got["min"], "min": -got["max"],
                 "nmad": got["nmad"], "rmse": got["rmse"], "std": got["std"],
                 "percentil_90": got["percentil_90"], "percent_valid_points": got["percent_of_compared"]}
        for key, value in pairs.items():
            assert value == pytest.approx(ref[key], abs=ATOL), (band, key, value, ref[key])
        # cell counts: within 0.2 % (demcompare crops one more column, ceil(3.0000x px), and interpolates the
        # reference with a spline), where the default conventions hold 1.46x its cells in the steepest class
        assert got["count_with_outliers"] == pytest.approx(ref["nbpts"], rel=2e-3), band


@pytest.mark.shared
def test_default_conventions_differ_where_demcompare_s_differ(shared_data):
    """The reason for the option: the default slope (central differences, 100 x tan) puts many more cells in
    the steepest class, and no outlier is removed."""
    from geoimplicit.evaluate import evaluate_dsm

    d = shared_data / "demcompare"
    report = evaluate_dsm(d / "srtm_blurred_and_shifted.tif", d / "srtm_ref.tif", None, coregister=True,
                          slope_bands=(0, 5, 10, 25, 45))
    steep = report["per_slope_band"][-1]
    assert steep["count"] > 1.3 * REFERENCE["slope_classes"]["[45%;inf[:45"]["nbpts"]
    assert "conventions" not in report and "count_with_outliers" not in steep


def test_demcompare_slope_is_the_angle_in_centiradians_of_the_sobel_gradient():
    t = Affine(2.0, 0, 500000.0, 0, -2.0, 5000000.0)
    cols = np.arange(50)
    for gradient in (0.1, 0.45, 1.0):
        dem = np.tile(gradient * 2.0 * cols, (40, 1))  # a plane rising east
        slope = demcompare_slope_percent(dem, t, "EPSG:32632", np.ones(dem.shape, bool))
        assert slope[5:-5, 5:-5] == pytest.approx(100 * math.atan(gradient), rel=1e-9)
    # a geographic grid: distances on a 6378137 m sphere between neighbouring upper-left corners
    tg = Affine(1 / 1200, 0, 40.0, 0, -1 / 1200, 40.0)
    rise_per_pixel = 10.0
    dem = np.tile(rise_per_pixel * np.arange(30.0), (20, 1))
    slope = demcompare_slope_percent(dem, tg, "EPSG:4326", np.ones(dem.shape, bool))
    lat = 40.0 - 5 / 1200  # row 5's upper-left corner
    dx = 6378137.0 * math.acos(math.cos(math.radians(lat)) ** 2 * math.cos(math.radians(1 / 1200))
                               + math.sin(math.radians(lat)) ** 2)
    assert slope[5, 10] == pytest.approx(100 * math.atan(rise_per_pixel / dx), rel=1e-9)


def test_outliers_are_outside_three_standard_deviations_and_percentil_90_keeps_them():
    rng = np.random.default_rng(0)
    e = rng.normal(0.0, 1.0, 10000)
    e[:5] = [50.0, -40.0, 30.0, np.nan, 8.0]
    keep, info = outlier_free(e)
    v = e[np.isfinite(e)]
    mu, sd = v.mean(), v.std()
    assert info["removed"] == int(np.sum((v <= mu - 3 * sd) | (v >= mu + 3 * sd)))
    assert not keep[:4].any() and keep[5:].mean() > 0.99
    assert percentil_90(e) == pytest.approx(np.percentile(np.abs(v - mu), 90))
