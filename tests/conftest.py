"""Shared fixtures: paths to the real data beside the checkout, the committed sample data, and a CLI runner."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
SHARED_DATA = Path(os.environ.get("GEOIMPLICIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real public LiDAR, orthos, DSMs); the test is skipped where it is absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(
            f"real data not found at {SHARED_DATA}: clone beside ../shared or set GEOIMPLICIT_SHARED_DATA"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The committed ``sample_data/`` folder."""
    return SAMPLE_DATA


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args) -> CliResult:
    """Run ``geoimplicit ARGS`` in-process through the real entry point (error handling included)."""
    from cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors on a shared 2-core machine: one thread is ~10x faster than two that fight."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_view_city(tmp_path_factory):
    """A 48 m generated city (seed 7, EPSG:2154) and its view set of 8 views of 48 px: (views folder, scene).
    Shared by the surface tests: copy the folder before changing anything in it."""
    from geoimplicit.synthetic import generate_city, render_view_set, scene_bounds

    root = tmp_path_factory.mktemp("tiny_view_city")
    scene = generate_city(7, bounds=scene_bounds(48, crs="EPSG:2154"), resolution=0.5, building_density=0.3)
    render_view_set(scene, root / "views", seed=7, n_views=8, size=48, n_track=2, supersample=1)
    return root / "views", scene


@pytest.fixture
def cli():
    """``cli("dsm", "--points", ...)`` -> CliResult(exit_code, stdout, stderr)."""
    return run_cli


def assert_clean_error(result: CliResult, *fragments: str, code: int = 2) -> None:
    """A user error: the expected exit code, one ``Error:`` line naming the fragments, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
