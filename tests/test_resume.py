"""A real `geoimplicit dsm` run killed with SIGKILL (and one interrupted with Ctrl-C) resumes where it stopped
and ends with the same mosaic as an uninterrupted run; nothing finished-looking is left behind meanwhile."""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoimplicit.synthetic import generate_city, scene_bounds, write_city
from geoimplicit.jobs.index import read_statuses

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "scene"
    bounds = scene_bounds(120.0, crs="EPSG:2154", resolution=0.5)
    scene = generate_city(5, bounds=bounds, resolution=0.5, crs="EPSG:2154")
    return write_city(scene, out, seed=5, points=True, views=False, density=6.0)


def _cmd(city, out: Path, *extra):
    return [sys.executable, "-m", "cli", "--progress", "json", "dsm", "--points", str(city["points"]),
            "--aoi", str(city["aoi"]), "--resolution", "0.5", "--method", "raster", "--tile-size", "16",
            "--overlap", "4", "-o", str(out), *extra]


def _tile_events(stdout: str) -> list[dict]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("type") == "progress" and e.get("stage") == "tiles"]


def _interrupt_after(cmd, n_tiles: int, sig: int) -> int:
    """Start ``cmd``; send ``sig`` once ``n_tiles`` tiles are reported done; return how many were reported.

    The progress pipe is shrunk to one page and read without a buffer, so that the run blocks on it a few dozen
    lines ahead of this reader instead of finishing before the signal arrives when this process is slow to be
    scheduled (a loaded machine; with an 8 KiB read buffer the run could finish first)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    seen = 0
    for line in iter(proc.stdout.readline, b""):
        if line.startswith(b"{") and json.loads(line).get("stage") == "tiles":
            seen += 1
            if seen >= n_tiles:
                proc.send_signal(sig)
                break
    proc.communicate(timeout=120)
    return seen


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_run_resumes_to_the_same_mosaic(city, tmp_path, sig):
    reference = tmp_path / "reference.tif"
    full = subprocess.run(_cmd(city, reference), cwd=REPO, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    n_tiles = len(_tile_events(full.stdout))
    assert n_tiles >= 20

    out = tmp_path / "dsm.tif"
    seen = _interrupt_after(_cmd(city, out), n_tiles // 3, sig)
    assert n_tiles // 3 <= seen < n_tiles
    # nothing that looks finished: no DSM, no mask; temporary files are hidden and marked partial
    assert not out.exists() and not out.with_name("dsm_filled.tif").exists()
    statuses = read_statuses(tmp_path / "dsm_work" / "tiles.gpkg")
    done_before = sum(s == "done" or s == "empty" for s in statuses.values())
    assert 0 < done_before < n_tiles

    again = subprocess.run(_cmd(city, out), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    # only the unfinished tiles ran (a tile that was mid-write when killed may run again)
    assert len(_tile_events(again.stdout)) <= n_tiles - done_before + 1
    with rasterio.open(reference) as a, rasterio.open(out) as b:
        assert a.transform == b.transform and a.crs == b.crs
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]


def test_existing_output_is_not_overwritten(city, tmp_path, cli):
    from conftest import assert_clean_error

    out = tmp_path / "dsm.tif"
    out.write_bytes(b"precious")
    result = cli("dsm", "--points", city["points"], "--aoi", city["aoi"], "--resolution", "0.5",
                 "--method", "raster", "-o", out)
    assert_clean_error(result, "dsm.tif", "--overwrite")
    assert out.read_bytes() == b"precious"
