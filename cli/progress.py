"""Progress display for the CLI: a tqdm bar on a terminal, or a JSON stream (one object a line on stdout).

JSON stream lines (read by the QGIS plugin):
  {"type": "progress", "stage": "tiles", "done": 3, "total": 10, "fraction": 0.3, "message": "..."}
  {"type": "result", "outputs": {"dsm": "/abs/path/dsm.tif", ...}}
  {"type": "error", "message": "..."}            (written by cli.main on failure)
"""

from __future__ import annotations

import json
import sys

import click


class ProgressReporter:
    """A callable ``progress(done, total, stage="", message="")`` bound to the chosen display."""

    def __init__(self, mode: str = "auto"):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self._bars = {}

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
