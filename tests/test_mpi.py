"""MPI renderer, fitting and CLI: analytic checks, a tiny fitted scene, round trips, clean errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from tests.conftest import assert_clean_error

from geoimplicit.io.cameras import AffineCamera, PinholeCamera, ViewSet, write_camera
from geoimplicit.mpi.composite import composite, render_mpi, sample_planes
from geoimplicit.mpi.demo import DEMO_ORIGIN, look_at_camera, make_analytic_views
from geoimplicit.mpi.planes import fronto_planes, geo_planes
from geoimplicit.geometry import camera_tensors
from geoimplicit.mpi.warp import plane_homographies

ORIGIN = np.array([770000.0, 6277000.0, 50.0])


def _nadir(offset=(0.0, 0.0), size=32, f=40.0, alt=100.0):
    c = ORIGIN + np.array([offset[0], offset[1], alt])
    return look_at_camera(c, ORIGIN + np.array([offset[0] * 0.5, offset[1] * 0.5, 0]), f, size, size, (80.0, 120.0))


def test_opaque_front_plane_composites_to_itself():
    cam = _nadir()
    planes = fronto_planes(cam.with_origin(ORIGIN), 6)
    mpi = torch.rand(6, 4, planes.height, planes.width)
    mpi[:, 3] = torch.rand(6, planes.height, planes.width)  # arbitrary behind
    mpi[0, 3] = 1e4  # opaque front plane
    out = render_mpi(mpi, planes.A, camera_tensors(cam, ORIGIN))
    torch.testing.assert_close(out["rgb"], mpi[0, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["opacity"], torch.ones(32, 32), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["depth"].numpy(), planes.values[0], rtol=1e-5)


def test_reference_camera_is_identity_warp():
    cam = _nadir(offset=(7.0, -3.0))
    planes = fronto_planes(cam.with_origin(ORIGIN), 4)
    warp = plane_homographies(planes.A, camera_tensors(cam, ORIGIN))
    for d in range(4):
        H = warp.Hinv[d].numpy()
        # up to the projective scale (1 / depth), the map from reference pixels to the texture is the identity
        np.testing.assert_allclose(H / H[2, 2], np.eye(3), atol=1e-9)
    mpi = torch.rand(4, 4, 32, 32)
    samples, depth, _ = sample_planes(mpi, warp)
    torch.testing.assert_close(samples, mpi[warp.order], atol=1e-5, rtol=0)
    np.testing.assert_allclose(depth[:, 5, 9].numpy(), np.sort(planes.values), rtol=1e-5)


def test_warp_and_inverse_round_trip():
    ref, other = _nadir(), _nadir(offset=(15.0, 8.0))
    planes = fronto_planes(ref.with_origin(ORIGIN), 5)
    Ha = torch.linalg.inv(plane_homographies(planes.A, camera_tensors(other, ORIGIN)).Hinv)  # texture -> other
    Hb = plane_homographies(planes.A, camera_tensors(other, ORIGIN)).Hinv  # other -> texture
    eye = (Hb @ Ha).numpy()
    for d in range(5):
        np.testing.assert_allclose(eye[d] / eye[d][2, 2], np.eye(3), atol=1e-9)
    # and against direct projection of the plane points
    ab = np.array([[3.0, 4.0], [20.0, 27.0]])
    for d in range(5):
        X = planes.plane_points(d, ab)
        uv, z = other.with_origin(ORIGIN).project(X)
        q = Ha[d].numpy() @ np.c_[ab, np.ones(2)].T
        np.testing.assert_allclose((q[:2] / q[2]).T, uv, atol=1e-7)
        np.testing.assert_allclose(q[2], z, rtol=1e-10)


def test_affine_homography_matches_projection():
    P = np.array([[1.9146, -0.0418, 0.2518, -429709.0], [-0.1062, -1.887, 0.4825, 7886960.4]])
    cam = AffineCamera(P, 64, 64)
    origin = np.array([315415.0, 4161774.0, 700.0])
    planes = geo_planes((-20, -20, 20, 20), 1.0, -50.0, 100.0, 4, origin=origin)
    rc = camera_tensors(cam, origin)
    warp = plane_homographies(planes.A, rc)
    Hf = torch.linalg.inv(warp.Hinv).numpy()
    ab = np.array([[0.0, 0.0], [10.0, 33.0], [39.0, 5.0]])
    for d in range(4):
        X = planes.plane_points(d, ab)
        uv, depth = cam.project(X + origin)
        q = Hf[d] @ np.c_[ab, np.ones(3)].T
        np.testing.assert_allclose((q[:2] / q[2]).T, uv, atol=1e-6)
        pd = warp.depth_rows[d].numpy() @ np.c_[uv, np.ones(3)].T
        np.testing.assert_allclose(pd + cam.view_direction @ origin, depth, atol=1e-6)
    # the highest plane is in front for a downward-looking affine camera
    assert int(warp.order[0]) == 0


def test_nadir_orthographic_render_gives_heights():
    from geoimplicit.mpi.render import nadir_camera

    planes = geo_planes((-8, -8, 8, 8), 1.0, 0.0, 6.0, 4, origin=ORIGIN)  # heights 6, 4, 2, 0
    mpi = torch.zeros(4, 4, 16, 16)
    mpi[3, :3] = 0.2
    mpi[3, 3] = 1e4
    mpi[1, :3] = 0.9
    mpi[1, 3, 4:8, 4:10] = 1e4  # a roof at 4 m
    cam = nadir_camera(ORIGIN[0] - 8, ORIGIN[1] + 8, 1.0, 16, 16)
    out = render_mpi(mpi, planes.A, camera_tensors(cam, ORIGIN))
    height = -(out["depth"].numpy() + cam.view_direction @ ORIGIN)
    assert np.allclose(height[4:8, 4:10], ORIGIN[2] + 4.0, atol=1e-3)
    assert np.allclose(height[12:, 12:], ORIGIN[2], atol=1e-3)
    assert np.allclose(out["rgb"][0, 5, 5].item(), 0.9, atol=1e-4)


def test_composite_matches_numpy():
    rng = np.random.default_rng(1)
    D, H, W = 5, 3, 4
    rgb = rng.random((D, 3, H, W))
    dens = rng.random((D, H, W)) * 0.3
    depth = np.cumsum(rng.random((D, H, W)) + 0.5, axis=0)
    out = composite(torch.tensor(rgb), torch.tensor(dens), torch.tensor(depth))
    T, acc = np.ones((H, W)), np.zeros((3, H, W))
    for i in range(D):
        delta = depth[i + 1] - depth[i] if i < D - 1 else 1e6
        a = 1 - np.exp(-dens[i] * delta)
        acc += T * a * rgb[i]
        T = T * (1 - a)
    np.testing.assert_allclose(out["rgb"].numpy(), acc, atol=1e-5)
    np.testing.assert_allclose(out["opacity"].numpy(), 1 - T, atol=1e-5)


@pytest.mark.parametrize("n_in, n_out", [(3, 10), (13, 50), (250, 994), (7, 7)])
def test_bilinear_matrix_matches_interpolate(n_in, n_out):
    """The fit's upsampling matrices give F.interpolate's bilinear weights, edges and uneven ratios included."""
    from geoimplicit.mpi.model import bilinear_matrix

    x = torch.randn(2, 3, n_in, n_in + 2, dtype=torch.float64)
    ref = torch.nn.functional.interpolate(x, size=(n_out, n_out + 5), mode="bilinear", align_corners=False)
    uh = bilinear_matrix(n_in, n_out).double()
    uw = bilinear_matrix(n_in + 2, n_out + 5).double()
    np.testing.assert_allclose((uh @ x @ uw.T).numpy(), ref.numpy(), atol=1e-6)
    assert torch.allclose(uh.sum(1), torch.ones(n_out, dtype=torch.float64))


@pytest.mark.parametrize("share", [0.0, 0.8])
def test_direct_generator_fused_activation_matches_autograd(share):
    """DirectMPI's one-pass activation (and its hand-written backward) against the plain sliced expression."""
    from geoimplicit.mpi.model import DirectMPI, MPIGenerator

    torch.manual_seed(0)
    m = DirectMPI(5, 9, 11, density_scale=2.5)
    with torch.no_grad():
        for g in m.grids:
            g.normal_()
    m.colour_share = share
    w = torch.randn(5, 4, 9, 11)
    got = m()
    grads = torch.autograd.grad((got * w).sum(), list(m.parameters()))
    ref = MPIGenerator.forward(m)  # sigmoid / softplus of raw(), through autograd
    ref_grads = torch.autograd.grad((ref * w).sum(), list(m.parameters()))
    torch.testing.assert_close(got, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_upsample_bilinear_cuda_matches_interpolate_and_gradient():
    from geoimplicit.mpi.model import upsample_bilinear

    tf32_setting = torch.backends.cuda.matmul.allow_tf32
    x = torch.randn(8, 4, 63, 65, device="cuda", requires_grad=True)
    g = torch.randn(8, 4, 250, 257, device="cuda")
    ref = torch.nn.functional.interpolate(x, size=(250, 257), mode="bilinear", align_corners=False)
    (gref,) = torch.autograd.grad((ref * g).sum(), x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = upsample_bilinear(x, (250, 257))
    (ggot,) = torch.autograd.grad((got * g).sum(), x)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max().item() < 2e-3 * ref.abs().max().item()  # TF32 products
    assert (ggot - gref).abs().max().item() < 2e-3 * gref.abs().max().item()
    assert torch.backends.cuda.matmul.allow_tf32 == tf32_setting  # the global setting is restored


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    return make_analytic_views(tmp_path_factory.mktemp("views"), size=40, n_views=8, n_test=2, seed=2)


@pytest.fixture(scope="module")
def fitted(views, tmp_path_factory):
    from geoimplicit.mpi.fit import FitConfig, fit_mpi

    out = tmp_path_factory.mktemp("model")
    res = fit_mpi(views, out, FitConfig(planes=10, steps=120, device="cpu"), overwrite=True)
    return out, res


def test_tiny_scene_fit_reaches_psnr(views, fitted):
    from geoimplicit.mpi.evaluate import evaluate_views

    model_dir, res = fitted
    assert res.train_psnr > 26.0, res
    report = evaluate_views(model_dir, views, model_dir.parent / "eval", device="cpu")
    assert report["mean"]["psnr"] > 23.0, report["mean"]
    assert (model_dir.parent / "eval" / "index.html").exists()
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["planes"] == 10 and cfg["layout"] == "fronto"


def test_a_perturbed_test_camera_is_aligned_back_to_the_fitted_scene(views, fitted, tmp_path, cli):
    """A held-out camera turned and moved by a known amount: aligning it to the fitted MPI brings it back
    towards the true one and the render towards the true image; ``nvs eval --align-poses`` reports both."""
    import shutil

    from geoimplicit.geometry.align import camera_errors, perturb_camera
    from geoimplicit.io.cameras import write_camera
    from geoimplicit.mpi.evaluate import align_pose_to_scene
    from geoimplicit.mpi.scene import MPIScene

    model_dir, _ = fitted
    vs = ViewSet.load(views)
    vid = vs.test_ids[0]
    true_cam, image = vs.cameras[vid], vs.read_image(vid)
    off = perturb_camera(true_cam, np.random.default_rng(5), 2.0, 1.0)
    before = camera_errors([off], [true_cam])["mean_reprojection_px"]
    assert before > 1.0  # pixels: an error the render shows
    scene = MPIScene.load(model_dir, "cpu")
    aligned = align_pose_to_scene(scene, off, image, steps=150)
    after = camera_errors([aligned], [true_cam])["mean_reprojection_px"]
    assert after < 0.25 * before, (before, after)

    moved = tmp_path / "views"
    shutil.copytree(views, moved)
    write_camera(moved / "Cams" / f"{vid}.txt", off)
    r = cli("nvs", "eval", model_dir, moved, "-o", tmp_path / "ev", "--align-poses", "150", "--device", "cpu")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    row = next(v for v in report["views"] if v["id"] == vid)
    assert row["psnr"] > row["psnr_given_pose"] + 1.0, row
    assert report["test_pose_alignment_steps"] == 150 and row["pose_shift_px"] > 0.5 * before


def test_fit_resume_and_refuse_overwrite(views, tmp_path):
    from geoimplicit.errors import OutputExistsError
    from geoimplicit.mpi.fit import FitConfig, fit_mpi

    calls = []
    cfg = FitConfig(planes=4, steps=6, checkpoint_every=3, progress_every=1, device="cpu")

    def cancel_after_4():
        return len(calls) >= 4

    from geoimplicit.errors import CancelledError

    with pytest.raises(CancelledError):
        fit_mpi(views, tmp_path / "m", cfg, progress=lambda *a: calls.append(a), cancel=cancel_after_4)
    assert (tmp_path / "m" / "checkpoint.pt").exists()
    res = fit_mpi(views, tmp_path / "m", cfg, resume=True, progress=lambda *a: calls.append(a))
    assert (tmp_path / "m" / "model.pt").exists() and res.steps == 6
    with pytest.raises(OutputExistsError):
        fit_mpi(views, tmp_path / "m", cfg)


def test_refine_cameras_writes_cameras(views, tmp_path):
    from geoimplicit.io.cameras import read_camera
    from geoimplicit.mpi.fit import FitConfig, fit_mpi

    res = fit_mpi(views, tmp_path / "m", FitConfig(planes=4, steps=5, refine_cameras=True, layout="geo", device="cpu"))
    vs = ViewSet.load(views)
    refined = [read_camera(tmp_path / "m" / "cameras" / f"{i}.txt") for i in vs.train_ids]
    given = [vs.cameras[i] for i in vs.train_ids]

    def looked_at(c):  # the pose corrections' pivot: mid depth on the axis
        return c.center + 0.5 * (c.depth_min + c.depth_max) * c.R[2]

    moved = np.array([looked_at(r) - looked_at(g) for r, g in zip(refined, given)])
    assert np.abs(moved).max() > 1e-6  # refined
    np.testing.assert_allclose(moved.mean(0), 0.0, atol=1e-5)  # gauge mean: no common shift
    assert len(list((tmp_path / "m" / "cameras").glob("*.txt"))) == len(vs.train_ids)
    assert "cameras" in res.outputs


def test_refine_rounds_are_fits_in_a_row_from_the_cameras_before_and_resume_skips_finished_rounds(views, tmp_path):
    """Two rounds = a one-round fit, then a one-round fit of the views with the cameras it refined."""
    import shutil

    from geoimplicit.io.cameras import read_cameras_dir, write_camera
    from geoimplicit.mpi.fit import FitConfig, fit_mpi

    cfg = dict(planes=4, steps=6, refine_cameras=True, layout="geo", device="cpu")
    calls = []
    fit_mpi(views, tmp_path / "two", FitConfig(**cfg, refine_rounds=2), progress=lambda *a: calls.append(a[:2]))
    assert calls[-1] == (12, 12) and sorted(calls) == calls  # one progress over both rounds
    fit_mpi(views, tmp_path / "first", FitConfig(**cfg, refine_rounds=1))
    chained = tmp_path / "views_refined"
    shutil.copytree(views, chained)
    for vid, cam in read_cameras_dir(tmp_path / "first" / "cameras").items():
        write_camera(chained / "Cams" / f"{vid}.txt", cam)
    fit_mpi(chained, tmp_path / "second", FitConfig(**cfg, refine_rounds=1))
    two, second = read_cameras_dir(tmp_path / "two" / "cameras"), read_cameras_dir(tmp_path / "second" / "cameras")
    first_round = read_cameras_dir(tmp_path / "two" / "rounds" / "round_1" / "cameras")
    for vid in two:
        np.testing.assert_allclose(first_round[vid].P, read_cameras_dir(tmp_path / "first" / "cameras")[vid].P)
        np.testing.assert_allclose(two[vid].P, second[vid].P, rtol=1e-9, atol=1e-9)
    assert not (tmp_path / "two" / "rounds" / "round_1" / "model.pt").exists()  # only the round's cameras kept

    done = tmp_path / "two" / "rounds" / "round_1" / "round.json"
    stamp = done.stat().st_mtime_ns
    (tmp_path / "two" / "model.pt").unlink()  # as if killed in the last round
    calls.clear()
    fit_mpi(views, tmp_path / "two", FitConfig(**cfg, refine_rounds=2), resume=True,
            progress=lambda *a: calls.append(a[:2]))
    assert done.stat().st_mtime_ns == stamp and calls[0][0] > 6  # round 1 not fitted again
    for vid, cam in read_cameras_dir(tmp_path / "two" / "cameras").items():
        np.testing.assert_allclose(cam.P, second[vid].P, rtol=1e-9, atol=1e-9)


def test_cli_round_trip(views, fitted, cli, tmp_path):
    model_dir, _ = fitted
    if importlib.util.find_spec("imageio_ffmpeg") is None:  # an install without it (the GPU machine): clean error
        r = cli("nvs", "render", model_dir, "--cams", views / "Track", "-o", tmp_path / "r", "--video")
        assert_clean_error(r, "imageio-ffmpeg", "leave out --video", code=1)
        assert not (tmp_path / "r").exists()
        r = cli("nvs", "render", model_dir, "--cams", views / "Track", "-o", tmp_path / "r")
        assert r.exit_code == 0, r.output
    else:
        r = cli("nvs", "render", model_dir, "--cams", views / "Track", "-o", tmp_path / "r", "--video")
        assert r.exit_code == 0, r.output
        assert (tmp_path / "r" / "track.mp4").stat().st_size > 0 and (tmp_path / "r" / "track.gif").exists()
    assert len(list((tmp_path / "r" / "Images").glob("*.png"))) == 8
    from PIL import Image

    depth = np.array(Image.open(tmp_path / "r" / "Depths" / "000.tiff"))
    assert depth.dtype == np.float32 and 70 < np.median(depth) < 130
    r = cli("nvs", "eval", model_dir, views, "-o", tmp_path / "e")
    assert r.exit_code == 0 and "psnr" in r.stdout, r.output
    r = cli("nvs", "render", model_dir, "--cams", views / "Track", "-o", tmp_path / "r")
    assert_clean_error(r, "already exists", "--overwrite")
    r = cli("nvs", "fit", views, "-o", tmp_path / "g", "--planes", "4", "--steps", "3", "--layout", "geo",
            "--device", "cpu", "--geo-products", "--colour-share", "0.8", "--extent", "union")
    assert r.exit_code == 0, r.output
    import json

    saved = json.loads((tmp_path / "g" / "config.json").read_text())
    assert saved["colour_share"] == 0.8 and saved["extent"] == "union"
    import rasterio

    with rasterio.open(tmp_path / "g" / "height.tif") as ds:
        assert ds.crs.to_epsg() == 2154 and ds.nodata == -9999
        assert abs(ds.transform.c - DEMO_ORIGIN[0]) < 200


def test_cli_malformed_camera_clean_error(views, fitted, cli, tmp_path):
    model_dir, _ = fitted
    bad = tmp_path / "cams"
    bad.mkdir()
    (bad / "000.txt").write_text("extrinsic\n1 0 0\n")
    r = cli("nvs", "render", model_dir, "--cams", bad, "-o", tmp_path / "r")
    assert_clean_error(r, "000.txt", "line 2")
    r = cli("nvs", "fit", tmp_path / "nope", "-o", tmp_path / "m")
    assert_clean_error(r, "nope")
    r = cli("nvs", "fit", views, "-o", tmp_path / "rr", "--refine-rounds", "2", "--device", "cpu")
    assert_clean_error(r, "--refine-rounds", "--refine-cameras")
    assert not (tmp_path / "rr").exists()  # refused before anything was written
    r = cli("nvs", "fit", views, "-o", tmp_path / "rr", "--planes", "4", "--steps", "2", "--device", "cpu",
            "--refine-cameras", "--refine-rounds", "2")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "rr" / "rounds").iterdir()) == ["round_1"]
    assert (tmp_path / "rr" / "cameras").is_dir()
    r = cli("nvs", "render", tmp_path, "--cams", bad, "-o", tmp_path / "r2")
    assert_clean_error(r, "model.pt")


def test_coarse_to_fine_schedule():
    """Block size 2^k falls from coarse_levels to 0 over the coarse share; refining cameras turns it on."""
    from geoimplicit.mpi.fit import FitConfig, coarse_level

    refine = FitConfig(refine_cameras=True)
    assert [coarse_level(refine, f) for f in (0.0, 0.13, 0.25, 0.49, 0.5, 0.9)] == [4, 3, 2, 1, 0, 0]
    assert {coarse_level(FitConfig(), f) for f in (0.0, 0.3, 0.9)} == {0}
    own = FitConfig(coarse_to_fine=0.25, coarse_levels=2)
    assert [coarse_level(own, f) for f in (0.0, 0.2, 0.3)] == [2, 1, 0]
    with pytest.raises(Exception, match="coarse_to_fine"):
        FitConfig(coarse_to_fine=1.5).validate()


def test_coarse_loss_compares_block_means():
    """At level k the L1 term is that of the 2^k x 2^k block means of render and view."""
    from geoimplicit.mpi.fit import FitConfig, _view_loss

    gen = torch.Generator().manual_seed(0)
    render, view = torch.rand(3, 16, 24, generator=gen), torch.rand(3, 16, 24, generator=gen)
    cfg = FitConfig(ssim_weight=0.0, smooth_weight=0.0, entropy_weight=0.0, l1_weight=1.0)
    blocks = lambda x: x.reshape(3, 4, 4, 6, 4).mean((2, 4))  # noqa: E731
    got = _view_loss({"rgb": render}, view, cfg, 1.0, level=2)
    torch.testing.assert_close(got, (blocks(render) - blocks(view)).abs().mean())
    torch.testing.assert_close(_view_loss({"rgb": render}, view, cfg, 1.0), (render - view).abs().mean())


@pytest.mark.parametrize("empty_alpha", [0.02, 0.002])
def test_start_empty_alpha_sets_the_haze_above_the_sweep_surface(views, tmp_path, empty_alpha):
    """A 0-step geo fit is the plane-sweep start: every texel has one nearly opaque plane and every other plane
    has alpha ``empty_alpha`` (alpha = 1 - exp(-density x its gap to the next plane))."""
    from geoimplicit.mpi.fit import FitConfig, fit_mpi
    from geoimplicit.mpi.prior.surface import plane_gaps
    from geoimplicit.mpi.scene import MPIScene

    fit_mpi(views, tmp_path / "m", FitConfig(planes=12, steps=0, layout="geo", empty_alpha=empty_alpha,
                                             device="cpu"), overwrite=True)
    scene = MPIScene.load(tmp_path / "m")
    gaps = torch.as_tensor(plane_gaps(scene.planes), dtype=torch.float32)[:, None, None]
    alpha = 1.0 - torch.exp(-scene.mpi()[:-1, 3] * gaps[:-1])  # the backdrop plane's gap is nominal
    winner = alpha > 0.5
    assert 0.5 < winner.float().sum(0).float().mean() <= 1.0  # about one opaque plane per texel line
    np.testing.assert_allclose(alpha[~winner].numpy(), empty_alpha, rtol=0.02)


def test_empty_alpha_out_of_range_is_a_config_error():
    from geoimplicit.errors import ConfigError
    from geoimplicit.mpi.fit import FitConfig

    with pytest.raises(ConfigError, match="empty_alpha"):
        FitConfig(empty_alpha=0.0).validate()
