"""`pip install .` (not editable) gives a working `geoimplicit` command from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def test_wheel_install_gives_working_command(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(REPO)],
        check=True, cwd=tmp_path,
    )
    wheels = list(wheel_dir.glob("geoimplicit-*.whl"))
    assert len(wheels) == 1
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheels[0])],
        check=True, cwd=tmp_path,
    )
    script = site / "bin" / "geoimplicit"
    assert script.exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, str(script), "--version"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, check=True)
    assert "geoimplicit, version" in out.stdout
    where = subprocess.run([sys.executable, "-c", "import geoimplicit, cli; print(geoimplicit.__file__, cli.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert str(site) in where and str(REPO) not in where
    # the shipped default weights and configs travel with the wheel
    assert any((site / "geoimplicit").rglob("*.yaml")) or not any((REPO / "geoimplicit").rglob("*.yaml"))
    assert any((site / "geoimplicit").rglob("*.pt")) or not any((REPO / "geoimplicit").rglob("*.pt"))


def test_cli_help_lists_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_unknown_command_is_a_usage_error(cli):
    result = cli("no-such-command")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
