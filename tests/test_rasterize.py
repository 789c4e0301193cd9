"""The raster DSM: cell statistics against numpy, outliers, hole filling, the IGN reference DSM."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from geoimplicit.dsm.rasterize import (RasterizeConfig, cell_indices, fill_holes, find_outliers, grid_statistic,
                                       rasterize)
from geoimplicit.tiling.grid import GridSpec

X0, Y0 = 770000.0, 6277000.0  # real Lambert-93 eastings/northings: float64 all the way


def _grid(w=40.0, h=30.0, res=0.5):
    return GridSpec.from_bounds((X0, Y0, X0 + w, Y0 + h), res, "EPSG:2154")


def _plane(x, y):
    return 50.0 + 0.2 * (x - X0) - 0.1 * (y - Y0)


def _points(rng, n, grid, margin=0.0):
    left, bottom, right, top = grid.bounds
    x = rng.uniform(left - margin, right + margin, n)
    y = rng.uniform(bottom - margin, top + margin, n)
    return x, y


def _numpy_cells(x, y, z, grid):
    """Independent per-cell grouping with python dicts."""
    left, _, _, top = grid.bounds
    rows, cols = grid.shape
    col = np.floor((x - left) / grid.resolution).astype(int)
    row = np.floor((top - y) / grid.resolution).astype(int)
    cells = {}
    for r, c, v in zip(row, col, z):
        if 0 <= r < rows and 0 <= c < cols:
            cells.setdefault((r, c), []).append(v)
    return cells


def test_cell_indices_follow_pixel_is_area():
    g = GridSpec.from_bounds((0, 0, 2, 2), 1.0, "EPSG:2154")
    x = np.array([0.0, 0.999, 1.0, 1.999, 2.0, -0.001, 0.5])
    y = np.array([2.0, 1.5, 1.0, 0.001, 1.0, 1.0, 0.0])
    idx, inside = cell_indices(x, y, g)
    assert inside.tolist() == [True, True, True, True, False, False, False]
    assert idx.tolist() == [0, 0, 3, 3]


@pytest.mark.parametrize("stat", ["max", "min", "mean", "median", "count", "stdev"])
def test_cell_statistics_match_numpy(stat):
    rng = np.random.default_rng(1)
    g = _grid(10, 8, 1.0)
    x, y = _points(rng, 2000, g, margin=1.0)
    z = rng.normal(30, 5, len(x))
    values, count = grid_statistic(x, y, z, g, stat)
    cells = _numpy_cells(x, y, z, g)
    fn = {"max": np.max, "min": np.min, "mean": np.mean, "median": np.median, "count": len, "stdev": np.std}[stat]
    for r in range(g.shape[0]):
        for c in range(g.shape[1]):
            v = cells.get((r, c))
            assert count[r, c] == (0 if v is None else len(v))
            if v is None:
                assert (values[r, c] == 0) if stat == "count" else np.isnan(values[r, c])
            else:
                assert values[r, c] == pytest.approx(float(fn(v)), rel=1e-6, abs=1e-4)


def test_idw_matches_brute_force():
    rng = np.random.default_rng(2)
    g = _grid(6, 5, 1.0)
    x, y = _points(rng, 300, g, margin=2.0)
    z = rng.normal(10, 2, len(x))
    radius, power = 1.3, 2.0
    values, count = grid_statistic(x, y, z, g, "idw", idw_radius=radius, idw_power=power)
    xs, ys = g.pixel_centers()
    for r, yc in enumerate(ys):
        for c, xc in enumerate(xs):
            d = np.hypot(x - xc, y - yc)
            m = d <= radius
            assert count[r, c] == m.sum()
            if m.any():
                w = 1 / d[m] ** power
                assert values[r, c] == pytest.approx(np.sum(w * z[m]) / np.sum(w), rel=1e-5)
            else:
                assert np.isnan(values[r, c])


def test_idw_nearest_points_matches_brute_force():
    rng = np.random.default_rng(3)
    g = _grid(6, 5, 1.0)
    x, y = _points(rng, 400, g, margin=2.0)
    z = rng.normal(10, 2, len(x))
    radius, power, k = 1.3, 2.0, 5
    values, count = grid_statistic(x, y, z, g, "idw", idw_radius=radius, idw_power=power, idw_max_points=k)
    xs, ys = g.pixel_centers()
    for r, yc in enumerate(ys):
        for c, xc in enumerate(xs):
            d = np.hypot(x - xc, y - yc)
            nearest = np.argsort(d)[:k]
            nearest = nearest[d[nearest] <= radius]
            assert count[r, c] == len(nearest)
            if len(nearest):
                w = 1 / d[nearest] ** power
                assert values[r, c] == pytest.approx(np.sum(w * z[nearest]) / np.sum(w), rel=1e-5)
            else:
                assert np.isnan(values[r, c])


@pytest.mark.parametrize("stat", ["max", "min", "mean", "median", "idw"])
def test_points_on_a_plane_give_the_plane(stat):
    rng = np.random.default_rng(3)
    g = _grid()
    # points at the cell centres (plus one extra each side) so every statistic is exact
    xs, ys = g.pixel_centers()
    xx, yy = np.meshgrid(xs, ys)
    x, y = xx.ravel(), yy.ravel()
    z = _plane(x, y)
    out = rasterize({"x": x, "y": y, "z": z}, g, RasterizeConfig(stat=stat, idw_radius=0.3))
    assert out.valid.all() and not out.filled.any()
    assert np.allclose(out.height, _plane(xx, yy), atol=2e-3)
    # and random points: mean of a plane over a cell is close to the centre value
    x2, y2 = _points(rng, 200_000, g)
    out2 = rasterize({"x": x2, "y": y2, "z": _plane(x2, y2)}, g, RasterizeConfig(stat="mean"))
    assert np.abs(out2.height - _plane(xx, yy)).max() < 0.06


def test_tin_is_exact_on_a_plane_keeps_the_top_return_and_invents_nothing_outside():
    rng = np.random.default_rng(5)
    g = _grid(20, 10, 0.5)
    x, y = _points(rng, 3000, g, margin=2.0)
    values, count = grid_statistic(x, y, _plane(x, y), g, "tin")
    xs, ys = g.pixel_centers()
    xx, yy = np.meshgrid(xs, ys)
    assert np.isfinite(values).all()
    assert np.abs(values - _plane(xx, yy)).max() < 1e-3  # linear interpolation is exact on a plane
    assert count.sum() == cell_indices(x, y, g)[1].sum()
    # a second return under each first one (same x, y: a pulse through a crown) does not pull the surface down
    values2, _ = grid_statistic(np.r_[x, x], np.r_[y, y], np.r_[_plane(x, y), _plane(x, y) - 10], g, "tin")
    assert np.abs(values2 - values).max() < 1e-6
    # points only in the left half: the right half is outside their hull, NaN
    left = x < X0 + 8
    values3, _ = grid_statistic(x[left], y[left], _plane(x, y)[left], g, "tin")
    assert np.isnan(values3[:, xs > X0 + 9]).all() and np.isfinite(values3[:, xs < X0 + 7]).all()


def test_flat_roof_at_100m():
    rng = np.random.default_rng(4)
    g = _grid()
    x, y = _points(rng, 60_000, g, margin=3)
    z = np.full(len(x), 100.0)
    out = rasterize({"x": x, "y": y, "z": z}, g)
    assert out.valid.all()
    assert np.all(out.height == np.float32(100.0))


def test_outliers_above_and_below_are_removed_but_structures_kept():
    rng = np.random.default_rng(5)
    g = _grid(40, 40, 0.5)
    x, y = _points(rng, 60_000, g, margin=6)
    z = np.full(len(x), 20.0) + rng.normal(0, 0.03, len(x))
    # a 1 x 1 m chimney 8 m high, densely sampled: must stay
    chim = (np.abs(x - (X0 + 10)) < 0.5) & (np.abs(y - (Y0 + 10)) < 0.5)
    z[chim] = 28.0
    # isolated outliers 30 m above and 15 m below
    bad = rng.choice(np.flatnonzero(~chim), 40, replace=False)
    z[bad[:20]] += 30.0
    z[bad[20:]] -= 15.0
    flagged = find_outliers(x, y, z, radius=1.0)
    assert flagged[bad].all()
    assert not flagged[chim].any()
    assert flagged.sum() == 40
    out = rasterize({"x": x, "y": y, "z": z}, g)
    assert out.height.max() == pytest.approx(28.0)
    assert out.height.min() > 19.8
    # without outlier removal the spikes show
    raw = rasterize({"x": x, "y": y, "z": z}, g, RasterizeConfig(remove_outliers=False))
    assert raw.height.max() > 45


def test_noise_classes_are_dropped():
    g = _grid(4, 4, 1.0)
    xs, ys = g.pixel_centers()
    xx, yy = np.meshgrid(xs, ys)
    x, y = np.r_[xx.ravel(), xx.ravel()], np.r_[yy.ravel(), yy.ravel()]
    z = np.r_[np.full(16, 5.0), np.full(16, 90.0)]
    cls = np.r_[np.full(16, 2), np.full(16, 18)].astype(np.uint8)
    out = rasterize({"x": x, "y": y, "z": z, "classification": cls}, g, RasterizeConfig(remove_outliers=False))
    assert np.all(out.height == 5.0)


def test_hole_in_a_plane_is_filled_with_the_plane():
    g = _grid(30, 30, 0.5)
    xs, ys = g.pixel_centers()
    xx, yy = np.meshgrid(xs, ys)
    truth = _plane(xx, yy)
    valid = np.ones(truth.shape, bool)
    valid[20:26, 30:37] = False  # 3 m wide hole
    valid[40, 10] = False  # one-cell hole
    height = np.where(valid, truth, np.nan).astype(np.float32)
    filled_h, filled = fill_holes(height, valid, max_hole_px=8)
    assert filled.sum() == (~valid).sum()
    assert np.allclose(filled_h, truth, atol=1e-3)


def test_membrane_fill_does_not_ring_and_big_holes_stay_empty():
    g = _grid(40, 40, 1.0)
    rows, cols = g.shape
    height = np.zeros((rows, cols), np.float32)
    height[:, 20:] = 10.0  # a step edge (roof next to ground)
    valid = np.ones((rows, cols), bool)
    valid[10:14, 17:24] = False  # a 4-cell wide hole across the step
    valid[25:39, 2:16] = False  # a 14-cell wide hole: too big
    out, filled = fill_holes(np.where(valid, height, np.nan), valid, max_hole_px=6)
    assert filled[10:14, 17:24].all()
    # the wide hole stays empty (only its corners, narrower than the limit, may be filled)
    assert not filled[27:37, 4:14].any() and np.isnan(out[27:37, 4:14]).all()
    assert filled[25:39, 2:16].mean() < 0.15
    inside = out[10:14, 17:24]
    assert inside.min() >= 0.0 and inside.max() <= 10.0  # maximum principle: no overshoot


def test_empty_input_gives_nodata_never_invented():
    g = _grid(10, 10, 1.0)
    e = np.empty(0)
    out = rasterize({"x": e, "y": e, "z": e}, g)
    assert not out.valid.any() and np.isnan(out.height).all()
    assert np.all(out.with_nodata() == -9999.0)
    assert out.height.dtype == np.float32 and out.height.shape == g.shape


@pytest.mark.shared
def test_ign_lidar_against_ign_dsm(shared_data):
    import laspy
    import rasterio

    d = shared_data / "ign_montpellier"
    las = laspy.read(d / "test_data_77055_627760_LA93_IGN69.laz")
    pts = {"x": np.asarray(las.x), "y": np.asarray(las.y), "z": np.asarray(las.z),
           "classification": np.asarray(las.classification)}
    with rasterio.open(d / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif") as src:
        truth = src.read(1)
        g = GridSpec.from_bounds(tuple(src.bounds), src.res[0], "EPSG:2154", snap=False)
        assert g.transform.almost_equals(src.transform)
        truth_valid = truth != src.nodata
    out = rasterize(pts, g)
    assert out.height.shape == truth.shape
    both = out.valid & truth_valid
    assert both.mean() > 0.99
    e = out.height[both].astype(np.float64) - truth[both]
    assert abs(np.median(e) - 0.1) < 0.05  # IGN's DSM lies about 0.1 m below the highest return
    assert np.median(np.abs(e)) < 0.3


@pytest.mark.shared
def test_tin_reproduces_ign_dsm(shared_data):
    """IGN makes its LiDAR HD DSMs by linear interpolation on the triangulation of the points at the pixel
    centres (IGNF/las-digital-models): ``stat="tin"`` on IGN's six tiles gives IGN's DSM back."""
    import laspy
    import rasterio

    d = shared_data / "ign_montpellier"
    parts = [laspy.read(f) for f in sorted(d.glob("test_data_*.laz"))]
    pts = {k: np.concatenate([np.asarray(getattr(p, k)) for p in parts]) for k in ("x", "y", "z", "classification")}
    with rasterio.open(d / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif") as src:
        truth = src.read(1)
        g = GridSpec.from_bounds(tuple(src.bounds), src.res[0], "EPSG:2154", snap=False)
        truth_valid = truth != src.nodata
    out = rasterize(pts, g, RasterizeConfig(stat="tin"))
    assert (out.valid & truth_valid).sum() == truth_valid.sum()
    e = np.abs(out.height[truth_valid].astype(np.float64) - truth[truth_valid])
    assert np.median(e) < 1e-3 and np.mean(e < 0.01) > 0.97
    mx = rasterize(pts, g)  # the cell max is another product: about 0.1 m above, far off in trees
    both = truth_valid & mx.valid
    assert np.median(np.abs(mx.height[both] - truth[both])) > 0.05


@pytest.mark.parametrize("data", ["synthetic_city/points.laz", "ign_montpellier/test_data_77055_627760_LA93_IGN69.laz"])
@pytest.mark.parametrize("options", [(), ("--stat", "median", "--fill-max-hole", 3)], ids=["max", "median"])
def test_the_tile_size_does_not_change_the_dsm(tmp_path, cli, sample_data, data, options):
    """Default tiles (one tile here) and 40 m tiles give the same DSM and filled mask, cell for cell.

    Before, tile cells near their edge saw a truncated neighbourhood (outlier test, hole filling) and were
    blended in: 13 cells off by up to 0.088 m on the IGN tile, 600 cells by up to 1.3 m on the city."""
    outputs = []
    for extra in ((), ("--tile-size", 40)):
        out = tmp_path / f"dsm{len(extra)}.tif"
        result = cli("dsm", "--points", sample_data / data, "--resolution", 0.5, "--method", "raster", *options,
                     *extra, "-o", out)
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as a, rasterio.open(out.with_name(out.stem + "_filled.tif")) as f:
            outputs.append((a.read(1), f.read(1), a.tags()["tile_size"]))
    (a, fa, ta), (b, fb, tb) = outputs
    assert ta != tb and float(tb) == 40.0
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    assert (a != -9999).mean() > 0.9 and (fa == 1).sum() > 0
