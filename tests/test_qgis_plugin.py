"""The QGIS plugin (``qgis_plugin/geoimplicit_qgis``).

Three layers:
- the runner (pure Python, no QGIS): progress stream, the four failure kinds, cancellation, against a stand-in
  executable (``tests/qgis_fake_cli.py``);
- the algorithms in a real headless QGIS, in-process: ``/usr/bin/python3`` scripts start QgsApplication,
  initialise Processing, register the provider and run the algorithms with the real ``geoimplicit`` CLI of
  this venv (found on PATH), and compare with the CLI's own output;
- the built zip installed into a temporary QGIS profile and run through ``qgis_process.bin``.
The QGIS parts are marked ``qgis`` and skip with the reason when Debian's QGIS is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "qgis_plugin"
PLUGIN_NAME = "geoimplicit_qgis"
FAKE_CLI = Path(__file__).with_name("qgis_fake_cli.py")
SYSTEM_PYTHON = Path(os.environ.get("GEOIMPLICIT_QGIS_PYTHON", "/usr/bin/python3"))  # the Python QGIS uses
QGIS_PLUGINS = Path("/usr/share/qgis/python/plugins")
QGIS_PROCESS = Path(os.environ.get("GEOIMPLICIT_QGIS_PROCESS", "/usr/bin/qgis_process.bin"))
CITY = REPO / "sample_data" / "synthetic_city"
VENV_BIN = Path(sys.executable).parent


def _load_runner():
    spec = importlib.util.spec_from_file_location("geoimplicit_qgis_runner", PLUGIN_SRC / PLUGIN_NAME / "runner.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _plugin_imports() -> dict[str, set[str]]:
    """module -> the plugin modules it imports (``from .x import``, at any depth: function bodies too)."""
    import ast

    graph = {}
    for path in sorted((PLUGIN_SRC / PLUGIN_NAME).glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps
    return graph


def test_plugin_modules_import_without_a_cycle():
    """base -> provider -> algorithms -> base was a cycle (issue 15); imports now flow one way."""
    graph = _plugin_imports()
    assert graph["base"] and "provider" not in graph["base"]
    state = {}

    def visit(module, chain):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", " -> ".join(chain + [module])
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            visit(dep, chain + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


@pytest.fixture
def fake_cli(tmp_path):
    """An executable stand-in for geoimplicit (its shebang is this interpreter)."""
    exe = tmp_path / "bin" / "geoimplicit"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n" + FAKE_CLI.read_text())
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def _fake_env(mode, log=None):
    env = dict(os.environ, FAKE_MODE=mode)
    if log:
        env["FAKE_LOG"] = str(log)
    return env


# ---------------------------------------------------------------- runner (no QGIS) ---------------------------
def test_find_executable_order_and_messages(tmp_path, fake_cli):
    env = {"PATH": str(fake_cli.parent)}
    assert runner.find_executable("", env) == str(fake_cli)
    assert runner.find_executable(str(fake_cli), {"PATH": ""}) == str(fake_cli)
    assert runner.find_executable(None, {"PATH": "", "GEOIMPLICIT_EXECUTABLE": str(fake_cli)}) == str(fake_cli)
    with pytest.raises(runner.CouldNotStartError, match="no 'geoimplicit' executable on PATH"):
        runner.find_executable("", {"PATH": str(tmp_path)})
    with pytest.raises(runner.CouldNotStartError, match="does not exist"):
        runner.find_executable(str(tmp_path / "nowhere" / "geoimplicit"), env)
    not_exec = tmp_path / "plain.txt"
    not_exec.write_text("x")
    with pytest.raises(runner.CouldNotStartError, match="is not an executable file"):
        runner.find_executable(str(not_exec), env)


def test_parse_line_and_helpers():
    assert runner.parse_line('{"type": "progress", "fraction": 0.5}')["fraction"] == 0.5
    assert runner.parse_line("INFO something") is None
    assert runner.parse_line('{"not": "ours"}') is None
    assert runner.progress_fraction({"done": 3, "total": 4}) == 0.75
    assert runner.progress_fraction({"fraction": 7}) == 1.0
    assert runner.error_line("log\nError: a.laz: bad\n") == "a.laz: bad"
    assert runner.describe_exit(-11) == "killed by signal SIGSEGV"
    assert runner.build_command("g", ["dsm", 1.5])[:4] == ["g", "--progress", "json", "dsm"]


def test_run_ok_progress_and_outputs(tmp_path, fake_cli):
    seen, logs = [], []
    out = tmp_path / "o.tif"
    result = runner.run_cli(
        ["dsm", "-o", out], executable=str(fake_cli), env=_fake_env("ok"),
        on_progress=lambda f, s, d, t, m: seen.append((f, s, m)), on_log=logs.append,
    )
    assert [f for f, _, _ in seen] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert seen[0][1:] == ("tiles", "tile 1")
    assert result.outputs == {"output": str(out)} and out.read_text() == "fake output"
    assert result.returncode == 0 and any("starting" in line for line in logs)


@pytest.mark.parametrize(
    "mode, error, fragment",
    [
        ("fail", runner.FailedError, "points.laz: not a LAS/LAZ file"),
        ("crash", runner.CrashedError, "killed by signal SIGSEGV"),
        ("exit3", runner.CrashedError, "exit code 3"),
    ],
)
def test_run_failures_are_told_apart(tmp_path, fake_cli, mode, error, fragment):
    with pytest.raises(error) as info:
        runner.run_cli(["dsm", "-o", tmp_path / "o.tif"], executable=str(fake_cli), env=_fake_env(mode))
    assert fragment in str(info.value)
    assert info.value.kind == {"fail": "failed", "crash": "crashed", "exit3": "crashed"}[mode]
    if mode == "fail":  # the CLI's one line, nothing else
        assert str(info.value) == "points.laz: not a LAS/LAZ file (bad signature). Pass a LAS or LAZ file"
    assert not (tmp_path / "o.tif").exists()


def test_run_could_not_start(tmp_path):
    bad = tmp_path / "geoimplicit"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    with pytest.raises(runner.CouldNotStartError, match="could not start geoimplicit"):
        runner.run_cli(["dsm"], executable=str(bad))


@pytest.mark.parametrize("mode", ["slow", "stubborn"])
def test_cancel_kills_process_group_and_partial_outputs(tmp_path, fake_cli, mode):
    log = tmp_path / "log.json"
    out = tmp_path / "dsm.tif"
    seen = []
    t0 = time.monotonic()
    with pytest.raises(runner.CancelledRunError, match="cancelled"):
        runner.run_cli(
            ["dsm", "-o", out], executable=str(fake_cli), env=_fake_env(mode, log),
            on_progress=lambda f, *a: seen.append(f), is_cancelled=lambda: len(seen) >= 3, outputs=[out],
            kill_grace_s=1.0,
        )
    assert time.monotonic() - t0 < 15
    record = json.loads(log.read_text())
    assert "child" in record, record
    for pid in (record["pid"], record["child"]):
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert not _alive(pid), f"process {pid} still running after cancel"
    assert not out.exists() and not Path(record["partial"]).exists()
    assert list(tmp_path.glob(".dsm.partial-*")) == []


def test_partial_outputs_are_removed_beside_and_inside_an_output_folder(tmp_path):
    """geoimplicit stages a folder's outputs beside it, or inside it when the folder is a mount point."""
    report = tmp_path / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    beside = tmp_path / ".report.partial-0123abcd"
    inside = report / ".report.partial-89abcdef"
    for staging in (beside, inside):
        staging.mkdir()
        (staging / "report.json").write_text("{}")
    removed = runner.remove_partial_outputs([report])
    assert sorted(removed) == sorted([beside, inside]) and not beside.exists() and not inside.exists()
    assert (report / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- QGIS ---------------------------------------
def _qgis_missing_reason():
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "QGIS's Python bindings are missing (apt-get install qgis python3-qgis qgis-providers)"
    if not (QGIS_PLUGINS / "processing").is_dir():
        return f"the Processing plugin is missing under {QGIS_PLUGINS}"
    return None


QGIS_MISSING = _qgis_missing_reason()
needs_qgis = pytest.mark.skipif(QGIS_MISSING is not None, reason=f"QGIS not installed: {QGIS_MISSING}")
qgis_test = [pytest.mark.qgis, needs_qgis]


def _cli_has(*names) -> bool:
    """Whether this venv's geoimplicit offers the command (``"dsm"``, or ``"nvs", "fit"``)."""
    from cli.main import LazyGroup

    command = LazyGroup._load(names[0], quiet=True)
    for name in names[1:]:
        command = None if command is None else getattr(command, "commands", {}).get(name)
    return command is not None


def _skip_unless_cli(*names):
    return pytest.mark.skipif(
        not _cli_has(*names), reason=f"'geoimplicit {' '.join(names)}' is not available yet in this checkout"
    )


def _qgis_env(home: Path, extra_path=()) -> dict:
    """Environment for QGIS's own Python: offscreen, a throwaway profile, system Python first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    runtime = home / "xdg-runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    env.update(
        HOME=str(home), QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime),
        # /usr/bin first (qgis_process's embedded Python must find the system's), then this venv's geoimplicit
        PATH=os.pathsep.join(["/usr/bin", "/bin", *map(str, extra_path), str(VENV_BIN)]),
        # QGIS writes layer statistics to .aux.xml beside the rasters it loads: not into the checkout's sample_data
        GDAL_PAM_ENABLED="NO",
    )
    return env


def _write_dem(path, array, crs, *, left=500000.0, top=5000000.0, res=0.5, nodata=-9999.0):
    import rasterio
    from affine import Affine

    with rasterio.open(
        path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1, dtype="float32",
        crs=crs, transform=Affine(res, 0.0, left, 0.0, -res, top), nodata=nodata,
    ) as dst:
        dst.write(array.astype("float32"), 1)
    return path


def _surface(rows, cols, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(float)
    z = 100.0 + 0.05 * x + 0.02 * y
    for _ in range(6):  # buildings
        r0, c0 = rng.integers(0, rows - 10), rng.integers(0, cols - 10)
        z[r0:r0 + rng.integers(5, 12), c0:c0 + rng.integers(5, 12)] += rng.uniform(5, 20)
    return z


def _geoimplicit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "geoimplicit"), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _processes_mentioning(text: str):
    """pids of live processes whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes() and _alive(int(proc.name)):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def qgis_runs(tmp_path_factory):
    """Every in-process algorithm run of this module, in ONE headless QGIS (results keyed by job id)."""
    if QGIS_MISSING:
        pytest.skip(f"QGIS not installed: {QGIS_MISSING}")
    root = tmp_path_factory.mktemp("qgis")
    data = root / "data"
    data.mkdir()
    truth = _surface(60, 80, seed=1)
    rng = np.random.default_rng(2)
    pred = truth + 0.25 + rng.normal(0, 0.1, truth.shape)
    pred[:5, :7] = -9999.0  # nodata corner
    _write_dem(data / "truth.tif", truth, "EPSG:32632")
    _write_dem(data / "pred.tif", pred, "EPSG:32632")
    _write_dem(data / "pred_l93.tif", pred, "EPSG:2154", left=700000.0, top=6600000.0)
    big = _surface(2500, 2500, seed=3)  # seconds of work after the first progress line: the cancel lands mid-run
    _write_dem(data / "big_truth.tif", big, "EPSG:32632")
    _write_dem(data / "big_pred.tif", big + 0.5, "EPSG:32632")
    fake = root / "fakebin" / "geoimplicit"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\n" + FAKE_CLI.read_text())
    fake.chmod(0o755)
    out = root / "out"
    out.mkdir()

    jobs = [
        {"id": "eval", "alg": "geoimplicit:eval",
         "params": {"DSM": str(data / "pred.tif"), "REFERENCE": str(data / "truth.tif"), "OUTPUT": str(out / "rep")}},
        {"id": "eval_demcompare", "alg": "geoimplicit:eval",
         "params": {"DSM": str(data / "pred.tif"), "REFERENCE": str(data / "truth.tif"), "CONVENTIONS": 1,
                    "OUTPUT": str(out / "rep_dc")}},
        {"id": "eval_cancel", "alg": "geoimplicit:eval", "cancel_after": 1,
         "params": {"DSM": str(data / "big_pred.tif"), "REFERENCE": str(data / "big_truth.tif"),
                    "OUTPUT": str(out / "rep_cancel")}},
        {"id": "eval_bad", "alg": "geoimplicit:eval",
         "params": {"DSM": str(data / "pred_l93.tif"), "REFERENCE": str(data / "truth.tif"),
                    "OUTPUT": str(out / "rep_bad")}},
        {"id": "no_start", "alg": "geoimplicit:eval", "executable": str(root / "nowhere" / "geoimplicit"),
         "params": {"DSM": str(data / "pred.tif"), "REFERENCE": str(data / "truth.tif"), "OUTPUT": str(out / "x")}},
        {"id": "fake_crash", "alg": "geoimplicit:dsm", "executable": str(fake), "env": {"FAKE_MODE": "crash"},
         "params": {"POINTS": [str(data / "p.laz")], "EXTENT": "500000,500040,4999970,5000000 [EPSG:32632]",
                    "OUTPUT": str(out / "crash.tif")}},
        {"id": "fake_cancel", "alg": "geoimplicit:dsm", "executable": str(fake), "cancel_after": 3,
         "env": {"FAKE_MODE": "slow", "FAKE_LOG": str(root / "fake_cancel.json")},
         "params": {"POINTS": [str(data / "p.laz")], "EXTENT": "500000,500040,4999970,5000000 [EPSG:32632]",
                    "OUTPUT": {"load": str(out / "cancelled.tif")}}},
    ]
    expected = {"data": data, "out": out, "root": root}
    city = CITY if (CITY / "points.laz").exists() else None
    if _cli_has("dsm") or _cli_has("tile"):
        if city is None:
            city = root / "city"
            done = _geoimplicit("generate", city, "--size", "48", "--seed", "5")
            assert done.returncode == 0, done.stderr
    expected["city"] = city
    if _cli_has("dsm"):
        jobs.append({"id": "dsm_raster", "alg": "geoimplicit:dsm",
                     "params": {"POINTS": [str(city / "points.laz")], "AOI": str(city / "aoi.geojson"),
                                "METHOD": 1, "RESOLUTION": 0.5, "TILE_SIZE": 32, "OVERLAP": 4,
                                "OUTPUT": {"load": str(out / "dsm_raster.tif")}}})
    if _cli_has("mesh"):
        jobs.append({"id": "mesh", "alg": "geoimplicit:mesh",
                     "params": {"POINTS": [str(city / "points.laz")], "AOI": str(city / "aoi.geojson"),
                                "RESOLUTION": 0.5, "TILE_SIZE": 24, "FORMAT": 0, "DEVICE": 1,
                                "OUTPUT": str(out / "mesh.ply"), "DSM": str(out / "mesh_dsm.tif")}})
        jobs.append({"id": "mesh_no_refiner", "alg": "geoimplicit:mesh",
                     "params": {"POINTS": [str(city / "points.laz")], "AOI": str(city / "aoi.geojson"),
                                "RESOLUTION": 0.5, "TILE_SIZE": 24, "FORMAT": 0, "DEVICE": 1, "NO_REFINER": True,
                                "OUTPUT": str(out / "mesh_no_refiner.ply"),
                                "DSM": str(out / "mesh_no_refiner_dsm.tif")}})
    if _cli_has("dsm") and _cli_has("mosaic"):  # the tiles of the DSM run above, mosaicked again
        jobs.append({"id": "mosaic", "alg": "geoimplicit:mosaic",
                     "params": {"TILE_SOURCE": str(out / "dsm_raster_work" / "tiles.gpkg"),
                                "AOI": str(city / "aoi.geojson"), "OUTPUT": {"load": str(out / "mosaic.tif")}}})
    if _cli_has("tile"):
        jobs.append({"id": "tile", "alg": "geoimplicit:tile",
                     "params": {"AOI": str(city / "aoi.geojson"), "TILE_SIZE": 16, "OVERLAP": 2, "RESOLUTION": 0.5,
                                "OUTPUT": {"load": str(out / "tiles.gpkg")}}})
    if _cli_has("nvs", "fit"):  # a tiny view set: 4 views of 32 x 32 pixels
        scene = root / "views_city"
        done = _geoimplicit("generate", scene, "--size", "32", "--seed", "2", "--views", "--n-views", "4",
                            "--view-size", "32", "--no-points")
        assert done.returncode == 0, done.stderr
        expected["views"] = scene / "views"
        jobs.append({"id": "nvs_fit", "alg": "geoimplicit:nvs_fit",
                     "params": {"VIEWS": str(scene / "views"), "LAYOUT": 1, "PLANES": 8, "STEPS": 5,
                                "GEO_PRODUCTS": True, "DEVICE": 1, "COLOUR_SHARE": 0.8, "EXTENT": 1,
                                "OUTPUT": str(out / "mpi")}})
        jobs.append({"id": "nvs_fit_refine", "alg": "geoimplicit:nvs_fit",
                     "params": {"VIEWS": str(scene / "views"), "LAYOUT": 1, "PLANES": 4, "STEPS": 3, "DEVICE": 1,
                                "REFINE_CAMERAS": True, "REFINE_ROUNDS": 2, "OUTPUT": str(out / "mpi_refined")}})
        if _cli_has("nvs", "render"):
            jobs.append({"id": "nvs_render", "alg": "geoimplicit:nvs_render",
                         "params": {"MODEL": str(out / "mpi"), "CAMS": str(scene / "views" / "Cams"), "DEVICE": 1,
                                    "OUTPUT": str(out / "rendered")}})
        if _cli_has("nvs", "eval"):
            jobs.append({"id": "nvs_eval", "alg": "geoimplicit:nvs_eval",
                         "params": {"MODEL": str(out / "mpi"), "VIEWS": str(scene / "views"), "DEVICE": 1,
                                    "OUTPUT": str(out / "nvs_report")}})
            jobs.append({"id": "nvs_eval_aligned", "alg": "geoimplicit:nvs_eval",
                         "params": {"MODEL": str(out / "mpi"), "VIEWS": str(scene / "views"), "DEVICE": 1,
                                    "ALIGN_POSES": 10, "OUTPUT": str(out / "nvs_report_aligned")}})
    expected["runs"] = _run_harness(root, jobs)
    return expected


def _run_harness(root: Path, jobs: list) -> dict:
    """Run ``jobs`` in one headless QGIS (tests/qgis_harness.py under /usr/bin/python3); return its results."""
    spec = root / "jobs.json"
    spec.write_text(json.dumps({"plugin_dir": str(PLUGIN_SRC), "executable": "", "jobs": jobs}))
    results = root / "results.json"
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), str(Path(__file__).with_name("qgis_harness.py")), str(spec), str(results)],
        env=_qgis_env(root / "home"), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0 and results.exists(), proc.stdout + proc.stderr
    return json.loads(results.read_text())


@pytest.mark.qgis
@needs_qgis
def test_provider_offers_every_algorithm_with_help(qgis_runs):
    runs = qgis_runs["runs"]
    assert runs["registered"]
    algs = runs["algorithms"]
    assert set(algs) == {"geoimplicit:dsm", "geoimplicit:eval", "geoimplicit:tile", "geoimplicit:mosaic",
                         "geoimplicit:nvs_fit", "geoimplicit:nvs_render", "geoimplicit:nvs_eval",
                         "geoimplicit:surface_fit", "geoimplicit:surface_dsm", "geoimplicit:surface_render",
                         "geoimplicit:mesh"}
    for alg_id, alg in algs.items():
        assert len(alg["help"]) > 200 and "geoimplicit" in alg["help"], alg_id
    dsm = algs["geoimplicit:dsm"]["params"]
    assert dsm["POINTS"] == "multilayer" and dsm["ORTHO"] == "raster" and dsm["AOI"] == "source"
    assert dsm["EXTENT"] == "extent" and dsm["CRS"] == "crs" and dsm["METHOD"] == "enum"
    assert dsm["RESOLUTION"] == "number" and dsm["OUTPUT"] == "rasterDestination"
    assert algs["geoimplicit:eval"]["outputs"]["OUTPUT_HTML"] == "outputHtml"
    assert algs["geoimplicit:tile"]["params"]["OUTPUT"] == "vectorDestination"
    assert algs["geoimplicit:mosaic"]["params"]["TILES"] == "multilayer"
    assert algs["geoimplicit:nvs_fit"]["params"]["VIEWS"] == "file"
    assert algs["geoimplicit:nvs_eval"]["outputs"]["OUTPUT_HTML"] == "outputHtml"


@pytest.mark.qgis
@needs_qgis
def test_eval_in_qgis_matches_cli_and_numpy(qgis_runs):
    job = qgis_runs["runs"]["jobs"]["eval"]
    assert job["ok"], job.get("traceback")
    data, _out = qgis_runs["data"], qgis_runs["out"]
    # the real CLI of this venv ran, found on PATH
    assert job["commands"][0].startswith(f"{VENV_BIN / 'geoimplicit'} --progress json eval ")
    res = job["results"]
    assert Path(res["OUTPUT_HTML"]).is_file() and res["OUTPUT_HTML"].endswith("report.html")
    assert "<html" in Path(res["OUTPUT_HTML"]).read_text().lower()
    # the same command through the CLI gives the same report
    cli_dir = qgis_runs["root"] / "cli_rep"
    done = _geoimplicit("eval", data / "pred.tif", data / "truth.tif", "-o", cli_dir)
    assert done.returncode == 0, done.stderr
    ours = json.loads(Path(res["REPORT_JSON"]).read_text())["overall"]
    theirs = json.loads((cli_dir / "report.json").read_text())["overall"]
    assert ours == theirs
    # and the numbers agree with numpy on the residual
    import rasterio

    with rasterio.open(data / "pred.tif") as p, rasterio.open(data / "truth.tif") as t:
        e = p.read(1, masked=True).astype(float) - t.read(1).astype(float)
    e = e.compressed()
    assert res["BIAS"] == pytest.approx(e.mean(), abs=1e-4)
    assert res["RMSE"] == pytest.approx(np.sqrt((e ** 2).mean()), abs=1e-4)
    assert res["MAE"] == pytest.approx(np.abs(e).mean(), abs=1e-4)
    assert res["NMAD"] == pytest.approx(1.4826 * np.median(np.abs(e - np.median(e))), abs=1e-3)
    # the residual raster is loaded, on the truth's grid and CRS
    with rasterio.open(cli_dir / "residual.tif") as r1, rasterio.open(res["RESIDUAL"]) as r2:
        np.testing.assert_array_equal(r1.read(), r2.read())
        assert r2.crs.to_epsg() == 32632 and r2.transform == r1.transform
    layer = job["layers"][res["RESIDUAL"]]
    assert layer["valid"] and layer["crs"] == "EPSG:32632" and (layer["width"], layer["height"]) == (80, 60)
    low, high = layer["classification"]  # diverging ramp centred on 0
    assert layer["renderer"] == "singlebandpseudocolor" and low == pytest.approx(-high) and high > 0
    # progress went forward to the end
    assert job["progress"] == sorted(job["progress"]) and job["progress"][-1] == 100.0


@pytest.mark.qgis
@needs_qgis
def test_eval_in_qgis_with_demcompare_s_conventions(qgis_runs):
    job = qgis_runs["runs"]["jobs"]["eval_demcompare"]
    assert job["ok"], job.get("traceback")
    assert " --conventions demcompare " in job["commands"][0]
    report = json.loads(Path(job["results"]["REPORT_JSON"]).read_text())
    assert report["conventions"]["name"] == "demcompare" and "count_with_outliers" in report["overall"]


@pytest.mark.qgis
@needs_qgis
def test_cancel_in_qgis_stops_the_real_cli(qgis_runs):
    job = qgis_runs["runs"]["jobs"]["eval_cancel"]
    assert not job["ok"] and job["canceled"]
    assert "cancelled" in job["error"]
    folder = qgis_runs["out"] / "rep_cancel"
    assert _processes_mentioning(str(folder)) == []
    assert not (folder / "report.html").exists() and not (folder / "report.json").exists()
    assert list(folder.parent.glob(".rep_cancel.partial-*")) == []
    assert job["seconds"] < 30


@pytest.mark.qgis
@needs_qgis
def test_cancel_in_qgis_kills_children_and_partial_files(qgis_runs):
    job = qgis_runs["runs"]["jobs"]["fake_cancel"]
    assert not job["ok"] and job["canceled"] and "cancelled" in job["error"]
    record = json.loads((qgis_runs["root"] / "fake_cancel.json").read_text())
    for _ in range(30):
        if not (_alive(record["pid"]) or _alive(record["child"])):
            break
        time.sleep(0.1)
    assert not _alive(record["pid"]) and not _alive(record["child"])
    assert not Path(record["partial"]).exists() and not (qgis_runs["out"] / "cancelled.tif").exists()


@pytest.mark.qgis
@needs_qgis
def test_bad_input_gives_the_cli_message(qgis_runs):
    job = qgis_runs["runs"]["jobs"]["eval_bad"]
    assert not job["ok"] and job["error_type"] == "QgsProcessingException"
    data = qgis_runs["data"]
    done = _geoimplicit("eval", data / "pred_l93.tif", data / "truth.tif", "-o", qgis_runs["root"] / "cli_bad")
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ")
    assert job["error"].startswith("geoimplicit failed: " + line[len("Error: "):])
    if "--reproject" in line:  # the CLI's option is named as the algorithm's parameter
        assert job["error"].endswith("(here: --reproject is the parameter "
                                     "'Reproject the DSM onto the reference when their CRSs differ')")
    assert "pred_l93.tif" in job["error"] and "Traceback" not in job["error"]
    assert not (qgis_runs["out"] / "rep_bad").exists()


@pytest.mark.qgis
@needs_qgis
def test_could_not_start_and_crash_are_told_apart(qgis_runs):
    jobs = qgis_runs["runs"]["jobs"]
    assert not jobs["no_start"]["ok"]
    assert jobs["no_start"]["error"].startswith("could not start geoimplicit:")
    assert "does not exist" in jobs["no_start"]["error"] and "Processing" in jobs["no_start"]["error"]
    assert not jobs["fake_crash"]["ok"]
    assert jobs["fake_crash"]["error"].startswith("geoimplicit crashed (killed by signal SIGSEGV)")


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("dsm")
def test_dsm_raster_in_qgis_matches_cli_and_is_styled(qgis_runs):
    import rasterio

    job = qgis_runs["runs"]["jobs"]["dsm_raster"]
    assert job["ok"], job.get("error")
    city = qgis_runs["city"]
    path = job["results"]["OUTPUT"]
    cli_out = qgis_runs["root"] / "cli_dsm.tif"
    done = _geoimplicit("dsm", "--points", city / "points.laz", "--aoi", city / "aoi.geojson", "--method",
                        "raster", "--resolution", "0.5", "--tile-size", 32, "--overlap", 4, "-o", cli_out)
    assert done.returncode == 0, done.stderr
    with rasterio.open(path) as ours, rasterio.open(cli_out) as theirs:
        assert ours.crs == theirs.crs and ours.transform == theirs.transform and ours.shape == theirs.shape
        assert ours.count == 1 and ours.nodata == theirs.nodata
        np.testing.assert_array_equal(ours.read(), theirs.read())
        crs = ours.crs
    layer = job["layers"][path]
    assert layer["post_processor"] and layer["renderer"] == "singlebandpseudocolor"
    assert layer["crs"] == f"EPSG:{crs.to_epsg()}"
    low, high = layer["classification"]
    assert low < high
    assert job["progress"] and job["progress"][-1] == 100.0
    assert Path(job["results"]["FILLED"]).is_file() and Path(job["results"]["TILES"]).is_file()


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("mesh")
@pytest.mark.parametrize("job_name, extra", [("mesh", ()), ("mesh_no_refiner", ("--refiner", "none"))])
def test_mesh_in_qgis_matches_cli(qgis_runs, job_name, extra):
    job = qgis_runs["runs"]["jobs"][job_name]
    assert job["ok"], job.get("error")
    city = qgis_runs["city"]
    ours = Path(job["results"]["OUTPUT"]).read_bytes()
    cli_out = qgis_runs["root"] / f"cli_{job_name}.ply"
    done = _geoimplicit("mesh", "--points", city / "points.laz", "--aoi", city / "aoi.geojson", "--resolution",
                        "0.5", "--tile-size", 24, "--device", "cpu", *extra, "-o", cli_out)
    assert done.returncode == 0, done.stderr
    assert ours == cli_out.read_bytes()  # the same command, the same mesh
    assert b"comment crs EPSG:" in ours[:2000]
    assert Path(job["results"]["DSM"]).is_file() and Path(job["results"]["TILES"]).is_file()
    assert job["progress"] and job["progress"][-1] == 100.0


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("mesh")
def test_the_refiner_parameter_reaches_the_mesh_run(qgis_runs):
    jobs = qgis_runs["runs"]["jobs"]
    refined, plain = (Path(jobs[name]["results"]["OUTPUT"]).read_bytes() for name in ("mesh", "mesh_no_refiner"))
    assert plain != refined  # the refiner changes this city's mesh, so NO_REFINER was passed on


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("dsm")
@_skip_unless_cli("mosaic")
def test_mosaic_in_qgis_matches_cli(qgis_runs):
    import rasterio

    job = qgis_runs["runs"]["jobs"]["mosaic"]
    assert job["ok"], job.get("error")
    city, path = qgis_runs["city"], job["results"]["OUTPUT"]
    cli_out = qgis_runs["root"] / "cli_mosaic.tif"
    done = _geoimplicit("mosaic", qgis_runs["out"] / "dsm_raster_work" / "tiles.gpkg", "--aoi",
                        city / "aoi.geojson", "-o", cli_out)
    assert done.returncode == 0, done.stderr
    with rasterio.open(path) as ours, rasterio.open(cli_out) as theirs:
        assert ours.crs == theirs.crs and ours.transform == theirs.transform
        np.testing.assert_array_equal(ours.read(), theirs.read())
    assert job["layers"][path]["renderer"] == "singlebandpseudocolor"


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("tile")
def test_tile_index_in_qgis_matches_cli_and_is_loaded(qgis_runs):
    import pyogrio

    job = qgis_runs["runs"]["jobs"]["tile"]
    assert job["ok"], job.get("error")
    path = job["results"]["OUTPUT"]
    city = qgis_runs["city"]
    cli_out = qgis_runs["root"] / "cli_tiles.gpkg"
    done = _geoimplicit("tile", "--aoi", city / "aoi.geojson", "--tile-size", 16, "--overlap", 2,
                        "--resolution", 0.5, "-o", cli_out)
    assert done.returncode == 0, done.stderr
    ours = pyogrio.read_dataframe(path.split("|")[0], layer="tiles")
    theirs = pyogrio.read_dataframe(cli_out, layer="tiles")
    assert list(ours["id"]) == list(theirs["id"]) and len(ours) > 1
    assert ours.geometry.geom_equals(theirs.geometry).all()
    layer = job["layers"][path]
    assert layer["valid"] and layer["features"] == len(theirs) and "id" in layer["fields"]
    assert job["results"]["COUNT"] == len(theirs)


def _occupancy_available() -> bool:
    return importlib.util.find_spec("geoimplicit.dsm.occupancy.method") is not None


@pytest.mark.slow
@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("dsm")
@pytest.mark.skipif(not _occupancy_available(), reason="the occupancy DSM method is not available yet")
def test_dsm_occupancy_in_qgis_matches_cli(tmp_path):
    import rasterio

    if not (CITY / "points.laz").exists():
        pytest.skip(f"{CITY} not found")
    out = tmp_path / "dsm_occupancy.tif"
    runs = _run_harness(tmp_path, [{
        "id": "occ", "alg": "geoimplicit:dsm",
        "params": {"POINTS": [str(CITY / "points.laz")], "ORTHO": str(CITY / "ortho.tif"), "TRUE_ORTHO": True,
                   "AOI": str(CITY / "aoi.geojson"), "METHOD": 0, "RESOLUTION": 0.5, "DEVICE": 1,
                   "OUTPUT": {"load": str(out)}}}])
    job = runs["jobs"]["occ"]
    assert job["ok"], job.get("error")
    assert "--method occupancy" in job["commands"][0] and "--true-ortho" in job["commands"][0]
    cli_out = tmp_path / "cli.tif"
    done = _geoimplicit("dsm", "--points", CITY / "points.laz", "--ortho", CITY / "ortho.tif", "--true-ortho", "--aoi",
                        CITY / "aoi.geojson", "--resolution", 0.5, "--method", "occupancy", "--device", "cpu",
                        "-o", cli_out)
    assert done.returncode == 0, done.stderr
    with rasterio.open(out) as ours, rasterio.open(cli_out) as theirs:
        assert ours.crs == theirs.crs and ours.transform == theirs.transform
        np.testing.assert_allclose(ours.read(), theirs.read(), atol=1e-3)
    assert job["layers"][str(out)]["renderer"] == "singlebandpseudocolor"
    # without the height refiner: the CLI's --refiner none, and another DSM than the default one
    plain = tmp_path / "dsm_plain.tif"
    runs = _run_harness(tmp_path, [{
        "id": "plain", "alg": "geoimplicit:dsm",
        "params": {"POINTS": [str(CITY / "points.laz")], "ORTHO": str(CITY / "ortho.tif"), "TRUE_ORTHO": True,
                   "AOI": str(CITY / "aoi.geojson"), "METHOD": 0, "RESOLUTION": 0.5, "DEVICE": 1, "NO_REFINER": True,
                   "OUTPUT": {"load": str(plain)}}}])
    job = runs["jobs"]["plain"]
    assert job["ok"], job.get("error")
    assert "--refiner none" in job["commands"][0]
    cli_plain = tmp_path / "cli_plain.tif"
    done = _geoimplicit("dsm", "--points", CITY / "points.laz", "--ortho", CITY / "ortho.tif", "--true-ortho", "--aoi",
                        CITY / "aoi.geojson", "--resolution", 0.5, "--method", "occupancy", "--device", "cpu",
                        "--refiner", "none", "-o", cli_plain)
    assert done.returncode == 0, done.stderr
    with rasterio.open(plain) as ours, rasterio.open(cli_plain) as theirs, rasterio.open(out) as refined:
        np.testing.assert_allclose(ours.read(), theirs.read(), atol=1e-3)
        assert np.abs(ours.read(1) - refined.read(1)).max() > 0.1


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("nvs", "fit")
def test_nvs_fit_in_qgis_loads_geo_products(qgis_runs):
    job = qgis_runs["runs"]["jobs"]["nvs_fit"]
    assert job["ok"], job.get("error")
    assert "--layout geo" in job["commands"][0] and "--device cpu" in job["commands"][0]
    assert "--colour-share 0.8" in job["commands"][0] and "--extent union" in job["commands"][0]
    res = job["results"]
    assert Path(res["MODEL"]).is_file()
    crs = (qgis_runs["views"] / "crs.txt").read_text().strip()
    height = job["layers"][res["HEIGHT"]]
    assert height["renderer"] == "singlebandpseudocolor" and height["crs"] == crs
    assert job["layers"][res["TRUE_ORTHO"]]["valid"]
    assert job["progress"] == sorted(job["progress"]) and job["progress"][-1] == 100.0


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("nvs", "fit")
def test_nvs_fit_in_qgis_refines_cameras_in_rounds(qgis_runs):
    job = qgis_runs["runs"]["jobs"]["nvs_fit_refine"]
    assert job["ok"], job.get("error")
    assert "--refine-cameras --refine-rounds 2" in job["commands"][0]
    model = Path(job["results"]["OUTPUT"])
    assert [p.name for p in (model / "rounds").iterdir()] == ["round_1"]  # two rounds: one before the last
    from geoimplicit.io.cameras import ViewSet

    train = ViewSet.load(qgis_runs["views"]).train_ids
    assert sorted(p.stem for p in (model / "cameras").glob("*.txt")) == sorted(train)
    assert job["progress"] == sorted(job["progress"]) and job["progress"][-1] == 100.0


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("nvs", "render")
def test_nvs_render_in_qgis_matches_cli(qgis_runs):
    import imageio.v3 as iio

    job = qgis_runs["runs"]["jobs"]["nvs_render"]
    assert job["ok"], job.get("error")
    cli_out = qgis_runs["root"] / "cli_rendered"
    done = _geoimplicit("nvs", "render", qgis_runs["out"] / "mpi", "--cams", qgis_runs["views"] / "Cams",
                        "--device", "cpu", "-o", cli_out)
    assert done.returncode == 0, done.stderr
    ours = sorted(Path(job["results"]["IMAGES"]).iterdir())
    theirs = sorted((cli_out / "Images").iterdir())
    assert [p.name for p in ours] == [p.name for p in theirs] and len(ours) == 4
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(iio.imread(a), iio.imread(b))


@pytest.mark.qgis
@needs_qgis
@_skip_unless_cli("nvs", "eval")
def test_nvs_eval_in_qgis_gives_html_and_numbers(qgis_runs):
    job = qgis_runs["runs"]["jobs"]["nvs_eval"]
    assert job["ok"], job.get("error")
    res = job["results"]
    assert Path(res["OUTPUT_HTML"]).is_file()
    report = json.loads((Path(res["OUTPUT"]) / "report.json").read_text())
    assert res["PSNR"] == pytest.approx(report["mean"]["psnr"], abs=0.01)
    assert res["SSIM"] == pytest.approx(report["mean"]["ssim"], abs=1e-4)
    aligned = qgis_runs["runs"]["jobs"]["nvs_eval_aligned"]
    assert aligned["ok"], aligned.get("error")
    assert "--align-poses 10" in aligned["commands"][0] and "--align-poses" not in job["commands"][0]
    report = json.loads((Path(aligned["results"]["OUTPUT"]) / "report.json").read_text())
    assert report["test_pose_alignment_steps"] == 10 and "psnr_given_pose" in report["mean"]
    assert aligned["results"]["PSNR"] == pytest.approx(report["mean"]["psnr"], abs=0.01)


# ---------------------------------------------------------------- zip and qgis_process ------------------------
def _build_zip(dest: Path) -> Path:
    spec = importlib.util.spec_from_file_location("geoimplicit_qgis_build_zip", PLUGIN_SRC / "build_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(dest)


def test_zip_has_one_plugin_folder_and_no_caches(tmp_path):
    (PLUGIN_SRC / PLUGIN_NAME / "__pycache__").mkdir(exist_ok=True)  # as left by any import of the plugin
    path = _build_zip(tmp_path / "dist" / "plugin.zip")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
        metadata = zf.read(f"{PLUGIN_NAME}/metadata.txt").decode()
    assert {n.split("/")[0] for n in names} == {PLUGIN_NAME}
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    for required in ("__init__.py", "metadata.txt", "provider.py", "runner.py", "algorithms.py", "icon.svg"):
        assert f"{PLUGIN_NAME}/{required}" in names
    assert "hasProcessingProvider=yes" in metadata and "qgisMinimumVersion=3.22" in metadata


@pytest.fixture(scope="module")
def qgis_profile(tmp_path_factory):
    """A throwaway QGIS profile with the built zip installed as "Install from ZIP" does, and the plugin enabled."""
    if QGIS_MISSING:
        pytest.skip(f"QGIS not installed: {QGIS_MISSING}")
    if not QGIS_PROCESS.exists():
        pytest.skip(f"{QGIS_PROCESS} not found")
    root = tmp_path_factory.mktemp("qgis_process")
    home = root / "home"
    plugins = home / ".local/share/QGIS/QGIS3/profiles/default/python/plugins"
    plugins.mkdir(parents=True)
    zip_path = _build_zip(root / "geoimplicit_qgis_plugin.zip")
    env = _qgis_env(home)
    install = subprocess.run(
        [str(SYSTEM_PYTHON), "-c",
         "import sys; sys.path.insert(0, '/usr/share/qgis/python'); from pyplugin_installer.unzip import unzip; "
         f"unzip({str(zip_path)!r}, {str(plugins)!r})"],
        env=env, capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    assert (plugins / PLUGIN_NAME / "metadata.txt").exists()
    enable = subprocess.run([str(QGIS_PROCESS), "plugins", "enable", PLUGIN_NAME], env=env, capture_output=True,
                            text=True, timeout=120)
    assert enable.returncode == 0, enable.stdout + enable.stderr
    return {"root": root, "env": env}


def _qgis_process_run(profile, alg, **params):
    args = [str(QGIS_PROCESS), "--json", "run", f"geoimplicit:{alg}", "--"]
    args += [f"{k}={v}" for k, v in params.items()]
    return subprocess.run(args, env=profile["env"], capture_output=True, text=True, timeout=300)


@pytest.mark.qgis
@needs_qgis
def test_qgis_process_runs_the_installed_plugin(qgis_profile):
    root = qgis_profile["root"]
    truth = _surface(40, 50, seed=7)
    _write_dem(root / "truth.tif", truth, "EPSG:2994", left=2_000_000.0, top=700_000.0, res=1.5)  # feet CRS
    _write_dem(root / "pred.tif", truth - 1.0, "EPSG:2994", left=2_000_000.0, top=700_000.0, res=1.5)
    done = _qgis_process_run(qgis_profile, "eval", DSM=root / "pred.tif", REFERENCE=root / "truth.tif",
                             OUTPUT=root / "report")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["provider_details"]["name"] == "geoimplicit"
    res = result["results"]
    assert res["BIAS"] == pytest.approx(-1.0, abs=1e-5) and res["RMSE"] == pytest.approx(1.0, abs=1e-5)
    assert Path(res["OUTPUT_HTML"]).is_file()
    cli_dir = root / "cli_report"
    cli = _geoimplicit("eval", root / "pred.tif", root / "truth.tif", "-o", cli_dir)
    assert cli.returncode == 0, cli.stderr
    assert json.loads((cli_dir / "report.json").read_text())["overall"] == \
        json.loads(Path(res["REPORT_JSON"]).read_text())["overall"]


@pytest.mark.qgis
@needs_qgis
def test_qgis_process_reports_a_bad_input(qgis_profile):
    root = qgis_profile["root"]
    surface = _surface(20, 20, seed=9)
    truth = _write_dem(root / "truth_utm.tif", surface, "EPSG:32632")
    pred = _write_dem(root / "pred_l93.tif", surface, "EPSG:2154", left=700000.0, top=6600000.0)
    done = _qgis_process_run(qgis_profile, "eval", DSM=pred, REFERENCE=truth, OUTPUT=root / "r")
    assert done.returncode != 0
    cli = _geoimplicit("eval", pred, truth, "-o", root / "cli_r")
    assert cli.returncode == 2
    message = cli.stderr.strip().splitlines()[-1][len("Error: "):]
    assert f"geoimplicit failed: {message}" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (root / "r").exists()
