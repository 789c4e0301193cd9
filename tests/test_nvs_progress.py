"""``nvs fit`` shows progress with the time left when its output is not a terminal, and warns of long fits."""

from __future__ import annotations

import logging
import re

import pytest

from cli.progress import ProgressReporter, _LogLines, format_seconds
from geoimplicit.mpi.demo import make_analytic_views


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    return make_analytic_views(tmp_path_factory.mktemp("views"), size=32, n_views=5, n_test=1, seed=3)


LINE = re.compile(r"^fit: (\d+)/(\d+) \((\d+)%\), (\d+)s elapsed(, about (\d+)s left)? - loss [0-9.]+$")


def test_nvs_fit_prints_progress_lines_with_time_left_when_not_a_terminal(cli, views, tmp_path, monkeypatch,
                                                                          caplog):
    import geoimplicit.mpi.fit as fit_module

    monkeypatch.setenv("GEOIMPLICIT_PROGRESS_SECONDS", "0")  # every update (the default is one line per 10 s)
    monkeypatch.setattr(fit_module, "LONG_FIT_SECONDS", 0.0)  # any fit counts as long: the warning must come
    with caplog.at_level(logging.INFO):
        r = cli("nvs", "fit", views, "-o", tmp_path / "m", "--planes", "4", "--steps", "40", "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = [m for m in map(LINE.match, r.stderr.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == list(range(10, 41, 10))  # progress_every 10 steps
    assert all(int(m.group(2)) == 40 for m in lines)
    # the time left from the second line on (the first has no rate yet), none once done
    assert all(m.group(5) for m in lines[1:-1]) and not lines[-1].group(5)
    assert "model:" in r.stdout and "fit:" not in r.stdout  # results on stdout, progress on stderr
    long = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING and "a step on" in
            rec.getMessage()]
    assert len(long) == 1 and "min for the 34 steps left" in long[0] and "--preset cpu" in long[0], long


def test_the_time_left_of_a_refining_fit_counts_the_rounds_to_come(cli, views, tmp_path, monkeypatch, caplog):
    import geoimplicit.mpi.fit as fit_module

    monkeypatch.setattr(fit_module, "LONG_FIT_SECONDS", 0.0)
    with caplog.at_level(logging.INFO):
        r = cli("nvs", "fit", views, "-o", tmp_path / "m", "--planes", "4", "--steps", "40", "--device", "cpu",
                "--refine-cameras", "--refine-rounds", "2")
    assert r.exit_code == 0, r.output
    long = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING and "a step on" in
            rec.getMessage()]
    # round 1 of 2: 34 of its steps after the 6 timed ones, and the 40 of round 2; announced once
    assert len(long) == 1 and "min for the 74 steps left (this round and 1 more)" in long[0], long
    assert "--refine-rounds" in long[0]


def test_log_lines_rate_estimate_and_throttle(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr("cli.progress.time.monotonic", lambda: clock[0])
    log = _LogLines(every_s=10.0)
    log(0, 100, "fit", "")
    clock[0] = 105.0
    log(10, 100, "fit", "")  # 5 s: not yet
    clock[0] = 110.0
    log(20, 100, "fit", "x")  # 20 steps in 10 s: 80 left at 2 a second = 40 s
    clock[0] = 112.0
    log(25, 100, "fit", "")  # throttled
    clock[0] = 130.0
    log(100, 100, "fit", "")  # finished: always printed once something was
    err = capsys.readouterr().err.splitlines()
    assert err == ["fit: 20/100 (20%), 10s elapsed, about 40s left - x", "fit: 100/100 (100%), 30s elapsed"]


def test_short_stages_print_nothing_and_auto_is_log_off_a_terminal(capsys):
    rep = ProgressReporter("auto")  # pytest's stderr is not a terminal
    assert rep.mode == "log"
    for i in range(1, 6):
        rep(i, 5, "eval", "")
    assert capsys.readouterr().err == ""
    assert [format_seconds(s) for s in (42, 185, 7620)] == ["42s", "3m05s", "2h07m"]
