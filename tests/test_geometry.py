"""Camera geometry: numpy cameras, batched torch projection / rays / plane homographies, shape checks.

Per op: smoke, exception (shape errors say expected vs actual), cardinality (batch shapes), analytic or
independent expectations, and gradcheck in float64.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch

from geoimplicit.errors import ShapeError
from geoimplicit.geometry import (
    AffineCamera,
    LocalFrame,
    PinholeCamera,
    affine_rays,
    apply_homography,
    camera_homography,
    camera_tensors,
    check_dtype,
    check_shape,
    homography_from_plane,
    look_at,
    pinhole_rays,
    project_affine,
    project_pinhole,
    unproject_affine,
    unproject_pinhole,
)

F64 = torch.float64
ORIGIN = np.array([770000.0, 6277000.0, 50.0])


def _cam(offset=(0.0, 0.0), alt=120.0, size=(48, 40), f=60.0) -> PinholeCamera:
    c = ORIGIN + [offset[0], offset[1], alt]
    R = look_at(c, ORIGIN + [offset[0] * 0.3, offset[1] * 0.3, 0.0], up=(0.0, 1.0, 0.0))
    ext = np.eye(4)
    ext[:3, :3], ext[:3, 3] = R, -R @ c
    K = np.array([[f, 0.3, (size[0] - 1) / 2 + 1.5], [0, f * 1.1, (size[1] - 1) / 2 - 2.0], [0, 0, 1]])
    return PinholeCamera(ext, K, 80.0, 160.0, *size)


def _affine() -> AffineCamera:
    P = np.array([[1.9146, -0.0418, 0.2518, -429709.0], [-0.1062, -1.887, 0.4825, 7886960.4]])
    return AffineCamera(P, 64, 64)


def _points(n=20, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ORIGIN + rng.uniform([-30, -30, -5], [30, 30, 25], (n, 3))


@pytest.mark.parametrize("name", ["cameras", "checks", "projection", "rays", "homography", "pose", "align"])
def test_docstring_examples(name):
    module = importlib.import_module(f"geoimplicit.geometry.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0, result


# ------------------------------------------------------------------------------------------------- checks
def test_check_shape_binds_names_and_batch():
    dims = check_shape(np.zeros((4, 2, 7, 3)), ["*", "N", 3], "xyz")
    assert dims == {"*": (4, 2), "N": 7}
    assert check_shape(np.zeros((7, 2)), ["N", 2], "uv", dims)["N"] == 7
    assert check_shape(np.zeros(3), ["*", 3])["*"] == ()


@pytest.mark.parametrize("shape, pattern, fragment", [
    ((5, 2), ["N", 3], "expected shape (N, 3), got (5, 2)"),
    ((3,), ["*", "N", 3], "got (3,)"),
    ((2, 3, 3), ["N", 3, 4], "got (2, 3, 3)"),
])
def test_check_shape_errors_say_expected_and_actual(shape, pattern, fragment):
    with pytest.raises(ShapeError) as info:
        check_shape(np.zeros(shape), pattern, "pts")
    assert fragment in str(info.value) and str(info.value).startswith("pts:")
    assert isinstance(info.value, ValueError)


def test_check_shape_same_name_must_agree():
    with pytest.raises(ShapeError, match=r"depth: expected shape \(N\) with N=7, got \(6,\)"):
        check_shape(np.zeros(6), ["N"], "depth", {"N": 7})
    with pytest.raises(ShapeError):
        check_shape(np.zeros((3, 4)), ["N", "N"])


def test_check_dtype():
    check_dtype(torch.zeros(2, dtype=F64), (torch.float32, torch.float64))
    with pytest.raises(ShapeError, match="expected dtype float64, got float32"):
        check_dtype(torch.zeros(2), torch.float64, "K")


# ------------------------------------------------------------------------------------------------- numpy cameras
def test_pinhole_project_unproject_round_trip_at_large_coordinates():
    cam = _cam((7.0, -4.0))
    X = _points()
    uv, depth = cam.project(X)
    np.testing.assert_allclose(cam.unproject(uv, depth), X, atol=1e-6)
    local = cam.with_origin(ORIGIN)
    uv2, d2 = local.project(X - ORIGIN)
    np.testing.assert_allclose(uv2, uv, atol=1e-7)
    np.testing.assert_allclose(d2, depth, atol=1e-9)


def test_pinhole_rays_pass_through_the_points():
    cam = _cam((5.0, 9.0)).with_origin(ORIGIN)
    X = _points() - ORIGIN
    uv, depth = cam.project(X)
    o, d = cam.rays(uv)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    s = np.einsum("ij,ij->i", X - o, d)
    np.testing.assert_allclose(o + s[:, None] * d, X, atol=1e-6)
    np.testing.assert_allclose(s * (d @ cam.R[2]), depth, atol=1e-6)  # ray length -> z_cam
    o_all, d_all = cam.rays()
    assert o_all.shape == d_all.shape == (cam.width * cam.height, 3)
    np.testing.assert_allclose(cam.project(o_all + 50 * d_all)[0][cam.width + 2], [2.0, 1.0], atol=1e-8)


def test_pinhole_scaled_resized_cropped_keep_pixel_centres():
    cam = _cam()
    X = _points()
    uv, _ = cam.project(X)
    # scale 2: pixel-is-area, centres at integers -> u' = (u + 0.5) * 2 - 0.5
    np.testing.assert_allclose(cam.scaled(2).project(X)[0], (uv + 0.5) * 2 - 0.5, atol=1e-8)
    small = cam.resized(24, 10)
    assert (small.width, small.height) == (24, 10)
    np.testing.assert_allclose(small.project(X)[0], (uv + 0.5) * [0.5, 0.25] - 0.5, atol=1e-8)
    crop = cam.cropped(5, 7, 20, 10)
    np.testing.assert_allclose(crop.project(X)[0], uv - [5, 7], atol=1e-8)
    assert (crop.width, crop.height) == (20, 10)


def test_pinhole_moved_by_a_world_motion():
    cam = _cam((3.0, 2.0))
    X = _points()
    a = 0.02
    M = np.eye(4)
    M[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    M[:3, 3] = [1.0, -2.0, 0.5]
    moved = cam.moved(np.linalg.inv(M))
    # the moved camera sees the moved points where the original saw the points
    uv, d = cam.project(X)
    uv2, d2 = moved.project(X @ M[:3, :3].T + M[:3, 3])
    np.testing.assert_allclose(uv2, uv, atol=1e-6)
    np.testing.assert_allclose(d2, d, atol=1e-6)
    np.testing.assert_allclose(moved.center, M[:3, :3] @ cam.center + M[:3, 3], atol=1e-6)


def test_camera_shape_errors():
    cam = _cam()
    with pytest.raises(ShapeError, match=r"xyz_world: expected shape \(N, 3\), got \(4, 2\)"):
        cam.project(np.zeros((4, 2)))
    with pytest.raises(ShapeError, match=r"depth: expected shape \(N\) with N=3"):
        cam.unproject(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ShapeError):
        _affine().rays(np.zeros((3, 3)))


def test_affine_project_unproject_rays():
    cam = _affine()
    X = np.array([315415.0, 4161774.0, 700.0]) + np.random.default_rng(1).uniform(-50, 50, (12, 3))
    uv, depth = cam.project(X)
    np.testing.assert_allclose(cam.unproject(uv, depth), X, atol=1e-5)
    o, d = cam.rays(uv)
    np.testing.assert_allclose(d, np.broadcast_to(cam.view_direction, d.shape))
    np.testing.assert_allclose(cam.project(o)[0], uv, atol=1e-6)  # every origin lies on its pixel's ray
    np.testing.assert_allclose(cam.project(o)[1], 0.0, atol=1e-6)  # at depth 0
    crop = cam.cropped(10, 4, 20, 30)
    np.testing.assert_allclose(crop.project(X)[0], uv - [10, 4], atol=1e-8)
    M_inv = np.eye(4)
    M_inv[:3, 3] = [-3.0, 0, 0]  # the world moved by +3 m east
    np.testing.assert_allclose(cam.moved(M_inv).project(X + [3.0, 0, 0])[0], uv, atol=1e-6)


def test_local_frame_round_trip():
    frame = LocalFrame(ORIGIN)
    X = _points()
    np.testing.assert_allclose(frame.to_world(frame.to_local(X)), X, atol=1e-9)
    cam = _cam()
    back = frame.world_camera(frame.camera(cam))
    np.testing.assert_allclose(back.extrinsic, cam.extrinsic, atol=1e-6)


def test_protocols():
    from geoimplicit.geometry import Camera, ProjectiveCamera

    assert isinstance(_cam(), ProjectiveCamera) and isinstance(_affine(), ProjectiveCamera)
    assert isinstance(_cam(), Camera)
    np.testing.assert_allclose(_affine().projection_matrix()[2], [0, 0, 0, 1])


# ------------------------------------------------------------------------------------------------- torch ops
def _batch(n_cams=3):
    cams = [_cam((5.0 * i, -3.0 * i)).with_origin(ORIGIN) for i in range(n_cams)]
    K = torch.tensor(np.stack([c.K for c in cams]), dtype=F64)
    E = torch.tensor(np.stack([c.extrinsic for c in cams]), dtype=F64)
    X = torch.tensor(np.stack([_points(8, i) - ORIGIN for i in range(n_cams)]), dtype=F64)
    return cams, K, E, X


def test_project_pinhole_batched_matches_numpy():
    cams, K, E, X = _batch()
    uv, depth = project_pinhole(K, E, X)
    assert uv.shape == (3, 8, 2) and depth.shape == (3, 8)
    for i, c in enumerate(cams):
        uv_np, d_np = c.project(X[i].numpy())
        np.testing.assert_allclose(uv[i].numpy(), uv_np, atol=1e-9)
        np.testing.assert_allclose(depth[i].numpy(), d_np, atol=1e-9)
    # one camera broadcast over a batch of point sets
    uv1, _ = project_pinhole(K[0], E[0], X)
    assert uv1.shape == (3, 8, 2)
    np.testing.assert_allclose(uv1[0].numpy(), uv[0].numpy())


def test_unproject_pinhole_inverts_projection():
    _, K, E, X = _batch()
    uv, depth = project_pinhole(K, E, X)
    torch.testing.assert_close(unproject_pinhole(K, E, uv, depth), X, atol=1e-8, rtol=0)
    with pytest.raises(ShapeError, match="uv"):
        unproject_pinhole(K, E, uv[..., :1], depth)
    with pytest.raises(ShapeError, match="depth"):
        unproject_pinhole(K, E, uv, depth[:, :5])
    with pytest.raises(ShapeError, match=r"K: expected shape \(\*, 3, 3\)"):
        project_pinhole(K[:, :2], E, X)


def test_pinhole_rays_batched_match_numpy():
    cams, K, E, X = _batch()
    uv, _ = project_pinhole(K, E, X)
    o, d = pinhole_rays(K, E, uv)
    assert o.shape == d.shape == (3, 8, 3)
    for i, c in enumerate(cams):
        o_np, d_np = c.rays(uv[i].numpy())
        np.testing.assert_allclose(o[i].numpy(), o_np, atol=1e-8)
        np.testing.assert_allclose(d[i].numpy(), d_np, atol=1e-10)


def test_affine_ops_match_numpy():
    cam = _affine().with_origin([315415.0, 4161774.0, 700.0])
    P = torch.tensor(cam.P, dtype=F64)
    X = torch.tensor(np.random.default_rng(2).uniform(-40, 40, (2, 6, 3)), dtype=F64)
    uv, depth = project_affine(P, X)
    assert uv.shape == (2, 6, 2) and depth.shape == (2, 6)
    uv_np, d_np = cam.project(X[1].numpy())
    np.testing.assert_allclose(uv[1].numpy(), uv_np, atol=1e-9)
    np.testing.assert_allclose(depth[1].numpy(), d_np, atol=1e-9)
    torch.testing.assert_close(unproject_affine(P, uv, depth), X, atol=1e-8, rtol=0)
    o, d = affine_rays(P, uv)
    np.testing.assert_allclose(o[1].numpy(), cam.rays(uv[1].numpy())[0], atol=1e-8)
    with pytest.raises(ShapeError, match=r"P: expected shape \(\*, 2, 4\)"):
        project_affine(P[:, :3], X)


def test_camera_tensors_match_numpy_and_move():
    cam = _cam((4.0, 1.0))
    ct = camera_tensors(cam, ORIGIN)
    local = cam.with_origin(ORIGIN)
    np.testing.assert_allclose(ct.P.numpy(), local.projection_matrix(), atol=1e-9)
    np.testing.assert_allclose(ct.center.numpy(), local.center, atol=1e-9)
    X = _points(5) - ORIGIN
    np.testing.assert_allclose(ct.project(torch.tensor(X))[0].numpy(), local.project(X)[0], atol=1e-9)
    o, d = ct.rays()
    assert o.shape == (cam.width * cam.height, 3)
    M_inv = np.eye(4)
    M_inv[:3, 3] = [0.5, -1.0, 2.0]
    np.testing.assert_allclose(ct.moved(torch.tensor(M_inv)).P.numpy(), local.moved(M_inv).P, atol=1e-9)
    at = camera_tensors(_affine(), [315415.0, 4161774.0, 700.0])
    assert at.kind == "affine" and at.K is None and at.rays()[0].shape == (64 * 64, 3)
    with pytest.raises(ValueError, match="image size"):
        camera_tensors(PinholeCamera(np.eye(4), np.eye(3), 1, 2))


# ------------------------------------------------------------------------------------------------- homographies
def test_plane_homography_matches_the_textbook_formula():
    """Source camera at [I | 0]: H = K_b (R - t n^T / d) K_a^-1 for the plane n . X = d (camera-a frame)."""
    rng = np.random.default_rng(3)
    Ka = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    Kb = np.array([[480.0, 0.5, 300], [0, 470, 250], [0, 0, 1]])
    w = rng.normal(size=3) * 0.1
    R = torch.linalg.matrix_exp(torch.tensor([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])).numpy()
    t = np.array([0.4, -0.2, 0.1])
    n = np.array([0.1, -0.2, 1.0])
    n /= np.linalg.norm(n)
    d = 7.0
    Pa = torch.tensor(Ka @ np.eye(3, 4), dtype=F64)
    Pb = torch.tensor(Kb @ np.c_[R, t], dtype=F64)
    H = homography_from_plane(Pa, Pb, torch.tensor(n, dtype=F64), torch.tensor(d, dtype=F64)).numpy()
    ref = Kb @ (R + np.outer(t, n) / d) @ np.linalg.inv(Ka)  # n.X = d  <=>  n.X / d = 1: X_b = (R + t n^T/d) X_a
    np.testing.assert_allclose(H / H[2, 2], ref / ref[2, 2], atol=1e-9)


@pytest.mark.parametrize("kind", ["pinhole", "affine"])
def test_plane_homography_maps_projections_of_plane_points(kind):
    if kind == "pinhole":
        a, b = _cam((0.0, 0.0)).with_origin(ORIGIN), _cam((20.0, -10.0)).with_origin(ORIGIN)
    else:
        P2 = _affine().P.copy()
        P2[0, 2] += 0.1
        a = _affine().with_origin([315415.0, 4161774.0, 700.0])
        b = AffineCamera(P2, 64, 64).with_origin([315415.0, 4161774.0, 700.0])
    n, d = np.array([0.05, 0.1, 1.0]), 12.0
    rng = np.random.default_rng(4)
    xy = rng.uniform(-20, 20, (10, 2))
    z = (d - xy @ n[:2]) / n[2]
    X = np.c_[xy, z]
    H = camera_homography(a, b, n, d)
    got = apply_homography(torch.tensor(H), torch.tensor(a.project(X)[0])).numpy()
    np.testing.assert_allclose(got, b.project(X)[0], atol=1e-6)


def test_homography_batched_and_shape_errors():
    _, K, E, _ = _batch(4)
    P = K @ E[:, :3]
    n = torch.tensor([[0.0, 0, 1]] * 4, dtype=F64)
    H = homography_from_plane(P[:1].expand(4, 3, 4), P, n, torch.full((4,), 5.0, dtype=F64))
    assert H.shape == (4, 3, 3)
    Hn = H / H[:, 2:, 2:]
    torch.testing.assert_close(Hn[0], torch.eye(3, dtype=F64), atol=1e-9, rtol=0)  # a camera onto itself
    with pytest.raises(ShapeError, match="P"):
        homography_from_plane(P[:, :2], P, n, torch.ones(4, dtype=F64))
    with pytest.raises(ShapeError, match="normal"):
        homography_from_plane(P, P, n[:, :2], torch.ones(4, dtype=F64))


# ------------------------------------------------------------------------------------------------- gradcheck
def test_gradcheck_projection_rays_homography():
    cams, K, E, X = _batch(2)
    X = X[:, :3].clone().requires_grad_()
    E = E.clone().requires_grad_()
    uv = project_pinhole(K, E, X)[0].detach().requires_grad_()
    depth = torch.full((2, 3), 100.0, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, x: project_pinhole(K, e, x), (E, X))
    assert torch.autograd.gradcheck(lambda e, u, z: unproject_pinhole(K, e, u, z), (E, uv, depth))
    assert torch.autograd.gradcheck(lambda e, u: pinhole_rays(K, e, u), (E, uv))
    P_aff = torch.tensor(_affine().with_origin([315415.0, 4161774.0, 700.0]).P, dtype=F64, requires_grad=True)
    Xa = torch.randn(4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(project_affine, (P_aff, Xa))
    assert torch.autograd.gradcheck(lambda p, u: affine_rays(p, u), (P_aff, uv[0]))
    P = (K @ E[:, :3]).detach().requires_grad_()
    n = torch.tensor([0.1, 0.0, 1.0], dtype=F64, requires_grad=True)
    d = torch.tensor(8.0, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, nn, dd: homography_from_plane(a, b, nn, dd), (P[0], P[1], n, d))
