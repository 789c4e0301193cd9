"""The entry point: -v/-q/--progress before or after the command, one error line, tracebacks only with -v."""

from __future__ import annotations

import json

import pytest

from conftest import assert_clean_error


@pytest.mark.parametrize("argv", [("-v", "info", "{missing}"), ("info", "-v", "{missing}"),
                                  ("info", "{missing}", "--verbose"), ("info", "{missing}", "-vv")])
def test_verbose_anywhere_shows_the_traceback(cli, tmp_path, argv):
    missing = tmp_path / "missing.laz"
    result = cli(*[a.format(missing=missing) for a in argv])
    assert result.exit_code == 2, result.output
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_no_traceback_without_verbose(cli, tmp_path):
    assert_clean_error(cli("info", tmp_path / "missing.laz"), "missing.laz", "not found")


@pytest.mark.parametrize("before", [True, False])
def test_progress_json_before_or_after_the_command(cli, tmp_path, before):
    args = ["generate", tmp_path / "city", "--size", 16, "--no-points"]
    args = ["--progress", "json", *args] if before else [*args, "--progress", "json"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["type"] == "result" and lines[-1]["outputs"]["truth_dsm"].endswith("truth_dsm.tif")
    assert any(line["type"] == "progress" for line in lines)
    bad = cli("info", tmp_path / "missing.laz", "--progress", "json")
    assert bad.exit_code == 2 and json.loads(bad.stdout)["type"] == "error"


def test_verbose_and_quiet_after_a_subcommand_of_a_group(cli, tmp_path):
    result = cli("nvs", "eval", tmp_path / "no_model", tmp_path / "no_views", "-o", tmp_path / "r", "-v")
    assert result.exit_code == 2 and "Traceback" in result.stderr, result.output
    # logging is configured by the real process (pytest captures it in-process)
    loud = _run("generate", tmp_path / "a", "--size", 16, "--no-points", "-v")
    assert loud.returncode == 0 and "INFO geoimplicit.synthetic.write: wrote" in loud.stderr, loud.stderr
    quiet = _run("generate", tmp_path / "b", "--size", 16, "--no-points", "-q")
    assert quiet.returncode == 0 and "INFO" not in quiet.stderr, quiet.stderr


def _run(*args):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)


def test_every_command_lists_the_shared_options(cli):
    for command in (("dsm",), ("eval",), ("tile",), ("mosaic",), ("train",), ("generate",), ("info",),
                    ("nvs", "fit"), ("nvs", "render"), ("nvs", "eval")):
        text = cli(*command, "--help").stdout
        assert "--verbose" in text and "--quiet" in text and "--progress" in text, command
