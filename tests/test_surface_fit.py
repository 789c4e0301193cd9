"""Surface fits on a tiny generated view set: geometry and colours improve, a fit resumes, bad input is refused
before anything is written, cameras are refined towards the truth, the CLI is one line per error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from geoimplicit.errors import CameraFileError, CRSMismatchError, InputFileNotFoundError, MissingCRSError

TINY = dict(renderer="idr", encoding="frequency", hidden=32, feature_size=16, rays_per_step=384, eikonal_samples=384,
            iso_count=256, iso_every=40, iso_start=40, trace_samples=32, trace_steps=24, device="cpu",
            progress_every=10, pose_warmup=40)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def city_views(tiny_view_city):
    return tiny_view_city


def _column_psnr_and_dsm(model_dir, views_dir, scene):
    from geoimplicit.geometry.tensors import camera_tensors
    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.surface.box import ray_box
    from geoimplicit.surface.model import load_surface
    from geoimplicit.surface.products import dsm_heights

    model = load_surface(model_dir)
    views = ViewSet.load(views_dir)
    lo, hi = model.box.tensors("cpu", torch.float64)
    mses = []
    for vid in views.test_ids:
        cam = views.cameras[vid]
        rgb, _ = model.render_camera(cam)
        o, d = camera_tensors(cam, model.box.origin).rays()
        col = ray_box(o, d, lo, hi)[2].reshape(cam.height, cam.width).numpy()
        mses.append(((rgb - views.read_image(vid)) ** 2).mean(2)[col].mean())
    left, _, _, top = scene.bounds
    rows, cols = scene.dsm.shape
    yy, xx = np.mgrid[0:rows:2, 0:cols:2]
    xy = np.stack([left + (xx.ravel() + 0.5) * scene.resolution, top - (yy.ravel() + 0.5) * scene.resolution], 1)
    h = dsm_heights(model, xy)
    ok = np.isfinite(h)
    err = np.abs(h[ok] - scene.dsm[yy.ravel()[ok], xx.ravel()[ok]])
    return -10 * np.log10(np.mean(mses)), float(np.median(err))


@pytest.fixture(scope="module")
def fitted(city_views, tmp_path_factory):
    from geoimplicit.surface.fit import fit_surface

    views, _ = city_views
    root = tmp_path_factory.mktemp("surface_fit")
    fit_surface(views, root / "start", {**TINY, "steps": 0})
    res = fit_surface(views, root / "fit", {**TINY, "steps": 200})
    return root, res


def test_fit_improves_colours_and_geometry(city_views, fitted):
    views, scene = city_views
    root, res = fitted
    psnr0, dsm0 = _column_psnr_and_dsm(root / "start", views, scene)
    psnr1, dsm1 = _column_psnr_and_dsm(root / "fit", views, scene)
    assert psnr1 > psnr0 + 3.0, (psnr0, psnr1)  # held-out views, rays inside the box
    assert dsm1 < dsm0, (dsm0, dsm1)
    assert {"model", "config", "iso_points", "summary"} <= set(res.outputs)


def test_fitted_outputs(city_views, fitted, tmp_path):
    import laspy

    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.surface.model import load_surface

    root, _ = fitted
    blob = torch.load(root / "fit" / "model.pt", weights_only=True)  # no pickled code in a model file
    assert blob["format"] == "geoimplicit-surface-1"
    model = load_surface(root / "fit")
    las = laspy.read(root / "fit" / "iso_points.laz")
    assert str(las.header.version) == "1.4" and len(las.points) > 50
    xyz = np.c_[las.x, las.y, las.z]
    lo, hi = model.box.lo + model.box.origin, model.box.hi + model.box.origin
    assert (xyz >= lo - 1e-3).all() and (xyz <= hi + 1e-3).all()  # world coordinates, inside the box
    f = model.sdf(torch.as_tensor(xyz - model.box.origin, dtype=torch.float32))
    assert float(f.detach().abs().max()) < 0.05  # on the zero level set
    from geoimplicit.surface.products import render_views

    out = render_views(root / "fit", views_dir_cams(city_views[0]), tmp_path / "render")
    vs = ViewSet.load(city_views[0])
    assert len(list(out["images"].glob("*.png"))) == len(vs.ids)


def views_dir_cams(views):
    return views / "Cams"


def test_fit_resumes_from_a_checkpoint(city_views, tmp_path):
    from geoimplicit.errors import CancelledError, OutputExistsError
    from geoimplicit.surface.fit import fit_surface

    views, _ = city_views
    cfg = {**TINY, "steps": 30, "checkpoint_every": 10, "iso_points": False}
    seen = []

    def cancel():
        return len(seen) >= 2

    with pytest.raises(CancelledError):
        fit_surface(views, tmp_path / "m", cfg, progress=lambda d, t, s, m: seen.append(d), cancel=cancel)
    assert (tmp_path / "m" / "checkpoint.pt").exists() and not (tmp_path / "m" / "model.pt").exists()
    steps_done = []
    res = fit_surface(views, tmp_path / "m", cfg, resume=True, progress=lambda d, t, s, m: steps_done.append(d))
    assert steps_done[0] == 30 or steps_done[0] > 20  # started from the checkpoint, not from 0
    assert res.steps == 30 and (tmp_path / "m" / "model.pt").exists()
    assert not (tmp_path / "m" / "checkpoint.pt").exists()
    with pytest.raises(OutputExistsError):
        fit_surface(views, tmp_path / "m", cfg)


def _copy(views, dst):
    shutil.copytree(views, dst)
    return dst


def test_bad_input_is_refused_before_anything_is_written(city_views, tmp_path):
    from geoimplicit.io.pointcloud import write_las
    from geoimplicit.surface.fit import fit_surface

    views, _ = city_views
    out = tmp_path / "model"
    no_crs = _copy(views, tmp_path / "no_crs")
    (no_crs / "crs.txt").unlink()
    with pytest.raises(MissingCRSError, match="crs.txt"):
        fit_surface(no_crs, out, TINY)
    bad_cam = _copy(views, tmp_path / "bad_cam")
    (bad_cam / "Cams" / "001.txt").write_text("extrinsic\n1 0 0\n")
    with pytest.raises(CameraFileError, match="001.txt"):
        fit_surface(bad_cam, out, TINY)
    with pytest.raises(InputFileNotFoundError):
        fit_surface(tmp_path / "nowhere", out, TINY)
    pts = tmp_path / "utm.laz"
    write_las(pts, {"x": np.array([500000.0, 500010.0]), "y": np.array([4800000.0, 4800010.0]),
                    "z": np.array([10.0, 12.0])}, "EPSG:32631")
    with pytest.raises(CRSMismatchError, match="reproject"):
        fit_surface(views, out, TINY, points=[pts])
    assert not out.exists()


def _perturb(cam, rng, angle_deg, shift_m):
    from geoimplicit.geometry.pose import so3_exp

    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    R_err = so3_exp(torch.as_tensor(axis * np.radians(angle_deg))).numpy()
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    c = cam.center + shift_m * direction
    R = cam.R @ R_err.T
    ext = np.eye(4)
    ext[:3, :3], ext[:3, 3] = R, -R @ c
    from dataclasses import replace

    return replace(cam, extrinsic=ext)


def test_points_constrain_the_surface(city_views, tmp_path):
    """SDF = 0 at given points: a fit with the scene's true surface points puts its DSM closer to the truth."""
    from geoimplicit.io.pointcloud import write_las
    from geoimplicit.surface.fit import fit_surface

    views, scene = city_views
    left, _, _, top = scene.bounds
    rng = np.random.default_rng(0)
    rows, cols = scene.dsm.shape
    r, c = rng.integers(0, rows, 3000), rng.integers(0, cols, 3000)
    pts = tmp_path / "pts.laz"
    write_las(pts, {"x": left + (c + 0.5) * scene.resolution, "y": top - (r + 0.5) * scene.resolution,
                    "z": scene.dsm[r, c]}, "EPSG:2154")
    cfg = {**TINY, "steps": 80, "iso_points": False, "renderer": "volume", "trace_samples": 24, "surface_samples": 8}
    fit_surface(views, tmp_path / "with", cfg, points=[pts])
    fit_surface(views, tmp_path / "without", cfg)
    _, with_pts = _column_psnr_and_dsm(tmp_path / "with", views, scene)
    _, without = _column_psnr_and_dsm(tmp_path / "without", views, scene)
    assert with_pts < without, (with_pts, without)


def test_cli_fit_render_dsm_points(city_views, tmp_path):
    import rasterio
    from click.testing import CliRunner

    from cli.main import cli

    views, _ = city_views
    runner = CliRunner()
    model = tmp_path / "m"
    res = runner.invoke(cli, ["surface", "fit", str(views), "-o", str(model), "--steps", "3", "--encoding",
                              "frequency", "--device", "cpu", "--no-iso-points"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["surface", "dsm", str(model), "-o", str(tmp_path / "dsm.tif"), "--resolution", "2",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "dsm.tif") as ds:
        assert ds.crs.to_epsg() == 2154 and ds.nodata == -9999.0
    res = runner.invoke(cli, ["surface", "points", str(model), "-o", str(tmp_path / "iso.las"), "--count", "100",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["surface", "render", str(model), "--cams", str(views / "Track"), "-o",
                              str(tmp_path / "r"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "r" / "Images").glob("*.png"))) == 2


def test_cli_bad_input_is_one_line(city_views, tmp_path):
    import subprocess
    import sys

    views = _copy(city_views[0], tmp_path / "v")
    (views / "crs.txt").unlink()
    proc = subprocess.run([sys.executable, "-m", "cli", "surface", "fit", str(views), "-o", str(tmp_path / "m")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "crs.txt" in lines[0], proc.stderr
    assert not (tmp_path / "m").exists()


def test_time_budget_stops_the_fit(city_views, tmp_path):
    from geoimplicit.surface.fit import fit_surface

    res = fit_surface(city_views[0], tmp_path / "m", {**TINY, "steps": 10000, "time_budget_s": 0.5,
                                                      "iso_points": False})
    assert 1 <= res.steps < 10000 and (tmp_path / "m" / "model.pt").exists()
