"""Synthetic scene generator: determinism, analytic truths, defect fractions, files in real CRSs, views."""

from __future__ import annotations

import json
import math

import laspy
import numpy as np
import pytest
import rasterio

from geoimplicit.synthetic import (
    BUILDING,
    GROUND,
    VEGETATION,
    degrade_points,
    generate_city,
    sample_points,
    scene_bounds,
    write_city,
)
from tests.conftest import assert_clean_error


@pytest.fixture(scope="module")
def scene():
    return generate_city(8, bounds=scene_bounds(96.0, crs="EPSG:2154"), building_density=0.35,
                         roof_mix=(0.5, 0.25, 0.25))


def _files(folder):
    """The files of a generated scene (GDAL's .aux.xml sidecars, which viewers such as QGIS leave beside a raster
    they computed statistics of, are not)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".aux.xml"))


def test_same_seed_same_files_different_seed_different(tmp_path):
    kw = dict(points=True, views=False, density=4.0)
    outs = []
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        scene = generate_city(seed, bounds=scene_bounds(48.0, crs="EPSG:2154"))
        write_city(scene, tmp_path / name, seed=seed, **kw)
        outs.append(tmp_path / name)
    a, b, c = ([p.relative_to(o) for p in _files(o)] for o in outs)
    assert a == b == c and len(a) == 8  # + truth_mesh.ply
    for rel in a:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    for rel in ("truth_dsm.tif", "points.laz", "ortho.tif"):
        assert (outs[0] / rel).read_bytes() != (outs[2] / rel).read_bytes(), rel


def test_scene_has_varied_buildings_and_trees(scene):
    roofs = {b["roof"] for b in scene.buildings}
    shapes = {b["shape"] for b in scene.buildings}
    assert len(scene.buildings) >= 5 and len(scene.trees) >= 3
    assert len(roofs) >= 2 and "rect" in shapes
    counts = np.bincount(scene.classes.ravel(), minlength=7)
    assert counts[GROUND] > 0 and counts[BUILDING] > 0 and counts[VEGETATION] > 0
    assert set(np.unique(scene.classes)) <= {GROUND, VEGETATION, BUILDING}
    assert scene.ortho.shape == (3,) + scene.shape and scene.ortho.dtype == np.uint8
    assert 0.0 < scene.shadow.mean() < 0.5


def test_flat_roof_height_is_building_height_above_terrain(scene):
    flats = [b for b in scene.buildings if b["roof"] == "flat" and b["structure"] is None]
    if not flats:
        pytest.skip("no plain flat roof in this scene")
    for bld in flats:
        row, col = scene.pixel_of(bld["cx"], bld["cy"])
        if not (0 <= row < scene.shape[0] and 0 <= col < scene.shape[1]) or scene.building_id[row, col] != bld["id"]:
            continue
        assert scene.dsm[row, col] == pytest.approx(bld["base"] + bld["eave_height"], abs=1e-9)
        assert scene.dsm[row, col] - scene.dtm[row, col] == pytest.approx(bld["eave_height"], abs=1e-9)
        assert scene.classes[row, col] == BUILDING


def test_gabled_ridge_height(scene):
    for bld in scene.buildings:
        if bld["roof"] != "gabled" or bld["shape"] != "rect":
            continue
        part = bld["parts"][0]
        row, col = scene.pixel_of(part["cx"], part["cy"])
        if not (0 <= row < scene.shape[0] and 0 <= col < scene.shape[1]) or scene.building_id[row, col] != bld["id"]:
            continue
        # pixel centre's distance from the ridge line (v = 0) lowers the roof by |v| * slope
        x, y = scene.xy_of(row, col)
        v = -(x - part["cx"]) * math.sin(part["angle"]) + (y - part["cy"]) * math.cos(part["angle"])
        expected = bld["base"] + bld["ridge_height"] - abs(v) * bld["roof_slope"]
        assert scene.dsm[row, col] == pytest.approx(expected, abs=1e-9)


def test_classes_agree_with_dsm_minus_dtm(scene):
    height = scene.dsm - scene.dtm
    ground = scene.classes == GROUND
    assert np.all(height[ground] == 0.0)
    assert np.all(height[~ground] >= 0.99)
    assert np.all(scene.building_id[scene.classes == BUILDING] > 0)
    assert np.all(scene.building_id[scene.classes != BUILDING] == 0)


def test_points_follow_the_truth_except_defects(scene):
    noise, holes, outliers = 0.05, 0.08, 0.01
    pts = sample_points(scene, 3, density=8.0, noise=noise, holes=holes, outliers=outliers)
    n = len(pts["x"])
    left, bottom, right, top = scene.bounds
    area = (right - left) * (top - bottom)
    assert 8.0 * area * (1 - holes) * 0.95 < n < 8.0 * area * (1 - holes) * 1.05
    assert pts["x"].min() >= left and pts["x"].max() <= right and pts["y"].min() >= bottom and pts["y"].max() <= top
    row, col = scene.pixel_of(pts["x"], pts["y"])
    row, col = np.minimum(row, scene.shape[0] - 1), np.minimum(col, scene.shape[1] - 1)
    truth = scene.dsm[row, col]
    defect = pts["defect"]
    # exact outlier fraction (per strip rounding), far from the surface
    assert abs(np.mean(defect == 2) - outliers) < 0.0005
    assert np.all(np.abs(pts["z"][defect == 2] - truth[defect == 2]) > 1.0)
    # clean points: noise only, plus the in-pixel slope (clamped to 1.2 per axis)
    clean = defect == 0
    assert clean.mean() > 0.6
    err = pts["z"][clean] - truth[clean]
    assert np.abs(err).max() < 5 * noise + scene.resolution * 1.2
    flat = clean & (scene.classes[row, col] == GROUND)
    assert np.std(pts["z"][flat] - truth[flat]) == pytest.approx(noise, rel=0.15)
    # holes: empty pixels make up the asked fraction of the area (pixels this dense are rarely empty by chance)
    occupied = np.zeros(scene.shape, bool)
    occupied[row, col] = True
    assert (~occupied).mean() == pytest.approx(holes + math.exp(-8.0 * scene.resolution**2), abs=0.02)
    # colours and classes come from the truth
    assert np.array_equal(pts["classification"], scene.classes[row, col])
    assert np.array_equal(pts["red"], scene.ortho[0, row, col].astype(np.uint16) * 257)


def test_noise_grows_at_height_edges(scene):
    pts = sample_points(scene, 4, density=10.0, noise=0.05, holes=0.0, outliers=0.0)
    row, col = scene.pixel_of(pts["x"], pts["y"])
    err = np.abs(pts["z"] - scene.dsm[np.minimum(row, scene.shape[0] - 1), np.minimum(col, scene.shape[1] - 1)])
    assert np.median(err[pts["defect"] == 1]) > 3 * np.median(err[pts["defect"] == 0])
    assert not np.any(pts["defect"] == 2)


def test_degrade_points_fractions():
    rng = np.random.default_rng(0)
    n = 200_000
    pts = {"x": 500000 + rng.uniform(0, 100, n), "y": 5000000 + rng.uniform(0, 100, n), "z": np.full(n, 50.0),
           "classification": np.full(n, 2, np.uint8)}
    out = degrade_points(pts, 1, keep_fraction=0.5, noise_m=0.1, hole_fraction=0.1, outlier_fraction=0.01)
    m = len(out["x"])
    assert 0.5 * 0.9 * n * 0.93 < m < 0.5 * 0.9 * n * 1.07
    assert np.sum(out["defect"] == 2) == round(0.01 * m)
    clean = out["defect"] == 0
    assert np.std(out["z"][clean] - 50.0) == pytest.approx(0.1, rel=0.05)
    assert np.all(np.abs(out["z"][~clean] - 50.0) >= 1.0)
    assert out["classification"].dtype == np.uint8 and len(out["classification"]) == m
    again = degrade_points(pts, 1, keep_fraction=0.5, noise_m=0.1, hole_fraction=0.1, outlier_fraction=0.01)
    assert np.array_equal(again["z"], out["z"])


@pytest.mark.parametrize("crs, epsg, upm", [("EPSG:2154", 2154, 1.0), ("EPSG:32632", 32632, 1.0),
                                             ("EPSG:2994", 2994, 1 / 0.3048)])
def test_files_open_with_the_right_crs(tmp_path, crs, epsg, upm):
    size = 40.0 * upm
    scene = generate_city(2, bounds=scene_bounds(size, crs=crs, resolution=0.5 * upm), resolution=0.5 * upm,
                          crs=crs)
    out = write_city(scene, tmp_path / "city", seed=2, density=3.0)
    for key in ("truth_dsm", "dtm", "classes", "ortho"):
        with rasterio.open(out[key]) as ds:
            assert ds.crs.to_epsg() == epsg
            assert ds.bounds == pytest.approx(scene.bounds)
            assert ds.res == pytest.approx((0.5 * upm, 0.5 * upm))
    with rasterio.open(out["truth_dsm"]) as ds:
        assert np.allclose(ds.read(1), scene.dsm, atol=1e-4 * upm)
    las = laspy.read(out["points"])
    assert las.header.parse_crs().to_epsg() == epsg
    assert las.header.point_format.id == 7 and "defect" in las.point_format.extra_dimension_names
    assert len(las.x) == json.loads(out["scene"].read_text())["points"]["count"]
    left, bottom, right, top = scene.bounds
    assert left <= las.x.min() and las.x.max() <= right and bottom <= las.y.min() and las.y.max() <= top
    assert left > 1000.0  # real projected coordinates, not a local frame
    # heights in the CRS's unit: the tallest flat building is at least 3 m tall in that unit
    heights = [b["eave_height"] for b in scene.buildings]
    assert not heights or min(heights) >= 2.8 * upm - 1e-9


def test_cli_generate_and_refuse_overwrite(tmp_path, cli):
    out = tmp_path / "demo"
    res = cli("generate", out, "--seed", 5, "--size", 32, "--density", 2)
    assert res.exit_code == 0, res.output
    assert (out / "points.laz").exists() and (out / "truth_dsm.tif").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    res = cli("generate", out, "--seed", 5, "--size", 32)
    assert_clean_error(res, "already exists", "--overwrite")
    res = cli("generate", tmp_path / "geo", "--crs", "EPSG:4326", "--size", 32)
    assert_clean_error(res, "geographic")
    assert not (tmp_path / "geo").exists()


# ------------------------------------------------------------------------------------------------ views
@pytest.fixture(scope="module")
def view_set(tmp_path_factory, scene):
    from geoimplicit.synthetic.views import render_view_set

    out = tmp_path_factory.mktemp("views") / "views"
    render_view_set(scene, out, seed=7, n_views=6, size=96, n_track=5)
    return out


def test_view_set_layout_loads(view_set, scene):
    from geoimplicit.io.cameras import ViewSet

    vs = ViewSet.load(view_set)
    assert vs.ids == [f"{i:03d}" for i in range(6)]
    assert len(vs.track) == 5 and len(vs.depth_paths) == 6
    assert len(vs.train_ids) + len(vs.test_ids) == 6 and vs.test_ids and "000" in vs.train_ids
    assert vs.crs.to_epsg() == 2154
    for vid in vs.ids:
        cam = vs.cameras[vid]
        assert (cam.width, cam.height) == (96, 96)
        assert cam.center[0] > 700000 and cam.center[1] > 6000000  # real Lambert-93 coordinates
        depth = vs.read_depth(vid)
        assert depth.shape == (96, 96) and np.all(np.isfinite(depth))
        assert cam.depth_min <= np.nanmin(depth) and np.nanmax(depth) <= cam.depth_max
        assert vs.read_image(vid).shape == (96, 96, 3)
    # the camera looks down at the scene: the scene centre projects into the image
    uv, d = vs.cameras["000"].project(np.array([[*scene.center, float(np.median(scene.dsm))]]))
    assert d[0] > 0 and np.all((uv >= 0) & (uv < 96))


def test_rendered_depth_is_z_cam_of_a_known_roof_point(scene):
    from geoimplicit.synthetic.views import render_view, view_cameras

    cams = view_cameras(scene, n_views=6, size=128, seed=7)
    flats = [b for b in scene.buildings if b["roof"] == "flat" and b["structure"] is None]
    if not flats:
        pytest.skip("no plain flat roof")
    checked = 0
    for cam in cams:
        _, depth = render_view(scene, cam)
        for bld in flats:
            roof_z = bld["base"] + bld["eave_height"]
            uv, _ = cam.project(np.array([[bld["cx"], bld["cy"], roof_z]]))
            u, v = np.round(uv[0]).astype(int)
            if not (0 <= u < 128 and 0 <= v < 128):
                continue
            # the ray of pixel (u, v) meets the roof plane at z_cam = t (independent computation)
            ray = cam.R.T @ np.linalg.solve(cam.K, np.array([u, v, 1.0]))
            t = (roof_z - cam.center[2]) / ray[2]
            hit = cam.center + t * ray
            row, col = scene.pixel_of(hit[0], hit[1])
            r0, r1, c0, c1 = row - 2, row + 3, col - 2, col + 3
            if r0 < 0 or c0 < 0 or r1 > scene.shape[0] or c1 > scene.shape[1]:
                continue
            if not np.all(scene.building_id[r0:r1, c0:c1] == bld["id"]):
                continue  # too near the roof's edge
            if depth[v, u] < t - 1e-3:
                continue  # occluded by something nearer (a tree, a taller building)
            assert depth[v, u] == pytest.approx(t, abs=1e-3)
            checked += 1
    assert checked >= 2


# ------------------------------------------------------------------------------------------------ sample data
def test_committed_sample_scene_is_complete(sample_data):
    from geoimplicit.io.cameras import ViewSet

    city = sample_data / "synthetic_city"
    for name in ("truth_dsm.tif", "dtm.tif", "classes.tif", "ortho.tif"):
        with rasterio.open(city / name) as ds:
            assert ds.crs.to_epsg() == 2154 and ds.shape == (256, 256)
            assert ds.bounds.left == 770000.0 and ds.bounds.bottom == 6277000.0
    las = laspy.read(city / "points.laz")
    assert las.header.parse_crs().to_epsg() == 2154 and len(las.x) > 100_000
    vs = ViewSet.load(city / "views")
    assert len(vs.ids) == 20 and len(vs.test_ids) == 4 and len(vs.track) == 60
    ign = sample_data / "ign_montpellier"
    with rasterio.open(ign / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif") as ds:
        assert ds.crs.to_epsg() == 2154
    assert "Etalab" in (sample_data / "README.md").read_text()


@pytest.mark.slow
def test_sample_scene_regenerates_byte_for_byte(tmp_path, cli, sample_data):
    """The command in sample_data/README.md gives the committed files."""
    out = tmp_path / "synthetic_city"
    res = cli("generate", out, "--seed", 4, "--size", 128, "--density", 8, "--views", "--view-size", 256)
    assert res.exit_code == 0, res.output
    committed = sample_data / "synthetic_city"
    for path in _files(committed):
        rel = path.relative_to(committed)
        assert (out / rel).read_bytes() == path.read_bytes(), rel
