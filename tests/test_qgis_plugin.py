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
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "qgis_plugin"
PLUGIN_NAME = "geoimplicit_qgis"
FAKE_CLI = Path(__file__).with_name("qgis_fake_cli.py")
SYSTEM_PYTHON = Path("/usr/bin/python3")
QGIS_PLUGINS = Path("/usr/share/qgis/python/plugins")
QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")
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
