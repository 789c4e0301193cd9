"""The neural-surface algorithms in a real headless QGIS: fit a tiny surface, read off its DSM (loaded, styled,
the same file as the CLI's), render views; a view set without crs.txt gives the CLI's one-line message."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from test_qgis_plugin import QGIS_MISSING, _geoimplicit, _run_harness

pytestmark = [pytest.mark.qgis,
              pytest.mark.skipif(QGIS_MISSING is not None, reason=f"QGIS not installed: {QGIS_MISSING}")]


def test_surface_algorithms_in_qgis(tmp_path):
    import rasterio

    scene = tmp_path / "city"
    done = _geoimplicit("generate", scene, "--size", "32", "--seed", "2", "--views", "--n-views", "4",
                        "--view-size", "32", "--no-points")
    assert done.returncode == 0, done.stderr
    views = scene / "views"
    no_crs = tmp_path / "no_crs"
    shutil.copytree(views, no_crs)
    (no_crs / "crs.txt").unlink()
    out = tmp_path / "out"
    fit = {"VIEWS": str(views), "STEPS": 3, "DEVICE": 1, "EXTRA_ARGS": "--encoding frequency",
           "OUTPUT": str(out / "surface")}
    jobs = [
        {"id": "fit", "alg": "geoimplicit:surface_fit", "params": fit},
        {"id": "dsm", "alg": "geoimplicit:surface_dsm",
         "params": {"MODEL": str(out / "surface"), "RESOLUTION": 1.0, "DEVICE": 1,
                    "OUTPUT": {"load": str(out / "sdf_dsm.tif")}}},
        {"id": "render", "alg": "geoimplicit:surface_render",
         "params": {"MODEL": str(out / "surface"), "CAMS": str(views / "Cams"), "DEVICE": 1,
                    "OUTPUT": str(out / "render")}},
        {"id": "bad", "alg": "geoimplicit:surface_fit", "params": {**fit, "VIEWS": str(no_crs),
                                                                  "OUTPUT": str(out / "bad")}},
    ]
    runs = _run_harness(tmp_path, jobs)
    assert runs["algorithms"]["geoimplicit:surface_fit"]["params"]["POINTS"] == "multilayer"
    jobs = runs["jobs"]
    assert jobs["fit"]["ok"], jobs["fit"]
    assert jobs["fit"]["results"]["MODEL"].endswith("model.pt")
    assert jobs["fit"]["results"]["ISO_POINTS_FILE"].endswith("iso_points.laz")
    assert jobs["dsm"]["ok"], jobs["dsm"]
    layer = jobs["dsm"]["layers"][str(out / "sdf_dsm.tif")]
    assert layer["crs"] == "EPSG:2154"
    cli = _geoimplicit("surface", "dsm", out / "surface", "--resolution", "1.0", "--device", "cpu", "-o",
                       tmp_path / "cli_dsm.tif")
    assert cli.returncode == 0, cli.stderr
    with rasterio.open(out / "sdf_dsm.tif") as a, rasterio.open(tmp_path / "cli_dsm.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert jobs["render"]["ok"] and len(list((out / "render" / "Images").glob("*.png"))) == 4
    assert not jobs["bad"]["ok"] and "crs.txt" in jobs["bad"]["error"]
    assert not (out / "bad").exists()
