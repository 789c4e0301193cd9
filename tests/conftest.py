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
