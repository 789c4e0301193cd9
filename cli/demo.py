"""`make demo`: run the main job on ``sample_data/`` and say where the outputs are.

It runs the same ``geoimplicit`` commands a user would type (printed as it goes): the occupancy DSM of the
sample city (default weights shipped with the package), the raster baseline for comparison, and the accuracy
report of each against the sample's ground truth. The sample city comes from the checkout's ``sample_data/``;
an installed package has none, so the demo then makes the same city again with ``geoimplicit generate``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# sample_data/README.md: the committed city is this command's output, byte for byte
CITY_COMMAND = ["--seed", "4", "--size", "128", "--density", "8"]
CITY_FILES = ("points.laz", "aoi.geojson", "ortho.tif", "truth_dsm.tif", "classes.tif")


def find_city(out: Path) -> Path:
    """The sample city: $GEOIMPLICIT_SAMPLE_DATA, the checkout's sample_data/, ./sample_data/, or else made
    again into OUT/sample_city by the generator (an installed package has no sample_data/)."""
    candidates = [Path(p) / "synthetic_city" for p in (os.environ.get("GEOIMPLICIT_SAMPLE_DATA"),) if p]
    candidates += [REPO / "sample_data" / "synthetic_city", Path.cwd() / "sample_data" / "synthetic_city"]
    for city in candidates:
        if all((city / name).exists() for name in CITY_FILES):
            return city
    city = out / "sample_city"
    out.mkdir(parents=True, exist_ok=True)
    if not all((city / name).exists() for name in CITY_FILES):
        print("sample_data/ not found (looked in: " + ", ".join(str(c) for c in candidates) + "); making the "
              "sample city again, as sample_data/README.md says", flush=True)
        _run(["generate", city, *CITY_COMMAND, "--overwrite"], cwd=out)
    return city


def _run(args: list, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "cli", *map(str, args)]
    shown = "geoimplicit " + " ".join(shlex.quote(str(a)) for a in args)
    print(f"\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(cmd, cwd=cwd, env=env)  # REPO holds cli/ (a checkout, or site-packages)
    if done.returncode != 0:
        sys.exit(f"demo step failed (exit {done.returncode}): {shown}")
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def main(out_dir: str = "out/demo") -> None:
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    city = find_city(out)
    common = ["--points", city / "points.laz", "--aoi", city / "aoi.geojson", "--resolution", "0.5", "--overwrite"]
    # the sample's ortho is a true ortho (rendered straight down), and the model is told so
    _run(["dsm", *common, "--ortho", city / "ortho.tif", "--true-ortho", "--method", "occupancy",
          "-o", out / "dsm_occupancy.tif"], cwd=out)
    _run(["dsm", *common, "--method", "raster", "-o", out / "dsm_raster.tif"], cwd=out)
    for name in ("occupancy", "raster"):
        _run(["eval", out / f"dsm_{name}.tif", city / "truth_dsm.tif", "--classes", city / "classes.tif",
              "-o", out / f"report_{name}", "--overwrite"], cwd=out)

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
