"""``--overwrite`` replaces the outputs a command writes, never anything else; an output that holds an input is
refused; a full disk leaves nothing that looks finished."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from conftest import assert_clean_error
from evaluate_helpers import grid_xy, smooth_surface, write_dem

T = Affine(0.5, 0, 770500.0, 0, -0.5, 6277600.0)


def _dem_pair(folder: Path, shape=(40, 50)):
    folder.mkdir(parents=True, exist_ok=True)
    x, y = grid_xy(T, shape)
    truth = smooth_surface(x - 770500.0, y - 6277600.0)
    write_dem(folder / "T.tif", truth, T)
    write_dem(folder / "P.tif", truth + np.random.default_rng(0).normal(0, 0.2, shape), T)
    return folder / "P.tif", folder / "T.tif"


def _user_files(folder: Path) -> dict[str, str]:
    """A user's unrelated files in ``folder``: notes, another GeoTIFF, a sub-folder with a file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my field notes\n")
    write_dem(folder / "other.tif", np.ones((4, 4)), T)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "keep.txt").write_text("keep me\n")
    return _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _survived(before: dict[str, str], folder: Path) -> None:
    after = _snapshot(folder)
    for name, digest in before.items():
        assert after.get(name) == digest, f"{name} was removed or changed"


def test_eval_refuses_an_output_folder_holding_its_inputs(tmp_path, cli, monkeypatch):
    pred, truth = _dem_pair(tmp_path / "d")
    (tmp_path / "d" / "notes.txt").write_text("notes\n")
    before = _snapshot(tmp_path / "d")
    for extra in ((), ("--overwrite",)):
        result = cli("eval", pred, truth, "-o", tmp_path / "d", *extra)
        assert_clean_error(result, "holds the input", "P.tif", "another folder")
        assert _snapshot(tmp_path / "d") == before
    # the output is one of the inputs' folders only through a relative path: still refused
    monkeypatch.chdir(tmp_path / "d")
    assert_clean_error(cli("eval", "P.tif", "T.tif", "-o", ".", "--overwrite"), "holds the input")
    assert _snapshot(tmp_path / "d") == before


def test_eval_overwrite_replaces_only_its_own_products(tmp_path, cli):
    pred, truth = _dem_pair(tmp_path / "in")
    out = tmp_path / "report"
    before = _user_files(out)
    ok = cli("eval", pred, truth, "-o", out)  # nothing of the report is there yet: no --overwrite needed
    assert ok.exit_code == 0, ok.output
    assert (out / "figures" / "error_map.png").exists()
    assert_clean_error(cli("eval", pred, truth, "-o", out), "report", "--overwrite")
    ok = cli("eval", pred, truth, "-o", out, "--overwrite", "--no-figures")
    assert ok.exit_code == 0, ok.output
    _survived(before, out)
    # the previous run's figures are this command's products: removed, so the folder shows one run only
    assert not (out / "figures").exists()
    assert json.loads((out / "report.json").read_text())["files"]["figures"] == {}
    assert not [p for p in tmp_path.rglob(".*partial-*")]


def test_generate_overwrite_keeps_other_files(tmp_path, cli, monkeypatch):
    out = tmp_path / "city"
    before = _user_files(out)
    args = ("--size", 16, "--density", 1, "--seed", 2)
    assert cli("generate", out, *args).exit_code == 0
    assert_clean_error(cli("generate", out, *args), "already exists", "--overwrite")
    ok = cli("generate", out, *args, "--overwrite", "--no-points")
    assert ok.exit_code == 0, ok.output
    _survived(before, out)
    assert (out / "truth_dsm.tif").exists() and not (out / "points.laz").exists()  # no stale points of run 1
    # "." as the output folder (crashed with "PosixPath('.') has an empty name")
    monkeypatch.chdir(out)
    ok = cli("generate", ".", *args, "--overwrite")
    assert ok.exit_code == 0, ok.output
    _survived(before, out)
    assert (out / "points.laz").exists()
    assert json.loads((out / "scene.json").read_text())["points"]["written"] is True
    assert not [p for p in tmp_path.rglob(".*partial-*")]


def test_a_file_output_never_replaces_a_folder(tmp_path, cli):
    from geoimplicit.errors import OutputExistsError
    from geoimplicit.io.raster import write_geotiff

    pred, _ = _dem_pair(tmp_path / "in")
    folder = tmp_path / "mosaic.tif"
    before = _user_files(folder)
    result = cli("mosaic", pred, "-o", folder, "--overwrite")  # Click refuses it as a usage error
    assert result.exit_code == 2 and _snapshot(folder) == before
    with pytest.raises(OutputExistsError, match="is a folder"):  # the library too (it used to rmtree it)
        write_geotiff(folder, np.ones((4, 4), np.float32), T, "EPSG:2154", overwrite=True)
    assert _snapshot(folder) == before


def test_a_folder_output_never_replaces_a_file(tmp_path):
    from geoimplicit.errors import OutputExistsError
    from geoimplicit.outputs import atomic_output

    user_file = tmp_path / "report"
    user_file.write_text("a file of the user's\n")
    with pytest.raises(OutputExistsError, match="is a file"):
        with atomic_output(user_file, overwrite=True, products=("a.txt",)) as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text("x")
    assert user_file.read_text() == "a file of the user's\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_mosaic_refuses_to_write_over_an_input(tmp_path, cli):
    pred, _ = _dem_pair(tmp_path / "in")
    digest = hashlib.sha256(pred.read_bytes()).hexdigest()
    assert_clean_error(cli("mosaic", pred, "-o", pred, "--overwrite"), "P.tif", "both an input and the output")
    assert hashlib.sha256(pred.read_bytes()).hexdigest() == digest


# ------------------------------------------------------------------------------------------- a full disk
def _can_mount_tmpfs() -> bool:
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and unshare to mount a small tmpfs")
@pytest.mark.parametrize("case", ["eval", "generate", "dsm"])
def test_disk_full_says_so_and_leaves_nothing_final(tmp_path, sample_data, case):
    """Each command writes onto a real small tmpfs (its own mount namespace): ENOSPC from the kernel."""
    import shlex
    import subprocess
    import sys

    city = sample_data / "synthetic_city"
    disk = tmp_path / "disk"
    disk.mkdir()
    args = {
        "eval": ["eval", city / "truth_dsm.tif", city / "truth_dsm.tif", "-o", disk / "report"],
        "generate": ["generate", disk / "city", "--size", 64],
        "dsm": ["dsm", "--method", "raster", "--points", city / "points.laz", "--resolution", 0.5,
                "-o", disk / "dsm.tif"],
    }[case]
    command = shlex.join([sys.executable, "-m", "cli", *map(str, args)])
    size = {"eval": "60k", "generate": "200k", "dsm": "200k"}[case]  # each too small for the outputs
    script = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))} && {command}; code=$?; " \
             f"find {shlex.quote(str(disk))} -mindepth 1 > {shlex.quote(str(tmp_path / 'left.txt'))}; exit $code"
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "disk full" in last and str(disk) in last, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in last
    left = [Path(p) for p in (tmp_path / "left.txt").read_text().split()]
    final_looking = [p for p in left if p.name in ("report.json", "report", "city", "dsm.tif", "dsm_filled.tif",
                                                   "truth_dsm.tif", "scene.json") or PARTIAL in p.name]
    assert not final_looking, left


PARTIAL = ".partial-"


# -------------------------------------------------- every command, into a folder that holds a user's files
TINY_TRAIN = """inherit_from: package:base.yaml
model: {variant: mono, unet_channels: [8, 16], point_features: 8, image_features: 4, features: 8,
        decoder_hidden: 16, decoder_blocks: 2}
data: {patch_size_m: 16.0, queries_per_patch: 256, synthetic_size_m: 32.0, synthetic_train_seeds: [0, 1],
       synthetic_val_seeds: [1000, 1001]}
train: {steps: 2, batch_size: 2, warmup_steps: 1, val_every: 0, checkpoint_every: 0, amp: false}
"""


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """A small generated city with a 4-view set, a tiny training config, and an MPI fitted on the views."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("inputs")
    done = run_cli("generate", root / "city", "--size", 24, "--density", 4, "--views", "--n-views", 4,
                   "--view-size", 32)
    assert done.exit_code == 0, done.output
    (root / "tiny.yaml").write_text(TINY_TRAIN)
    done = run_cli("nvs", "fit", root / "city" / "views", "-o", root / "model", "--planes", 4, "--steps", 2,
                   "--device", "cpu")
    assert done.exit_code == 0, done.output
    return root


def _commands(inputs: Path, out: Path) -> dict[str, list]:
    city = inputs / "city"
    bbox = ["--bbox", 770000, 6277000, 770024, 6277024]
    return {
        "dsm": ["dsm", "--points", city / "points.laz", *bbox, "--resolution", 1, "--method", "raster",
                "-o", out / "dsm.tif"],
        "eval": ["eval", city / "truth_dsm.tif", city / "truth_dsm.tif", "--no-figures", "-o", out],
        "tile": ["tile", *bbox, "--crs", "EPSG:2154", "--tile-size", 16, "--overlap", 2, "--resolution", 0.5,
                 "-o", out / "tiles.gpkg"],
        "mosaic": ["mosaic", city / "truth_dsm.tif", "-o", out / "mosaic.tif"],
        "train": ["train", inputs / "tiny.yaml", "-o", out, "--device", "cpu"],
        "nvs fit": ["nvs", "fit", city / "views", "-o", out, "--planes", 4, "--steps", 1, "--device", "cpu"],
        "nvs render": ["nvs", "render", inputs / "model", "--cams", city / "views" / "Track", "-o", out,
                       "--device", "cpu"],
        "nvs eval": ["nvs", "eval", inputs / "model", city / "views", "-o", out, "--device", "cpu"],
        "generate": ["generate", out, "--size", 16, "--density", 1],
    }


@pytest.mark.parametrize("command", ["dsm", "eval", "tile", "mosaic", "train", "nvs fit", "nvs render",
                                     "nvs eval", "generate", "info"])
def test_every_command_keeps_a_user_s_files_through_overwrite(tmp_path, cli, tiny_inputs, command):
    out = tmp_path / "out"
    before = _user_files(out)
    if command == "info":  # reads only
        assert cli("info", out / "other.tif").exit_code == 0
        _survived(before, out)
        return
    args = _commands(tiny_inputs, out)[command]
    for attempt in range(2):  # the second run replaces the first one's outputs
        result = cli(*args, "--overwrite")
        assert result.exit_code == 0, (command, attempt, result.output)
        _survived(before, out)
    assert len(_snapshot(out)) > len(before)  # and it did write its outputs there
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and unshare to mount a small tmpfs")
def test_an_output_folder_that_is_a_mount_point(tmp_path, sample_data):
    """Entries cannot be renamed across file systems: the staging folder goes inside the mount point."""
    import shlex
    import subprocess
    import sys

    truth = sample_data / "synthetic_city" / "truth_dsm.tif"
    disk = tmp_path / "disk"
    disk.mkdir()
    q = shlex.quote
    run = shlex.join([sys.executable, "-m", "cli", "eval", str(truth), str(truth), "--no-figures", "-o", str(disk),
                      "--overwrite"])
    script = (f"mount -t tmpfs -o size=8m tmpfs {q(str(disk))} && echo mine > {q(str(disk / 'notes.txt'))} && "
              f"{run} && {run} && ls -A {q(str(disk))}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split()[-5:]
    assert sorted(listed) == ["notes.txt", "report.csv", "report.html", "report.json", "residual.tif"], done.stdout
