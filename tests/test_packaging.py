"""`pip install .` (not editable) gives a working `geoimplicit` command from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A non-editable install of this checkout into a temporary folder: (tmp folder, its site folder)."""
    tmp_path = tmp_path_factory.mktemp("install")
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
    return tmp_path, site


def test_wheel_install_gives_working_command(installed):
    tmp_path, site = installed
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


def test_installed_demo_finds_or_remakes_the_sample_data(installed, tmp_path):
    """An installed package has no sample_data/ (the demo's path broke, issue 15): from another folder the demo
    makes the sample city again with the generator, the same files as the committed ones."""
    _, site = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GEOIMPLICIT_SAMPLE_DATA"}
    env["PYTHONPATH"] = str(site)
    code = "import sys; from pathlib import Path; from cli.demo import find_city; print(find_city(Path(sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    city = Path(done.stdout.strip().splitlines()[-1])
    assert city == tmp_path / "out" / "sample_city" and "sample_data/ not found" in done.stdout
    committed = REPO / "sample_data" / "synthetic_city"
    for name in ("points.laz", "truth_dsm.tif", "classes.tif", "ortho.tif", "aoi.geojson"):
        assert (city / name).read_bytes() == (committed / name).read_bytes(), name
    # with GEOIMPLICIT_SAMPLE_DATA it uses the folder given
    env["GEOIMPLICIT_SAMPLE_DATA"] = str(REPO / "sample_data")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out2")], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and Path(done.stdout.strip()) == committed, done.stderr
