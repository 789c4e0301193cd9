"""Residual statistics against a hand-built case and an independent numpy recomputation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoimplicit.evaluate.metrics import STAT_KEYS, nmad, residual_stats


def test_hand_built_case():
    e = np.array([-2.0, -1.0, 0.0, 0.5, 3.0])
    s = residual_stats(e)
    assert s["count"] == 5
    assert s["bias"] == pytest.approx(0.1)
    assert s["median"] == 0.0
    assert s["mae"] == pytest.approx(6.5 / 5)
    assert s["rmse"] == pytest.approx(math.sqrt(14.25 / 5))
    assert s["median_abs_error"] == 1.0
    assert s["nmad"] == pytest.approx(1.4826)  # median(|e - 0|) = 1
    # sorted |e| = 0, 0.5, 1, 2, 3; linear percentile at 0.68 * 4 = 2.72 -> 1 + 0.72
    assert s["le68"] == pytest.approx(1.72)
    assert s["le90"] == pytest.approx(2.6)
    assert s["within_0.5"] == pytest.approx(0.4)
    assert s["within_1"] == pytest.approx(0.6)
    assert s["within_2"] == pytest.approx(0.8)
    assert (s["min"], s["max"]) == (-2.0, 3.0)
    assert s["std"] == pytest.approx(math.sqrt(np.mean((e - 0.1) ** 2)))


def test_against_numpy_on_random_residuals():
    rng = np.random.default_rng(42)
    e = rng.standard_t(3, size=(300, 200)) * 0.7 + 0.2
    e[rng.random(e.shape) < 0.1] = np.nan
    mask = rng.random(e.shape) < 0.8
    s = residual_stats(e, mask)
    v = e[mask & np.isfinite(e)]
    a = np.abs(v)
    expected = {
        "count": v.size, "bias": v.mean(), "median": np.median(v), "std": np.sqrt(np.mean((v - v.mean()) ** 2)),
        "mae": a.mean(), "rmse": np.sqrt(np.mean(v**2)), "median_abs_error": np.median(a),
        "nmad": 1.4826 * np.median(np.abs(v - np.median(v))),
        "le68": np.sort(a)[int(0.68 * (a.size - 1))], "within_0.5": np.mean(a <= 0.5), "within_1": np.mean(a <= 1),
        "within_2": np.mean(a <= 2), "min": v.min(), "max": v.max(),
    }
    for key, value in expected.items():
        tol = 2e-3 if key == "le68" else 1e-12  # le68: order statistic vs interpolated percentile
        assert s[key] == pytest.approx(value, rel=tol, abs=tol), key
    for p in (90, 95, 99):
        assert s[f"le{p}"] == pytest.approx(np.percentile(a, p))
    assert set(STAT_KEYS) <= set(s)
    assert nmad(v) == pytest.approx(expected["nmad"])


def test_empty_and_gaussian_nmad():
    s = residual_stats(np.array([np.nan, np.inf]))
    assert s["count"] == 0 and math.isnan(s["rmse"]) and math.isnan(s["within_1"])
    g = np.random.default_rng(0).normal(0.0, 2.0, 200_000)
    assert nmad(g) == pytest.approx(2.0, rel=0.01)  # NMAD estimates sigma for a Gaussian


def test_mask_shape_is_checked():
    with pytest.raises(ValueError, match="mask shape"):
        residual_stats(np.zeros((3, 3)), np.ones((2, 2), bool))
