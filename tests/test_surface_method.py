"""``geoimplicit dsm --method sdf`` and ``geoimplicit mesh --method sdf`` on a tiny generated city: a neural SDF
fitted per tile to posed views (with the tile's points) through the job layer; heights against the true DSM,
cells the views never saw left nodata, resume, and bad input refused before anything is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio

from conftest import assert_clean_error

TINY = {"renderer": "volume", "encoding": "frequency", "hidden": 32, "feature_size": 16, "rays_per_step": 384,
        "eikonal_samples": 384, "iso_count": 256, "iso_every": 40, "iso_start": 40, "trace_samples": 24,
        "trace_steps": 24, "surface_samples": 8, "progress_every": 10}
LEFT, BOTTOM = 770000.0, 6277000.0
CENTRE = (LEFT + 8, BOTTOM + 28, LEFT + 40, BOTTOM + 44)  # 32 x 16 m, most of it seen by the train views


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def city(tiny_view_city, tmp_path_factory):
    """The shared tiny view city, its photogrammetric-like points and a tiny fit config, in one folder."""
    from geoimplicit.synthetic import sample_points, write_points

    views, scene = tiny_view_city
    root = tmp_path_factory.mktemp("sdf_method")
    assert scene.bounds[:2] == (LEFT, BOTTOM)
    write_points(root / "points.laz", [sample_points(scene, 7, density=4.0)], scene.crs)
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root, views, scene


def _truth_1m(scene, bounds):
    """The true DSM averaged onto the 1 m cells of ``bounds``."""
    t = scene.dsm.reshape(scene.dsm.shape[0] // 2, 2, scene.dsm.shape[1] // 2, 2).mean((1, 3))
    c0, r0 = int(bounds[0] - LEFT), int(scene.bounds[3] - bounds[3])
    return t[r0:r0 + int(bounds[3] - bounds[1]), c0:c0 + int(bounds[2] - bounds[0])]


def _sdf_args(root, views, steps):
    return ["--method", "sdf", "--views", views, "--surface-config", root / "tiny.json",
            "--steps", str(steps), "--device", "cpu"]


def test_dsm_from_sdf_tiles(city, cli):
    from geoimplicit.surface.method import MIN_VIEWS, seen_by
    from geoimplicit.surface.model import load_surface
    from geoimplicit.io.cameras import ViewSet

    root, views_dir, scene = city
    out = root / "dsm_sdf.tif"
    args = ["dsm", "--points", root / "points.laz", "--bbox", *CENTRE, "--resolution", "1", "--tile-size", "16",
            "--overlap", "4", *_sdf_args(root, views_dir, 250), "-o", out]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 2154 and ds.res == (1.0, 1.0) and ds.bounds == CENTRE
        dsm = ds.read(1, masked=True)
    truth = _truth_1m(scene, CENTRE)
    valid = ~np.ma.getmaskarray(dsm)
    assert valid.mean() > 0.5
    err = np.abs(dsm.data[valid] - truth[valid])
    plane = np.abs(truth - np.median(truth))  # the initial surface is a plane near the median height
    assert np.median(err) < 0.6 * np.median(plane), (np.median(err), np.median(plane))

    # columns that no two train views see at any height of the scene are nodata, whatever the field says there
    rows, cols = truth.shape
    xy = np.stack(np.meshgrid(CENTRE[0] + np.arange(cols) + 0.5, CENTRE[3] - np.arange(rows) - 0.5), -1).reshape(-1, 2)
    views = ViewSet.load(views_dir)
    heights = np.linspace(scene.dsm.min() - 5, scene.dsm.max() + 5, 9)
    unseen = np.all([seen_by(views, xy, np.full(len(xy), z)) < MIN_VIEWS for z in heights], 0).reshape(rows, cols)
    assert unseen.any() and not (valid & unseen).any()

    # each tile's surface stays in the work folder, loadable weights-only
    models = sorted((root / "dsm_sdf_work" / "tiles").glob("*.sdf/model.pt"))
    assert len(models) == 2
    assert load_surface(models[0]).box.crs_wkt

    # the same command again resumes: no tile is fitted again, the same DSM
    again = cli("--progress", "json", *args, "--overwrite")
    assert again.exit_code == 0, again.output
    events = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
    assert not [e for e in events if e.get("stage") == "tiles" and e.get("type") == "progress"]
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1, masked=True).filled(-1), dsm.filled(-1))


def test_mesh_from_sdf_tile(city, cli):
    from geoimplicit.mesh.io import read_ply

    root, views_dir, scene = city
    bounds = (LEFT + 16, BOTTOM + 16, LEFT + 32, BOTTOM + 32)
    out, dsm_out = root / "sdf.ply", root / "sdf_mesh_dsm.tif"
    result = cli("mesh", "--points", root / "points.laz", "--bbox", *bounds, "--resolution", "1", "--tile-size", "16",
                 *_sdf_args(root, views_dir, 200), "--dsm-output", dsm_out, "-o", out)
    assert result.exit_code == 0, result.output
    mesh = read_ply(out)
    assert mesh.n_faces > 200 and "2154" in (mesh.crs_wkt or "")
    assert (mesh.vertices[:, 0] >= bounds[0] - 1).all() and (mesh.vertices[:, 0] <= bounds[2] + 1).all()
    truth = _truth_1m(scene, bounds)
    with rasterio.open(dsm_out) as ds:
        dsm = ds.read(1, masked=True)
    valid = ~np.ma.getmaskarray(dsm)
    assert valid.mean() > 0.8
    err = np.abs(dsm.data[valid] - truth[valid])
    assert np.median(err) < 0.6 * np.median(np.abs(truth - np.median(truth)))


def test_sdf_bad_inputs_are_refused_before_writing(city, cli, tmp_path):
    root, views_dir, _ = city
    out = tmp_path / "dsm.tif"
    base = ["dsm", "--points", root / "points.laz", "--bbox", *CENTRE, "--resolution", "1", "-o", out]
    assert_clean_error(cli(*base, "--method", "sdf"), "--views")
    usage = cli(*base, "--method", "raster", "--views", views_dir)  # a usage error: click's three lines
    assert usage.exit_code == 2 and "--views is an option of --method sdf" in usage.stderr

    other = tmp_path / "views_utm"
    shutil.copytree(views_dir, other)
    (other / "crs.txt").write_text("EPSG:32631\n")
    assert_clean_error(cli(*base, "--method", "sdf", "--views", other), "views_utm", "CRS")
    (other / "crs.txt").unlink()
    assert_clean_error(cli(*base, "--method", "sdf", "--views", other), "crs.txt")
    (root / "bad.yaml").write_text("no_such_setting: 1\n")
    assert_clean_error(cli(*base, "--method", "sdf", "--views", views_dir, "--surface-config",
                           root / "bad.yaml"), "no_such_setting")
    assert not out.exists() and not (tmp_path / "dsm_work").exists()
