"""`make demo`: run the main job on ``sample_data/`` and say where the outputs are.

It runs the same ``geoimplicit`` commands a user would type (printed as it goes): the occupancy DSM of the
sample city (default weights shipped with the package), the raster baseline for comparison, and the accuracy
report of each against the sample's ground truth.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITY = REPO / "sample_data" / "synthetic_city"


def _run(args: list) -> None:
    cmd = [sys.executable, "-m", "cli", *map(str, args)]
    shown = "geoimplicit " + " ".join(shlex.quote(str(a)) for a in args)
    print(f"\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"demo step failed (exit {done.returncode}): {shown}")
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def main(out_dir: str = "out/demo") -> None:
    out = (REPO / out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = ["--points", CITY / "points.laz", "--aoi", CITY / "aoi.geojson", "--resolution", "0.5", "--overwrite"]
    # the sample's ortho is a true ortho (rendered straight down), and the model is told so
    _run(["dsm", *common, "--ortho", CITY / "ortho.tif", "--true-ortho", "--method", "occupancy",
          "-o", out / "dsm_occupancy.tif"])
    _run(["dsm", *common, "--method", "raster", "-o", out / "dsm_raster.tif"])
    for name in ("occupancy", "raster"):
        _run(["eval", out / f"dsm_{name}.tif", CITY / "truth_dsm.tif", "--classes", CITY / "classes.tif",
              "-o", out / f"report_{name}", "--overwrite"])

    print("\nMedian absolute error / RMSE / NMAD against the sample's ground truth (metres):")
    for name in ("occupancy", "raster"):
        report = json.loads((out / f"report_{name}" / "report.json").read_text())
        m = report["overall"]
        print(f"  {name:10s} {m['median_abs_error']:.3f} / {m['rmse']:.3f} / {m['nmad']:.3f}")
    print(f"\nOutputs in {out}:")
    for path in sorted(out.iterdir()):
        print(f"  {path.name}{'/' if path.is_dir() else ''}")
    print(f"Open {out / 'report_occupancy' / 'report.html'} in a browser, and the .tif files in QGIS.")


if __name__ == "__main__":
    main(*sys.argv[1:2])
