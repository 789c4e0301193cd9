"""bench/mesh.py runs on the CPU at a small size and writes its results."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_mesh_bench_runs_small_on_the_cpu(tmp_path):
    from bench.mesh import main

    main(["--device", "cpu", "--out", str(tmp_path), "--size", "40", "--seeds", "2000", "--samples", "20000",
          "--speed-size", "40", "--mc-size", "32"])
    res = json.loads((tmp_path / "mesh_bench.json").read_text())
    mean = res["quality"]["mean"]
    assert 0 < mean["mesh"]["chamfer_l1"] < 1.0 and 0 < mean["raster_heightfield"]["chamfer_l1"] < 1.0
    assert res["speed"]["triangles_per_km2"] > 0 and res["speed"]["tiles"] == 1
    mc = res["marching_cubes"]
    assert mc["torch_cpu"]["triangles"] > 0
    if isinstance(mc.get("skimage"), dict):  # the same grid gives the same surface
        assert mc["skimage"]["triangles"] == mc["torch_cpu"]["triangles"]
    assert (tmp_path / "mesh_bench.md").read_text().startswith("# Mesh benchmark")
