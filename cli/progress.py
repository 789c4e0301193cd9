"""Progress display for the CLI: a tqdm bar on a terminal, a line on stderr every few seconds otherwise (``log``:
a pipe, a log file, a batch job), or a JSON stream (one object a line on stdout).

Log lines (``log`` mode, the default when stderr is not a terminal), at most one every
``GEOIMPLICIT_PROGRESS_SECONDS`` (default 10) seconds per stage, the first only once that much time has passed
(short commands print none), and a last one when a stage that printed finishes:
  fit: 120/300 (40%), 1m05s elapsed, about 1m38s left - loss 0.0412

JSON stream lines (read by the QGIS plugin):
  {"type": "progress", "stage": "tiles", "done": 3, "total": 10, "fraction": 0.3, "message": "..."}
  {"type": "result", "outputs": {"dsm": "/abs/path/dsm.tif", ...}}
  {"type": "error", "message": "..."}            (written by cli.main on failure)
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

LOG_SECONDS_ENV = "GEOIMPLICIT_PROGRESS_SECONDS"


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class _LogLines:
    """Progress as plain lines on stderr, with the rate-based estimate of the time left (``log`` mode)."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._stages = {}  # stage -> [start time, done at start, last print time or None]

    def __call__(self, done, total, stage: str, message: str) -> None:
        now = time.monotonic()
        state = self._stages.setdefault(stage, [now, float(done), None])
        t0, d0, last = state
        finished = bool(total) and done >= total
        due = now - (last if last is not None else t0) >= self.every_s
        if not (due or (finished and last is not None)):
            return
        state[2] = now
        line = f"{stage or 'progress'}: {done:g}/{total:g}" if total else f"{stage or 'progress'}: {done:g}"
        if total:
            line += f" ({100.0 * done / total:.0f}%)"
        line += f", {format_seconds(now - t0)} elapsed"
        rate = (float(done) - d0) / (now - t0) if now > t0 else 0.0
        if total and not finished and rate > 0:
            line += f", about {format_seconds((float(total) - float(done)) / rate)} left"
        if message:
            line += f" - {message}"
        print(line, file=sys.stderr, flush=True)
        if finished:
            self._stages.pop(stage, None)


class ProgressReporter:
    """A callable ``progress(done, total, stage="", message="")`` bound to the chosen display."""

    def __init__(self, mode: str = "auto"):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self._bars = {}
        self._log = _LogLines(float(os.environ.get(LOG_SECONDS_ENV, "10"))) if mode == "log" else None

    def __call__(self, done, total, stage: str = "", message: str = "") -> None:
        if self.mode == "json":
            fraction = (float(done) / float(total)) if total else 0.0
            print(
                json.dumps(
                    {"type": "progress", "stage": stage, "done": done, "total": total,
                     "fraction": round(min(max(fraction, 0.0), 1.0), 6), "message": message}
                ),
                flush=True,
            )
        elif self.mode == "log":
            self._log(done, total, stage, message)
        elif self.mode == "bar":
            from tqdm import tqdm

            bar = self._bars.get(stage)
            if bar is None:
                bar = self._bars[stage] = tqdm(total=total, desc=stage or None, unit="", leave=True, file=sys.stderr)
            bar.total = total
            if message:
                bar.set_postfix_str(message, refresh=False)
            bar.update(done - bar.n)  # update() (not setting n) keeps the rate and the ETA right
            if total and done >= total:
                bar.close()
                self._bars.pop(stage, None)

    def result(self, **outputs) -> None:
        """Announce the outputs of a finished command (paths as strings)."""
        outputs = {k: str(v) for k, v in outputs.items() if v is not None}
        if self.mode == "json":
            print(json.dumps({"type": "result", "outputs": outputs}), flush=True)
        else:
            for key, value in outputs.items():
                click.echo(f"{key}: {value}")

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
