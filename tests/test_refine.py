"""The height refiner (geoimplicit.dsm.occupancy.refine): features, identity, seams, deadband, training, files."""

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from geoimplicit.dsm.occupancy.checkpoint import DEFAULT_WEIGHTS
from geoimplicit.dsm.occupancy.infer import OccupancyPredictor, predict_dsm, resolve_refiner
from geoimplicit.dsm.occupancy.refine import (CHANNELS, DEFAULT_PATH, HeightRefiner, cell_stats, file_sha256,
                                              load_refiner, refine_heights, save_refiner, window_features)
from geoimplicit.dsm.occupancy.refine_train import RefinerRecipe, fit_refiner
from geoimplicit.errors import WeightsError


def _city_points(seed=3, size=48.0):
    from geoimplicit.synthetic.city import generate_city, scene_bounds
    from geoimplicit.synthetic.points import sample_points

    b = scene_bounds(size, crs="EPSG:2154")
    city = generate_city(seed, bounds=b, resolution=0.5, crs="EPSG:2154")
    pts = sample_points(city, seed, density=6.0)
    return {k: pts[k] for k in ("x", "y", "z")}, tuple(b)


def _random_refiner(radius=2, seed=0):
    torch.manual_seed(seed)
    r = HeightRefiner(radius, 16)
    torch.nn.init.normal_(r.net[-1].weight, std=0.5)
    return r.eval()


def test_cell_stats_are_per_cell_max_mean_min_count():
    x = np.array([0.1, 0.4, 1.6, 1.9])
    y = np.array([1.9, 1.6, 1.9, 0.1])
    z = np.array([1.0, 3.0, 5.0, 7.0])
    s = cell_stats(x, y, z, 0.0, 2.0, 2, 2, 1.0)
    assert s[:, 0, 0].tolist() == [3.0, 2.0, 1.0, 2.0]
    assert s[:, 0, 1].tolist() == [5.0, 5.0, 5.0, 1.0]
    assert s[:, 1, 1].tolist() == [7.0, 7.0, 7.0, 1.0]
    assert np.isnan(s[:3, 1, 0]).all() and s[3, 1, 0] == 0


def test_window_features_are_asinh_differences_to_the_centre():
    r, k = 1, 3
    h = torch.tensor([[0.0, 0.0, 10.0], [0.0, 2.0, 10.0], [0.0, 0.0, 10.0]])
    found = torch.ones(3, 3, dtype=torch.bool)
    stats = torch.full((4, 3, 3), float("nan"))
    stats[3] = 0.0
    stats[0, 1, 2], stats[3, 1, 2] = 12.0, 1.0
    f = window_features(h, found, stats, r).view(CHANNELS, k * k)
    assert f.shape == (CHANNELS, 9)
    assert torch.allclose(f[0], torch.asinh(h.reshape(-1) - 2.0))  # occupancy heights - centre
    assert f[1, 5] == pytest.approx(math.asinh(10.0)) and (f[1, :5] == 0).all()  # point max, empty cells 0
    assert f[4, 5] == pytest.approx(math.log(2.0)) and (f[5] == 1).all()


def test_untrained_refiner_is_the_identity_on_a_real_run():
    pts, b = _city_points()
    pred = OccupancyPredictor(DEFAULT_WEIGHTS, "cpu")
    pred.refiner = None
    h0, v0 = predict_dsm(pred, pts, b, 0.5)
    pred.refiner = HeightRefiner(3, 16)  # zero last layer: no correction, but the grown grid and its search
    h1, v1 = predict_dsm(pred, pts, b, 0.5)
    assert (v0 == v1).all()
    np.testing.assert_allclose(h1[v1], h0[v0], atol=1e-4)


def test_refined_tiles_have_no_seams():
    """Four 24 m tiles give the one-tile DSM: every cell sees the same window on either side of a seam."""
    pts, b = _city_points()
    pred = OccupancyPredictor(DEFAULT_WEIGHTS, "cpu")
    pred.refiner = _random_refiner(3)
    ref, vr = predict_dsm(pred, pts, b, 0.5, tile_size=48.0, overlap=16.0)
    pred.refiner = None
    plain, _ = predict_dsm(pred, pts, b, 0.5, tile_size=48.0, overlap=16.0)
    assert np.abs(ref - plain)[vr].max() > 0.05  # the random refiner does change heights
    pred.refiner = _random_refiner(3)
    tiled, vt = predict_dsm(pred, pts, b, 0.5, tile_size=24.0, overlap=16.0)
    assert (vr == vt).all()
    rows = cols = 48
    seam = np.zeros_like(vr)
    seam[rows - 4:rows + 4, :] = seam[:, cols - 4:cols + 4] = True
    # the field itself differs a little between tilings (each tile's own frame); the refiner adds no jump
    d = np.abs(tiled - ref)[vt]
    assert np.median(np.abs(tiled - ref)[vt & seam]) < 0.02 and np.median(d) < 0.02


def test_deadband_shrinks_corrections():
    r = HeightRefiner(1, 4, deadband_m=1.0)
    with torch.no_grad():
        r.net[-1].bias.fill_(2.5)
    f = torch.zeros(3, CHANNELS * 9)
    assert torch.allclose(r.correction(f), torch.full((3,), 1.5))
    r.net[-1].bias.data.fill_(-0.7)
    assert (r.correction(f) == 0).all()


def test_refine_heights_converts_feet_and_keeps_unfound_cells():
    h = np.full((7, 7), 100.0, np.float32)
    found = np.ones((7, 7), bool)
    found[3, 3] = False
    stats = cell_stats([], [], [], 0, 7, 7, 7, 1.0)
    r = HeightRefiner(2, 4)
    with torch.no_grad():
        r.net[-1].bias.fill_(0.3048)  # +0.3048 m = +1 ft
    out = refine_heights(r, h, found, stats, metres_per_unit=0.3048)
    assert out.shape == (3, 3)
    assert out[1, 1] == 100.0 and np.allclose(np.delete(out.ravel(), 4), 101.0)


def test_fit_refiner_learns_a_known_correction():
    """Truth = occupancy height + 2 x (the point max's asinh difference of the centre cell): learnable exactly."""
    g = torch.Generator().manual_seed(0)
    n, F = 20000, CHANNELS * 9
    f = torch.randn(n, F, generator=g) * 0.5
    h = torch.zeros(n)
    truth = 2.0 * f[:, 9 + 4]
    model, rep = fit_refiner({"features": f, "height": h, "truth": truth},
                             RefinerRecipe(radius=1, width=32, epochs=8, batch=512, deadband_m=0.0))
    assert rep["held_out_rmse_before_m"] > 0.8
    assert rep["held_out_rmse_after_m"] < 0.25 * rep["held_out_rmse_before_m"]


def test_refiner_applies_only_at_the_cell_size_it_was_trained_for():
    pts, b = _city_points()
    pred = OccupancyPredictor(DEFAULT_WEIGHTS, "cpu")
    pred.refiner = None
    plain, vp = predict_dsm(pred, pts, b, 1.0)
    pred.refiner = _random_refiner(3)  # trained for 0.5 m cells
    assert pred.refiner.resolution_m == 0.5
    other, vo = predict_dsm(pred, pts, b, 1.0)
    assert (vp == vo).all() and np.array_equal(plain[vp], other[vo])
    at_half, vh = predict_dsm(pred, pts, b, 0.5)
    pred.refiner = None
    plain_half, _ = predict_dsm(pred, pts, b, 0.5)
    assert np.abs(at_half - plain_half)[vh].max() > 0.05


def test_refiner_files_round_trip_and_bad_files_fail_clearly(tmp_path):
    r = _random_refiner(2)
    r.deadband_m = 0.5
    p = tmp_path / "r.pt"
    save_refiner(r, p, base_weights_sha256="abc", recipe={"seed": 1})
    back, meta = load_refiner(p)
    assert meta["base_weights_sha256"] == "abc" and back.deadband_m == 0.5 and back.radius == 2
    assert back.resolution_m == r.resolution_m
    f = torch.randn(5, CHANNELS * 25)
    assert torch.equal(back(f), r(f))
    with pytest.raises(WeightsError, match="not found"):
        load_refiner(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_refiner(tmp_path / "bad.pt")


def test_auto_refiner_only_for_the_weights_it_was_trained_on(tmp_path):
    other = tmp_path / "other.pt"
    shutil.copyfile(DEFAULT_WEIGHTS, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # another file: another hash
    assert resolve_refiner("none", None) is None
    assert resolve_refiner("auto", other) is None
    assert resolve_refiner("auto", {"a": 1}) is None
    p = tmp_path / "r.pt"
    save_refiner(_random_refiner(2), p, base_weights_sha256="x", recipe={})
    assert resolve_refiner(str(p), None).radius == 2


@pytest.mark.skipif(not DEFAULT_PATH.exists(), reason="no shipped refiner weights")
def test_shipped_refiner_belongs_to_the_shipped_weights():
    _, meta = load_refiner(DEFAULT_PATH)
    assert meta["base_weights_sha256"] == file_sha256(DEFAULT_WEIGHTS)
    assert OccupancyPredictor(DEFAULT_WEIGHTS, "cpu").refiner is not None


def test_train_refiner_command(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"inherit_from: {DEFAULT_WEIGHTS.parents[1] / 'configs' / 'default.yaml'}\n"
                   "data:\n  real: []\n  synthetic_train_seeds: [0, 1]\n")
    out = tmp_path / "ref.pt"
    cmd = [sys.executable, "-m", "cli", "--progress", "log", "train-refiner", str(cfg), "-o", str(out),
           "--device", "cpu", "--epochs", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "held_out_rmse_after_m" in done.stdout
    _, meta = load_refiner(out)
    assert meta["base_weights_sha256"] == file_sha256(DEFAULT_WEIGHTS) and meta["recipe"]["crops"] == ["city 0"]
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode != 0 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_occupancy_method_reads_the_refiner_up_front(tmp_path):
    from geoimplicit.dsm.occupancy.method import OccupancyMethod

    p = tmp_path / "r.pt"
    save_refiner(_random_refiner(2), p, base_weights_sha256="x", recipe={})
    m = OccupancyMethod(refiner=str(p))
    assert m.tags()["refiner"] == str(p) and str(p) in m.model_files
    assert OccupancyMethod(refiner="none").tags()["refiner"] == "none"
    with pytest.raises(WeightsError, match="not found"):
        OccupancyMethod(refiner=str(tmp_path / "nope.pt"))


def test_dsm_command_with_a_missing_refiner_fails_before_writing(tmp_path, sample_data):
    sample_city = sample_data / "synthetic_city"
    out = tmp_path / "dsm.tif"
    done = subprocess.run([sys.executable, "-m", "cli", "dsm", "--points", str(sample_city / "points.laz"),
                           "--aoi", str(sample_city / "aoi.geojson"), "--resolution", "0.5", "-o", str(out),
                           "--refiner", str(tmp_path / "nope.pt"), "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode != 0 and "nope.pt" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
