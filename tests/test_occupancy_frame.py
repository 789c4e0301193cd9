"""The occupancy tile framing's shortcuts give numpy's and scipy's numbers exactly (issue 21: framing speed)."""

import numpy as np
import pytest
from scipy import ndimage

from geoimplicit.dsm.occupancy.normalize import PatchFrame, low_percentile
from geoimplicit.dsm.occupancy.support import near_cells, point_cells


@pytest.mark.parametrize("n", [10, 8192, 9001, 250_000])
@pytest.mark.parametrize("kind", ["normal", "ties", "sorted", "flat", "nan"])
def test_low_percentile_is_numpys_bit_for_bit(n, kind):
    rng = np.random.default_rng(n)
    a = {"normal": lambda: rng.normal(300, 20, n), "ties": lambda: np.round(rng.normal(300, 20, n), 1),
         "sorted": lambda: np.sort(rng.exponential(5, n)), "flat": lambda: np.full(n, 3.25),
         "nan": lambda: rng.normal(0, 1, n)}[kind]()
    if kind == "flat":
        a[rng.integers(0, n, 5)] = -1.0
    if kind == "nan":
        a[n // 2] = np.nan
    for q in (0.0, 1.0, 5.0, 5.5, 25.0, 60.0):
        assert np.array_equal(low_percentile(a, q), np.percentile(a, q), equal_nan=True)


def test_points_to_local_is_the_per_axis_conversion():
    rng = np.random.default_rng(0)
    x, y, z = rng.uniform(770000, 770160, 5000), rng.uniform(6277000, 6277160, 5000), rng.normal(300, 30, 5000)
    frame = PatchFrame.from_bounds((770000, 6277000, 770160, 6277160), 290.123, metres_per_unit=0.3048)
    pts = frame.points_to_local(x, y, z)
    assert pts.dtype == np.float32 and pts.flags.c_contiguous
    assert np.array_equal(pts, np.concatenate([frame.xy_to_local(x, y), frame.z_to_local(z)[:, None]], 1))


def test_point_cells_are_the_floored_points_in_range():
    rng = np.random.default_rng(1)
    for res, rows, cols in ((0.5, 40, 30), (1 / 3, 7, 50), (0.25, 1, 1)):
        left, top = 770000.0, 6277000.0
        x = left + rng.uniform(-2, cols * res + 2, 4000)
        y = top - rng.uniform(-2, rows * res + 2, 4000)
        x[:400] = left + np.round(rng.uniform(-2, cols + 2, 400)) * res  # on the cell edges
        c, r = np.floor((x - left) / res).astype(int), np.floor((top - y) / res).astype(int)
        ok = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
        expected = np.zeros((rows, cols), bool)
        expected[r[ok], c[ok]] = True
        assert np.array_equal(point_cells(x, y, left, top, res, rows, cols), expected)


@pytest.mark.parametrize("radius", [1.0, 1.5, np.sqrt(50), 7.9999, 16.0, 8 / 0.3048 / 0.5])
@pytest.mark.parametrize("density", [0.002, 0.05, 0.5, 0.95])
def test_near_cells_is_the_thresholded_distance_transform(radius, density):
    rng = np.random.default_rng(int(density * 1000))
    for shape in ((1, 1), (1, 40), (37, 1), (64, 80), (200, 150)):
        has = rng.random(shape) < density
        has ^= ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=4)  # holes in blobs
        expected = has if has.all() or not has.any() else ndimage.distance_transform_edt(~has) <= radius
        assert np.array_equal(near_cells(has, radius), expected)


@pytest.mark.parametrize("subcells", [1, 3])
def test_cell_queries_are_every_sample_point_converted(subcells):
    from geoimplicit.dsm.occupancy.extract import subcell_offsets
    from geoimplicit.dsm.occupancy.infer import _cell_queries

    left, top, res, rows, cols = 770000.0, 6277160.0, 0.5, 30, 20
    frame = PatchFrame.from_bounds((left - 16, top - rows * res - 16, left + cols * res + 16, top + 16), 0.0)
    off = subcell_offsets(subcells, res)
    X, Y = np.meshgrid(left + (np.arange(cols) + 0.5) * res, top - (np.arange(rows) + 0.5) * res)
    expected = frame.xy_to_local((X.ravel()[:, None] + off[None, :, 0]).ravel(),
                                 (Y.ravel()[:, None] + off[None, :, 1]).ravel())
    assert np.array_equal(_cell_queries(frame, left, top, rows, cols, res, off), expected)
