"""``geoimplicit mesh``: the tiled run through the job layer, its outputs, resume, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_clean_error


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("mesh") / "city"
    r = run_cli("generate", out, "--size", 40, "--seed", 4)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def run(city, tmp_path_factory):
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("mesh_out")
    args = ["--progress", "json", "mesh", "--points", city / "points.laz", "--ortho", city / "ortho.tif",
            "--true-ortho", "--aoi", city / "aoi.geojson", "--resolution", 0.5, "--tile-size", 20, "--device", "cpu", "-o",
            out / "city.glb", "--dsm-output", out / "city_dsm.tif"]
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    return {"out": out, "args": args, "result": r}


def test_mesh_command_writes_a_crack_free_glb_with_its_crs(run, city):
    import pyproj

    from geoimplicit.mesh.io import glb_to_mesh, read_glb

    out = run["out"]
    lines = [json.loads(line) for line in run["result"].stdout.splitlines() if line.startswith("{")]
    assert any(e["type"] == "progress" and e["stage"] == "tiles" for e in lines)
    result = next(e for e in lines if e["type"] == "result")["outputs"]
    assert set(result) >= {"mesh", "dsm", "tiles"}
    doc, _ = read_glb(out / "city.glb")
    assert doc["nodes"][0]["extras"]["crs"] == "EPSG:2154"
    assert pyproj.CRS((out / "city.prj").read_text()).equals(pyproj.CRS("EPSG:2154"), ignore_axis_order=True)
    mesh = glb_to_mesh(out / "city.glb")
    assert len(list((out / "city_work" / "tiles").glob("*.npz"))) == 4  # per-tile meshes kept
    edges = mesh.boundary_edges()
    mid = (mesh.vertices[edges[:, 0]] + mesh.vertices[edges[:, 1]]) / 2
    scene = json.loads((city / "scene.json").read_text())
    left, bottom, right, top = scene["bounds"]
    border = np.minimum.reduce([mid[:, 0] - left, right - mid[:, 0], mid[:, 1] - bottom, top - mid[:, 1]])
    assert len(edges) and border.max() <= 0.25 + 1e-3  # boundary only along the AOI: no crack at the seams
    assert len(mesh.nonmanifold_edges()) == 0 and mesh.colours is not None


def test_mesh_dsm_goes_through_eval(run, city, cli):
    r = cli("eval", run["out"] / "city_dsm.tif", city / "truth_dsm.tif", "-o", run["out"] / "report")
    assert r.exit_code == 0, r.output
    stats = json.loads((run["out"] / "report" / "report.json").read_text())["overall"]
    assert stats["median_abs_error"] < 0.2 and stats["count"] > 1000


def test_rerun_resumes_without_recomputing_tiles(run, cli):
    out = run["out"]
    tiles = sorted((out / "city_work" / "tiles").glob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in tiles]
    before = (out / "city.glb").read_bytes()
    r = cli(*run["args"])
    assert_clean_error(r, "already exists", code=2)  # nothing replaced without --overwrite
    r = cli(*run["args"], "--overwrite")
    assert r.exit_code == 0, r.output
    assert [p.stat().st_mtime_ns for p in tiles] == stamps  # the finished tiles were not made again
    assert (out / "city.glb").read_bytes() == before


def test_bad_input_gives_one_line_and_writes_nothing(city, tmp_path, cli):
    out = tmp_path / "m.ply"
    r = cli("mesh", "--points", tmp_path / "missing.laz", "--resolution", 0.5, "-o", out)
    assert_clean_error(r, "missing.laz")
    r = cli("mesh", "--points", city / "points.laz", "--bbox", 0, 0, 10, 10, "--resolution", 0.5, "-o", out)
    assert_clean_error(r, "does not overlap")
    r = cli("mesh", "--points", city / "points.laz", "--resolution", 0.5, "--method", "raster", "-o", out)
    assert_clean_error(r, "gives no field")
    r = cli("mesh", "--points", city / "points.laz", "--resolution", 0.5, "-o", tmp_path / "m.stl")
    assert_clean_error(r, "unknown mesh format")
    assert not out.exists() and not (tmp_path / "m_work").exists()


def test_cli_formats_match_the_library():
    from cli.mesh import FORMATS
    from geoimplicit.mesh.io import FORMATS as LIB

    assert FORMATS == LIB


def test_an_interrupted_run_resumes_to_the_same_mesh(city, run, tmp_path):
    from geoimplicit.errors import CancelledError
    from geoimplicit.mesh.run import run_mesh

    def cancel_after_a_tile():  # the user presses cancel once the first tile is written
        return any((tmp_path / "city_work" / "tiles").glob("*.npz"))

    kw = dict(resolution=0.5, aoi=city / "aoi.geojson", ortho=[city / "ortho.tif"], tile_size=20,
              method_options={"device": "cpu", "true_ortho": True})
    out = tmp_path / "city.glb"
    with pytest.raises(CancelledError):
        run_mesh([city / "points.laz"], out, cancel=cancel_after_a_tile, **kw)
    assert not out.exists()
    made = list((tmp_path / "city_work" / "tiles").glob("*.npz"))
    assert 0 < len(made) < 4  # stopped part-way, with finished tiles kept
    run_mesh([city / "points.laz"], out, **kw)
    assert out.read_bytes() == (run["out"] / "city.glb").read_bytes()  # the same mesh as in one go
