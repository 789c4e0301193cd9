"""The occupancy tile framing's shortcuts give numpy's and scipy's numbers exactly (issue 21: framing speed)."""

import numpy as np
import pytest
from scipy import ndimage

from bench.frame import former_cell_stats
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


def _resample_reference(imgf, transform, frame):
    """The per-cell affine map and stacking of the first implementation, for comparison."""
    import torch
    import torch.nn.functional as F

    xs, ys = frame.grid_cell_centres()
    inv = ~transform
    X, Y = np.meshgrid(xs, ys)
    col, row = inv.a * X + inv.b * Y + inv.c, inv.d * X + inv.e * Y + inv.f
    h, w = imgf.shape[1:]
    grid = torch.from_numpy(np.stack([(col / w) * 2 - 1, (row / h) * 2 - 1], -1).astype(np.float32))[None]
    out = F.grid_sample(torch.from_numpy(imgf)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)[0].numpy()
    valid = ((col >= 0) & (col <= w) & (row >= 0) & (row <= h)).astype(np.float32)
    return np.concatenate([out * valid[None], valid[None]], axis=0)


@pytest.mark.parametrize("rotated", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_resample_image_to_frame_is_the_per_cell_map(rotated, dtype):
    from affine import Affine

    from geoimplicit.dsm.occupancy.normalize import resample_image_to_frame

    rng = np.random.default_rng(2)
    frame = PatchFrame.from_bounds((770000, 6277000, 770040, 6277030), 0.0)
    transform = Affine.translation(769990, 6277035) @ Affine.scale(0.2, -0.2)  # covers part of the frame
    if rotated:
        transform = transform @ Affine.rotation(7.0)
    img = (rng.random((3, 150, 180)) * {"uint8": 255, "uint16": 4000, "float32": 3.0}[dtype]).astype(dtype)
    if dtype == "float32":
        img[0, 5, 5] = np.nan
    unit = img.astype(np.float32) / {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}[dtype]
    if dtype == "float32":
        unit = np.nan_to_num(unit / np.nanpercentile(unit, 99))
    out = np.full((4,) + frame.shape, -1.0, np.float32)
    assert resample_image_to_frame(img, transform, frame, out=out) is out
    assert np.array_equal(out, _resample_reference(unit, transform, frame))


@pytest.mark.parametrize("inside", ["some", "all", "none"])
def test_cell_stats_are_the_former_formula_and_count_the_point_cells(inside):
    from geoimplicit.dsm.occupancy.refine import cell_stats

    rng = np.random.default_rng(3)
    for res, rows, cols in ((0.5, 40, 30), (1 / 3, 7, 50), (0.25, 1, 1)):
        left, top, n = 770000.0, 6277000.0, 6000
        pad = {"some": 2.0, "all": -1e-9 * cols * res, "none": 0.0}[inside]
        x = left + rng.uniform(-pad, cols * res + pad, n)
        y = top - rng.uniform(-pad, rows * res + pad, n)
        if inside == "none":
            x += cols * res + 1
        else:
            x[:600] = left + np.round(rng.uniform(0, cols - 1, 600)) * res  # on the cell edges
        z = np.round(rng.normal(300, 20, n), 2)  # ties, so max/min pick among equal heights
        z[5] = np.nan
        got = cell_stats(x, y, z, left, top, rows, cols, res)
        assert got.dtype == np.float32 and got.shape == (4, rows, cols)
        assert np.array_equal(got, former_cell_stats(x, y, z, left, top, rows, cols, res), equal_nan=True)
        assert np.array_equal(got[3] > 0, point_cells(x, y, left, top, res, rows, cols))
    assert np.array_equal(cell_stats([], [], [], 0, 3, 3, 2, 1.0), former_cell_stats([], [], [], 0, 3, 3, 2, 1.0),
                          equal_nan=True)
