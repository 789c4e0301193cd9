"""Adaptive plane heights (``FitConfig.plane_placement``) and the ray-entropy regulariser of the MPI fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoimplicit.mpi.demo import DEMO_ORIGIN, make_analytic_views

GROUND, ROOF = DEMO_ORIGIN[2], DEMO_ORIGIN[2] + 8.0  # the analytic scene's two levels (world heights)


def test_quantile_heights_of_a_two_level_distribution():
    from geoimplicit.mpi.fit import quantile_heights

    samples = np.r_[np.full(700, 2.0), np.full(300, 10.0)]  # 70 % ground at 2, 30 % roofs at 10
    h = quantile_heights(samples, 0.0, 20.0, 12, mix=1.0)
    assert h[0] == 20.0 and h[-1] == 0.0  # the range stays covered
    inner = h[1:-1]
    assert set(np.round(inner, 9)) == {2.0, 10.0}
    assert (inner == 2.0).sum() > (inner == 10.0).sum() >= 2  # more planes where more surface is
    h = quantile_heights(samples, 0.0, 20.0, 12, mix=0.5)
    assert np.all(np.diff(h) < 0)  # strictly apart with mix < 1
    np.testing.assert_allclose(quantile_heights(samples, 0.0, 20.0, 12, mix=0.0), np.linspace(20, 0, 12))


@pytest.fixture(scope="module")
def two_level_views(tmp_path_factory):
    return make_analytic_views(tmp_path_factory.mktemp("views2"), size=64, n_views=8, n_test=2, seed=2)


def test_adaptive_planes_land_at_the_scene_levels(two_level_views):
    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.mpi.fit import FitConfig, _load_images, _render_cameras, adaptive_geo_planes, scene_geometry

    vs = ViewSet.load(two_level_views)
    ids = vs.train_ids
    uni = scene_geometry(vs, FitConfig(layout="geo", planes=16), ids)
    cams = _render_cameras([vs.cameras[i].with_origin(uni.origin) for i in ids], "cpu")
    imgs = _load_images(vs, ids, 1.0, torch.device("cpu"))
    ada = adaptive_geo_planes(uni, cams, [imgs[i] for i in ids], torch.device("cpu"), mix=0.8)
    assert ada.num_planes == 16 and np.all(np.diff(ada.values) < 0)
    assert ada.values.max() == uni.values.max() and ada.values.min() == uni.values.min()
    np.testing.assert_allclose(ada.A[:, :2], uni.A[:, :2])  # same texture grid, only the heights move

    def near(ps, level, tol=1.5):
        return int(np.sum(np.abs(ps.values + ps.origin[2] - level) < tol))

    # uniform planes are ~3 m apart: one plane within 1.5 m of each level; adaptive ones crowd both levels
    assert near(uni, GROUND) <= 1 and near(uni, ROOF) <= 1
    assert near(ada, GROUND) >= 3 and near(ada, ROOF) >= 2
    gap = np.abs(ada.values[:, None] + ada.origin[2] - np.array([GROUND, ROOF])).min(0)
    assert np.all(gap < 0.5), gap


def test_adaptive_fit_saves_its_planes_and_config_errors(two_level_views, tmp_path):
    from geoimplicit.errors import ConfigError
    from geoimplicit.mpi.fit import FitConfig, fit_mpi
    from geoimplicit.mpi.scene import MPIScene

    cfg = FitConfig(layout="geo", planes=8, steps=4, plane_placement="adaptive", entropy_weight=0.01, device="cpu")
    res = fit_mpi(two_level_views, tmp_path / "m", cfg)
    assert np.isfinite(res.final_loss)
    scene = MPIScene.load(tmp_path / "m")
    vals = scene.planes.values
    assert len(vals) == 8 and np.all(np.diff(vals) < 0)
    assert not np.allclose(np.diff(vals), np.diff(vals)[0])  # not uniform
    fit_mpi(two_level_views, tmp_path / "f", FitConfig(planes=5, steps=1, layout="fronto", device="cpu"))
    disp = 1.0 / MPIScene.load(tmp_path / "f").planes.values  # the fronto layout stays uniform in disparity
    np.testing.assert_allclose(np.diff(disp), np.diff(disp)[0], rtol=1e-9)
    with pytest.raises(ConfigError):
        FitConfig(plane_placement="quantile").validate()


def test_ray_entropy_is_zero_for_one_opaque_plane_and_one_for_even_weights():
    from geoimplicit.mpi.composite import composite
    from geoimplicit.mpi.metrics import ray_entropy

    D, H, W = 8, 4, 4
    even = torch.full((D, H, W), 0.1)
    assert abs(float(ray_entropy(even, even.sum(0))) - 1.0) < 1e-5
    depth = torch.arange(1, D + 1, dtype=torch.float32)[:, None, None].expand(D, H, W)
    one = torch.zeros(D, H, W)
    one[3] = 50.0  # one opaque plane hides the rest
    out = composite(torch.rand(D, 3, H, W), one, depth)
    assert float(ray_entropy(out["weights"], out["opacity"])) < 1e-3
    two = torch.zeros(D, H, W)
    two[2] = np.log(2.0)  # alpha 0.5 over a spacing of 1, then an opaque plane: weights 0.5 / 0.5
    two[5] = 50.0
    out = composite(torch.rand(D, 3, H, W), two, depth)
    np.testing.assert_allclose(float(ray_entropy(out["weights"], out["opacity"])), np.log(2) / np.log(D), rtol=1e-4)


def test_union_extent_covers_every_train_view(two_level_views):
    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.mpi.fit import FitConfig, scene_geometry

    vs = ViewSet.load(two_level_views)
    ids = vs.train_ids
    nadir = scene_geometry(vs, FitConfig(layout="geo", planes=4), ids)
    union = scene_geometry(vs, FitConfig(layout="geo", planes=4, extent="union"), ids)
    assert union.resolution == nadir.resolution
    np.testing.assert_allclose(union.values, nadir.values)

    def box(ps):
        return ps.left, ps.left + ps.width * ps.resolution, ps.top - ps.height * ps.resolution, ps.top

    l, r, b, t = box(union)
    allpts = []
    for vid in ids:  # every pixel corner of every train view, on the top and bottom plane, lies on the texture
        cam = vs.cameras[vid].with_origin(union.origin)
        uv = np.array([[x, y] for x in (-0.5, cam.width - 0.5) for y in (-0.5, cam.height - 0.5)])
        for hz in (union.values.max(), union.values.min()):
            rays = np.c_[uv, np.ones(4)] @ np.linalg.inv(cam.K).T @ cam.R
            pts = cam.center + ((hz - cam.center[2]) / rays[:, 2])[:, None] * rays
            res = union.resolution
            assert np.all(pts[:, 0] >= l - 1e-6 * res) and np.all(pts[:, 0] <= r + res)
            assert np.all(pts[:, 1] >= b - res) and np.all(pts[:, 1] <= t + 1e-6 * res)
            allpts.append(pts)
    allpts = np.concatenate(allpts)  # and no margin: the footprints touch every side of the texture
    np.testing.assert_allclose([allpts[:, 0].min(), allpts[:, 1].max()], [l, t], atol=1e-6)
    np.testing.assert_allclose([allpts[:, 0].max(), allpts[:, 1].min()], [r, b], atol=union.resolution)


def test_opacity_tv_counts_opacity_edges():
    from geoimplicit.mpi.fit import opacity_tv

    gaps = torch.tensor([0.5, 2.0])
    flat = torch.full((2, 8, 8), 3.0)
    assert float(opacity_tv(flat, gaps)) == 0.0
    step = torch.zeros(2, 8, 8)
    step[:, :, 4:] = 50.0  # an opaque half on both planes: one edge between columns 3 and 4
    np.testing.assert_allclose(float(opacity_tv(step, gaps)), 1.0 / 7.0, rtol=1e-5)
    half = torch.zeros(1, 2, 2)
    half[0, 0, 0] = np.log(2.0)  # alpha 0.5 over a gap of 1 next to empty texels
    np.testing.assert_allclose(float(opacity_tv(half, torch.tensor([1.0]))), 0.5, rtol=1e-5)
