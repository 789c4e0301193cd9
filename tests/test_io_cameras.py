"""Camera files: parsing (whitespace/comma), errors naming file and line, round trips, projection, local origins."""

from __future__ import annotations

import numpy as np
import pytest

from geoimplicit.errors import CameraFileError, InputFileNotFoundError
from geoimplicit.io.cameras import (
    AffineCamera,
    PinholeCamera,
    ViewSet,
    read_affine_cameras,
    read_camera,
    write_camera,
)


def rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def oblique_camera(center, tilt=0.3, yaw=0.7, f=800.0, size=512):
    """A camera at world ``center`` looking down (OpenCV axes), tilted and turned."""
    # nadir: camera z = world -z, camera x = world x, camera y = world -y
    R_nadir = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])
    R = rot_x(tilt) @ R_nadir @ rot_z(yaw)
    ext = np.eye(4)
    ext[:3, :3] = R
    ext[:3, 3] = -R @ np.asarray(center, dtype=np.float64)
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]])
    return PinholeCamera(ext, K, 400.0, 900.0, size, size)


TEXT = """extrinsic
1 0 0 0
0 -1 0 0
0 0 -1 600
0 0 0 1

intrinsic
1000 0 256
0 1000 256
0 0 1

500 700
"""


def test_read_whitespace(tmp_path):
    p = tmp_path / "000.txt"
    p.write_text(TEXT)
    cam = read_camera(p)
    assert cam.extrinsic.dtype == np.float64
    assert cam.depth_min == 500 and cam.depth_max == 700
    np.testing.assert_allclose(cam.center, [0, 0, 600])
    uv, depth = cam.project(np.array([[10.0, 20.0, 0.0]]))
    # X_cam = (10, -20, 600): u = 256 + 1000*10/600, v = 256 - 1000*20/600
    np.testing.assert_allclose(uv, [[256 + 10000 / 600, 256 - 20000 / 600]])
    np.testing.assert_allclose(depth, [600])


def test_read_commas_tabs_and_mvsnet_depth(tmp_path):
    text = TEXT.replace(" ", ", ").replace("500, 700", "500\t2.5\t81\t700")
    p = tmp_path / "cam.txt"
    p.write_text(text.replace("\n", "\r\n"))
    cam = read_camera(p)
    assert cam.depth_min == 500 and cam.depth_max == 700
    np.testing.assert_allclose(cam.intrinsic[0], [1000, 0, 256])


@pytest.mark.parametrize(
    "mutate, line, fragment",
    [
        (lambda t: t.replace("extrinsic", "extrinsics"), 1, "expected 'extrinsic'"),
        (lambda t: t.replace("0 0 -1 600", "0 0 -1"), 4, "3 values"),
        (lambda t: t.replace("0 1000 256", "0 abc 256"), 9, "not a number"),
        (lambda t: t.replace("500 700", "700 500"), 12, "depth range"),
        (lambda t: t.replace("\n500 700\n", "\n"), 11, "missing"),
        (lambda t: t.replace("1 0 0 0", "2 0 0 0"), 2, "orthonormal"),
    ],
)
def test_malformed_names_file_and_line(tmp_path, mutate, line, fragment):
    p = tmp_path / "bad_cam.txt"
    p.write_text(mutate(TEXT))
    with pytest.raises(CameraFileError) as err:
        read_camera(p)
    msg = str(err.value)
    assert "bad_cam.txt" in msg and f"line {line}" in msg and fragment in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(InputFileNotFoundError):
        read_camera(tmp_path / "nope.txt")


def test_round_trip_17_digits(tmp_path):
    rng = np.random.default_rng(3)
    cam = oblique_camera([770123.456789012, 6277456.78901234, 650.123456789])
    cam.intrinsic[0, 2] += rng.random() / 3
    p = write_camera(tmp_path / "c.txt", cam)
    back = read_camera(p)
    assert np.array_equal(back.extrinsic, cam.extrinsic)  # bit-exact
    assert np.array_equal(back.intrinsic, cam.intrinsic)
    assert back.depth_min == cam.depth_min and back.depth_max == cam.depth_max
    np.testing.assert_allclose(back.center, cam.center, rtol=0, atol=1e-8)


def test_with_origin_keeps_projections():
    center = np.array([770150.0, 6277020.0, 650.0])
    cam = oblique_camera(center)
    rng = np.random.default_rng(0)
    pts = np.array([770000.0, 6277000.0, 50.0]) + rng.uniform(-100, 100, (200, 3))
    uv, depth = cam.project(pts)
    origin = np.array([770000.0, 6277000.0, 50.0])
    local = cam.with_origin(origin)
    uv2, depth2 = local.project(pts - origin)
    assert np.max(np.abs(uv - uv2)) < 1e-6
    assert np.max(np.abs(depth - depth2)) < 1e-6
    # float32 on local coordinates stays sub-pixel-exact; float32 on raw eastings does not
    xc32 = (pts - origin).astype(np.float32) @ local.R.T.astype(np.float32) + local.t.astype(np.float32)
    uv32 = (xc32 @ local.K.T.astype(np.float32))[:, :2] / (xc32 @ local.K.T.astype(np.float32))[:, 2:]
    assert np.max(np.abs(uv32 - uv)) < 0.05
    np.testing.assert_allclose(local.center + origin, cam.center, atol=1e-8)


def test_unproject_inverts_project():
    cam = oblique_camera([10.0, 20.0, 600.0])
    pts = np.array([[0.0, 0.0, 0.0], [30.0, -12.0, 40.0]])
    uv, depth = cam.project(pts)
    np.testing.assert_allclose(cam.unproject(uv, depth), pts, atol=1e-9)


def test_scaled_pixel_centres():
    cam = oblique_camera([0.0, 0.0, 600.0], size=512)
    half = cam.scaled(0.5)
    assert half.width == 256
    pts = np.array([[5.0, 7.0, 1.0]])
    uv, _ = cam.project(pts)
    uv2, _ = half.project(pts)
    np.testing.assert_allclose(uv2, (uv + 0.5) * 0.5 - 0.5, atol=1e-9)


def test_affine_camera_origin_and_direction():
    P = np.array([[1.9, -0.04, 0.25, -429709.0], [-0.1, -1.88, 0.48, 7886960.0]])
    cam = AffineCamera(P, 1000, 1000)
    d = cam.view_direction
    assert d[2] < 0
    np.testing.assert_allclose(P[:, :3] @ d, 0, atol=1e-12)
    pts = np.array([[315400.0, 4161800.0, 700.0], [315500.0, 4161700.0, 600.0]])
    origin = np.array([315400.0, 4161800.0, 700.0])
    uv, _ = cam.project(pts)
    uv2, _ = cam.with_origin(origin).project(pts - origin)
    assert np.max(np.abs(uv - uv2)) < 1e-6


@pytest.mark.shared
def test_read_affine_cameras_picanteo(shared_data):
    cams = read_affine_cameras(shared_data / "derived" / "affine_cameras_picanteo.json")
    assert set(cams) >= {"pre_event_img1.tif", "post_event_img2.tif"}
    cam = cams["pre_event_img1.tif"]
    assert cam.P.shape == (2, 4) and cam.width == 1000 and cam.crs == "EPSG:32637"
    # the centre of the fit box projects inside the 1000x1000 crop
    uv, _ = cam.project(np.array([[315415.0, 4161774.0, 700.0]]))
    assert np.all((uv > -200) & (uv < 1200)), uv


def test_affine_json_errors(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("{not json")
    with pytest.raises(CameraFileError, match="a.json"):
        read_affine_cameras(p)
    p.write_text('{"images": {"x.tif": {"P": [[1, 2, 3]]}}}')
    with pytest.raises(CameraFileError, match="2x4"):
        read_affine_cameras(p)


def _write_viewset(root, n=5, split="2\n0 2\n2\n1 3\n"):
    from PIL import Image

    (root / "Images").mkdir(parents=True)
    (root / "Cams").mkdir()
    (root / "Track").mkdir()
    for i in range(n):
        Image.fromarray(np.full((12, 16, 3), 40 * i, np.uint8)).save(root / "Images" / f"{i:03d}.png")
        write_camera(root / "Cams" / f"{i:03d}.txt", oblique_camera([i, 0.0, 600.0], size=16))
    write_camera(root / "Track" / "000.txt", oblique_camera([0.5, 0.0, 600.0]))
    if split is not None:
        (root / "view_split.txt").write_text(split)
    (root / "crs.txt").write_text("EPSG:2154\n")


def test_viewset_load(tmp_path):
    _write_viewset(tmp_path)
    vs = ViewSet.load(tmp_path)
    assert vs.ids == ["000", "001", "002", "003", "004"]
    assert vs.train_ids == ["000", "002"] and vs.test_ids == ["001", "003"]
    assert vs.cameras["001"].width == 16 and vs.cameras["001"].height == 12
    assert len(vs.track) == 1
    assert vs.read_image("004").shape == (12, 16, 3)
    assert vs.crs is not None and "2154" in str(getattr(vs.crs, "to_epsg", lambda: vs.crs)())


def test_viewset_split_defaults_and_errors(tmp_path):
    _write_viewset(tmp_path / "a", split="3\n0 1 4\n")
    vs = ViewSet.load(tmp_path / "a")
    assert vs.test_ids == ["002", "003"]
    _write_viewset(tmp_path / "b", split="2\n0 9\n")
    with pytest.raises(CameraFileError, match="view_split.txt"):
        ViewSet.load(tmp_path / "b")
    _write_viewset(tmp_path / "c")
    (tmp_path / "c" / "Cams" / "003.txt").unlink()
    with pytest.raises(CameraFileError, match="003"):
        ViewSet.load(tmp_path / "c")


def test_camera_classes_come_from_the_geometry_module_and_cams_folder_round_trips(tmp_path):
    import geoimplicit.geometry as geometry
    from geoimplicit.errors import OutputExistsError
    from geoimplicit.io.cameras import read_cameras_dir, write_cameras_dir

    assert PinholeCamera is geometry.PinholeCamera and AffineCamera is geometry.AffineCamera
    cams = {"000": oblique_camera([770000.0, 6277000.0, 600.0]), "007": oblique_camera([770010.0, 6277020.0, 650.0], size=32)}
    write_cameras_dir(tmp_path / "Cams", cams)
    back = read_cameras_dir(tmp_path / "Cams")
    assert list(back) == ["000", "007"]
    for k in cams:
        np.testing.assert_array_equal(back[k].extrinsic, cams[k].extrinsic)  # 17 digits: exact
        np.testing.assert_array_equal(back[k].intrinsic, cams[k].intrinsic)
    with pytest.raises(OutputExistsError):
        write_cameras_dir(tmp_path / "Cams", cams)
    write_cameras_dir(tmp_path / "Cams", {"001": cams["000"]}, overwrite=True)
    assert [p.name for p in (tmp_path / "Cams").iterdir()] == ["001.txt"]
