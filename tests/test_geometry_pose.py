"""Pose corrections (exponential maps, CameraOptimizer, gauge) and camera-set alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoimplicit.errors import ConfigError, ShapeError
from geoimplicit.geometry import (
    CameraOptimizer,
    CameraOptimizerConfig,
    PinholeCamera,
    align_points,
    camera_tensors,
    invert_rigid,
    look_at,
    pose_errors,
    se3_exp,
    skew,
    so3_exp,
    so3_log,
    transform_camera,
)

F64 = torch.float64


def _twist_matrix(xi: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(4, 4, dtype=xi.dtype)
    out[:3, :3] = skew(xi[:3])
    out[:3, 3] = xi[3:]
    return out


@pytest.mark.parametrize("scale", [0.0, 1e-9, 1e-4, 0.3, 2.5])
def test_exponential_maps_match_the_matrix_exponential(scale):
    xi = torch.tensor([0.3, -0.5, 0.8, 1.0, 2.0, -0.7], dtype=F64) * scale
    torch.testing.assert_close(so3_exp(xi[:3]), torch.linalg.matrix_exp(skew(xi[:3])), atol=1e-12, rtol=0)
    torch.testing.assert_close(se3_exp(xi), torch.linalg.matrix_exp(_twist_matrix(xi)), atol=1e-12, rtol=0)
    R = so3_exp(xi[:3])
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(so3_log(R), xi[:3], atol=1e-9, rtol=0)


def test_exponential_maps_batched_and_checked():
    w = torch.randn(5, 2, 3, dtype=F64)
    assert so3_exp(w).shape == (5, 2, 3, 3) and se3_exp(torch.randn(4, 6, dtype=F64)).shape == (4, 4, 4)
    M = se3_exp(torch.randn(3, 6, dtype=F64))
    torch.testing.assert_close(invert_rigid(M) @ M, torch.eye(4, dtype=F64).expand(3, 4, 4), atol=1e-12, rtol=0)
    with pytest.raises(ShapeError, match=r"xi: expected shape \(\*, 6\), got \(3, 5\)"):
        se3_exp(torch.zeros(3, 5, dtype=F64))
    with pytest.raises(ShapeError, match="w"):
        so3_exp(torch.zeros(4, dtype=F64))


def test_exponential_maps_gradcheck_at_zero_and_away():
    for xi in (torch.zeros(6, dtype=F64), torch.tensor([0.2, -0.1, 0.3, 1.0, 0.5, -2.0], dtype=F64)):
        xi = xi.clone().requires_grad_()
        assert torch.autograd.gradcheck(se3_exp, (xi,))
        assert torch.autograd.gradcheck(lambda w: so3_exp(w), (xi[:3].detach().clone().requires_grad_(),))


def _cameras(n=5, seed=0):
    rng = np.random.default_rng(seed)
    cams = []
    for i in range(n):
        c = np.r_[rng.uniform(-30, 30, 2), 100.0 + rng.uniform(-5, 5)]
        R = look_at(c, [0.0, 0.0, 0.0], up=(0.0, 1.0, 0.0))
        ext = np.eye(4)
        ext[:3, :3], ext[:3, 3] = R, -R @ c
        cams.append(PinholeCamera(ext, [[80.0, 0, 31.5], [0, 80, 31.5], [0, 0, 1]], 60.0, 140.0, 64, 64))
    return cams


def _optimizer(mode="SO3xR3", gauge="none", cams=None, **kw):
    cams = cams or _cameras()
    cfg = CameraOptimizerConfig(mode=mode, gauge=gauge, **kw)
    return CameraOptimizer(cfg, np.array([c.center for c in cams]), 1.0 / 80, 100.0 / 80), cams


@pytest.mark.parametrize("mode", ["SO3xR3", "SE3"])
def test_rotation_is_about_the_camera_centre_translation_moves_it(mode):
    opt, cams = _optimizer(mode)
    with torch.no_grad():
        opt.pose_adjustment[1, :3] = torch.tensor([2.0, -1.0, 3.0], dtype=F64)  # pixels
        opt.pose_adjustment[2, 3:] = torch.tensor([0.8, 0.0, -0.4], dtype=F64)
    m_inv = opt.motion_inverses_numpy()
    rot = cams[1].moved(m_inv[1])
    np.testing.assert_allclose(rot.center, cams[1].center, atol=1e-9)  # rotation about the centre
    angle = np.degrees(np.linalg.norm([2.0, -1.0, 3.0]) / 80)
    from geoimplicit.geometry import rotation_angle_deg

    assert abs(rotation_angle_deg(rot.R, cams[1].R) - angle) < 1e-9
    moved = cams[2].moved(m_inv[2])
    np.testing.assert_allclose(moved.center - cams[2].center, np.array([0.8, 0.0, -0.4]) * 100 / 80, atol=1e-9)
    np.testing.assert_allclose(moved.R, cams[2].R, atol=1e-12)  # no rotation
    np.testing.assert_allclose(m_inv[0], np.eye(4), atol=0)  # untouched cameras


def test_apply_matches_numpy_moved_and_is_differentiable():
    opt, cams = _optimizer("SE3")
    with torch.no_grad():
        opt.pose_adjustment.copy_(torch.randn(5, 6, dtype=F64))
    ct = opt.apply(camera_tensors(cams[3]), 3)
    np.testing.assert_allclose(ct.P.detach().numpy(), cams[3].moved(opt.motion_inverses_numpy()[3]).P, atol=1e-9)
    X = torch.tensor([[1.0, 2.0, 3.0], [-5.0, 4.0, 10.0]], dtype=F64)
    ct.project(X)[0].sum().backward()
    g = opt.pose_adjustment.grad
    assert g[3].abs().sum() > 0 and g[[0, 1, 2, 4]].abs().sum() == 0


def test_gradcheck_motions():
    p = torch.randn(5, 6, dtype=F64, requires_grad=True)
    for mode in ("SO3xR3", "SE3"):
        opt, _ = _optimizer(mode)
        assert torch.autograd.gradcheck(lambda x: CameraOptimizer.motions(_with(opt, x)), (p,))


def _with(opt, x):
    class View:  # the optimizer's maths with a given parameter tensor
        pose_adjustment = x
        mask, rotation_scale, translation_scale, pivots, config = (opt.mask, opt.rotation_scale,
                                                                   opt.translation_scale, opt.pivots, opt.config)
        corrections = CameraOptimizer.corrections
    return View()


def test_gauge_mean_removes_a_common_similarity_and_keeps_relative_errors():
    opt, cams = _optimizer("SO3xR3", gauge="mean")
    centres = np.array([c.center for c in cams])
    r = centres - centres.mean(0)
    theta, tau, s = np.array([0.002, -0.001, 0.003]), np.array([0.5, -0.3, 0.2]), 0.01
    delta = np.cross(theta, r) + tau + s * r
    common = np.c_[np.tile(theta, (5, 1)) * 80, delta * 80 / 100]  # in pixels
    relative = np.zeros((5, 6))
    relative[2, :3] = [0.5, 0.0, 0.0]
    relative[4, 3:] = [0.0, 0.7, 0.0]
    with torch.no_grad():
        opt.pose_adjustment.copy_(torch.tensor(common + relative))
    opt.project_gauge_()
    left = opt.pose_adjustment.detach().numpy()
    # what is left has no common similarity and is close to the relative part minus its own common part
    opt_rel, _ = _optimizer("SO3xR3", gauge="mean", cams=cams)
    with torch.no_grad():
        opt_rel.pose_adjustment.copy_(torch.tensor(relative))
    opt_rel.project_gauge_()
    np.testing.assert_allclose(left, opt_rel.pose_adjustment.detach().numpy(), atol=1e-9)
    assert np.abs(left).max() > 0.3  # the relative errors are not removed with the gauge
    opt_common, _ = _optimizer("SO3xR3", gauge="mean", cams=cams)
    with torch.no_grad():
        opt_common.pose_adjustment.copy_(torch.tensor(common))
    opt_common.project_gauge_()
    np.testing.assert_allclose(opt_common.pose_adjustment.detach().numpy(), 0.0, atol=1e-9)  # all gauge: nothing left
    opt.project_gauge_()  # idempotent
    np.testing.assert_allclose(opt.pose_adjustment.detach().numpy(), left, atol=1e-12)
    # what is left is orthogonal to the gauge: no mean displacement, no net rotation, no net scaling
    omega, delta = left[:, :3] / 80, left[:, 3:] * 100 / 80
    L2 = (r**2).sum(1).mean()
    np.testing.assert_allclose(delta.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose((L2 * omega + np.cross(r, delta)).sum(0), 0.0, atol=1e-10)
    assert abs((r * delta).sum()) < 1e-10


def test_gauge_first_holds_camera_zero_and_config_errors():
    opt, cams = _optimizer("SO3xR3", gauge="first", rot_weight=1.0)
    with torch.no_grad():
        opt.pose_adjustment.fill_(1.0)
    np.testing.assert_allclose(opt.motion_inverses_numpy()[0], np.eye(4), atol=0)
    assert not np.allclose(opt.motion_inverses_numpy()[1], np.eye(4))
    assert abs(float(opt.regularisation().detach()) - 3.0 * 4 / 5) < 1e-12  # 4 free cameras x 3 squared pixels, mean over 5
    off, _ = _optimizer("off")
    ct = camera_tensors(cams[0])
    assert off.apply(ct, 0) is ct and not off.enabled
    with pytest.raises(ConfigError, match="pose mode"):
        CameraOptimizerConfig(mode="SE2").validate()
    with pytest.raises(ConfigError, match="gauge"):
        CameraOptimizerConfig(gauge="last").validate()
    with pytest.raises(ShapeError, match="pivots"):
        CameraOptimizer(CameraOptimizerConfig(), np.zeros((3, 2)))


def test_align_points_and_pose_errors_recover_a_known_similarity():
    cams = _cameras(6, seed=2)
    from geoimplicit.geometry import Similarity

    a = 0.3
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    sim = Similarity(1.7, R, np.array([10.0, -4.0, 2.0]))
    moved = [transform_camera(c, sim) for c in cams]
    fit = align_points(np.array([c.center for c in cams]), np.array([c.center for c in moved]))
    assert abs(fit.scale - 1.7) < 1e-9
    np.testing.assert_allclose(fit.R, R, atol=1e-9)
    np.testing.assert_allclose(fit.t, sim.t, atol=1e-8)
    err = pose_errors(moved, cams)  # aligned: the same cameras
    assert err["mean_rotation_deg"] < 1e-6 and err["mean_centre"] < 1e-6
    raw = pose_errors(moved, cams, align="none")
    assert raw["mean_rotation_deg"] > 10 and raw["mean_centre"] > 10
    # a known perturbation of one camera shows up as that camera's error
    bad = list(cams)
    bad[2] = PinholeCamera(cams[2].moved(np.linalg.inv(se3_exp(torch.tensor([0, 0, 0, 0.0, 0.0, 1.0],
                                                                               dtype=F64)).numpy())).extrinsic,
                           cams[2].K, 60, 140, 64, 64)
    err = pose_errors(bad, cams, align="none")
    assert abs(err["centre"][2] - 1.0) < 1e-9 and max(err["centre"][i] for i in (0, 1, 3, 4, 5)) < 1e-9


def test_scene_pivot_rotation_keeps_the_looked_at_point_and_orbits_the_centre():
    from geoimplicit.geometry import camera_optimizer

    cams = _cameras()
    opt = camera_optimizer(CameraOptimizerConfig(mode="SO3xR3", gauge="none"), cams)
    depth = np.array([0.5 * (c.depth_min + c.depth_max) for c in cams])
    look = np.array([c.center + d * c.R[2] for c, d in zip(cams, depth)])
    np.testing.assert_allclose(opt.pivots.numpy(), look, atol=1e-9)
    np.testing.assert_allclose(opt.translation_scale.numpy(), depth / 80.0)
    w = np.array([1.5, -2.0, 0.5])  # pixels: 1 / f radians each
    with torch.no_grad():
        opt.pose_adjustment[1, :3] = torch.tensor(w, dtype=F64)
    moved = cams[1].moved(opt.motion_inverses_numpy()[1])
    uv0, _ = cams[1].project(look[1:2])
    uv1, _ = moved.project(look[1:2])
    np.testing.assert_allclose(uv1, uv0, atol=1e-9)  # the pivot stays where the image saw it
    omega = w / 80.0  # the centre turns about the pivot: |c' - p| = |c - p|, moved by about omega x (c - p)
    np.testing.assert_allclose(np.linalg.norm(moved.center - look[1]), depth[1], rtol=1e-12)
    np.testing.assert_allclose(moved.center - cams[1].center, np.cross(omega, cams[1].center - look[1]),
                               atol=depth[1] * np.dot(omega, omega))


def test_gauge_mean_with_scene_pivots_removes_a_world_similarity():
    from geoimplicit.geometry import camera_optimizer

    cams = _cameras()
    opt = camera_optimizer(CameraOptimizerConfig(mode="SO3xR3", gauge="mean"), cams)
    piv, cen = opt.pivots.numpy(), opt.centres.numpy()
    m = piv.mean(0)
    theta, tau, s = np.array([0.001, -0.002, 0.0015]), np.array([0.4, -0.2, 0.3]), 0.004
    delta = np.cross(theta, piv - m) + tau + s * (cen - m)
    common = np.c_[np.tile(theta, (5, 1)) / opt.rotation_scale.numpy()[:, None],
                   delta / opt.translation_scale.numpy()[:, None]]
    # first order: these corrections move every camera as the world similarity would
    moved = [c.moved(mi) for c, mi in zip(cams, _motion_inverses(opt, common))]
    world = m + (1 + s) * (cen - m) @ so3_exp(torch.tensor(theta)).numpy().T + tau
    np.testing.assert_allclose(np.array([c.center for c in moved]), world, atol=0.02)
    relative = np.zeros((5, 6))
    relative[3, 3:] = [1.0, -0.5, 0.0]
    with torch.no_grad():
        opt.pose_adjustment.copy_(torch.tensor(common + relative))
    opt.project_gauge_()
    left = opt.pose_adjustment.detach().numpy()
    opt_rel = camera_optimizer(CameraOptimizerConfig(mode="SO3xR3", gauge="mean"), cams)
    with torch.no_grad():
        opt_rel.pose_adjustment.copy_(torch.tensor(relative))
    opt_rel.project_gauge_()
    np.testing.assert_allclose(left, opt_rel.pose_adjustment.detach().numpy(), atol=1e-9)
    assert np.abs(left[3, 3:]).max() > 0.5  # a camera's own error is not taken for the gauge


def _motion_inverses(opt, p):
    with torch.no_grad():
        opt.pose_adjustment.copy_(torch.tensor(p))
    return opt.motion_inverses_numpy()


def test_pose_lr_schedule_and_config_checks():
    opt, _ = _optimizer("SO3xR3", gauge="mean", warmup=10, lr=0.2)
    assert opt.lr_at(9, 0.5) == 0.0 and opt.lr_at(10, 0.5) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="pivot"):
        CameraOptimizerConfig(pivot="centre").validate()


def test_perturb_camera_is_exact_and_align_cameras_removes_a_known_similarity():
    from geoimplicit.geometry import Similarity, align_cameras, camera_errors, perturb_camera

    cams = _cameras(6, seed=3)
    rng = np.random.default_rng(5)
    bad = [perturb_camera(c, rng, 0.3, 3.0) for c in cams]
    err = camera_errors(bad, cams)
    assert err["max_rotation_deg"] == pytest.approx(0.3, abs=1e-9) and err["mean_rotation_deg"] == pytest.approx(0.3)
    assert err["max_centre"] == pytest.approx(3.0, abs=1e-9) and err["mean_centre"] == pytest.approx(3.0)
    R = so3_exp(torch.tensor([0.01, -0.02, 0.3], dtype=F64)).numpy()
    sim = Similarity(1.7, R, np.array([500.0, -20.0, 3.0]))
    moved = [transform_camera(c, sim) for c in cams]  # the same images in another gauge
    fit = align_cameras(moved, cams)
    again = camera_errors(moved, cams, fit)
    assert again["max_rotation_deg"] < 1e-9 and again["max_centre"] < 1e-8
    assert fit.scale == pytest.approx(1 / 1.7)
