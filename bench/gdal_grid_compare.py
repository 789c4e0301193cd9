"""Quality and speed of ``geoimplicit dsm --method raster`` against GDAL's ``gdal_grid`` on the same grid.

    python -m bench.gdal_grid_compare [--workdir /tmp/geoimplicit_bench_gdal] [--no-append]

Inputs (each with a truth DSM on the grid that is computed):
- IGN Montpellier tile 77055_627760 (real LiDAR, ../shared/data) against IGN's own 0.5 m DSM;
- a generated city (``geoimplicit generate --seed 7 --size 256 --density 10``: noise, holes, 0.5 % outliers)
  against its ``truth_dsm.tif``.

Methods: geoimplicit raster (max, outlier removal, membrane fill up to 5 m: the default), and ``gdal_grid``
``maximum`` (radius = half the cell diagonal) and ``invdistnn`` (radius = cell diagonal, 12 points, power 2),
from a CSV of the same points (the CSV export is not timed). Metrics on cells valid in both the result and
the truth: RMSE, median absolute error, coverage (valid cells / truth cells). Times are wall seconds of one
process (gdal_grid single-threaded as well).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOIMPLICIT_SHARED_DATA", REPO.parent / "shared" / "data"))
GDAL_GRID = shutil.which("gdal_grid") or "/usr/bin/gdal_grid"


def _metrics(pred: np.ndarray, truth: np.ndarray, nodata=-9999.0) -> dict:
    tv = (truth != nodata) & np.isfinite(truth)
    pv = (pred != nodata) & np.isfinite(pred)
    both = tv & pv
    e = pred[both].astype(np.float64) - truth[both]
    return {"rmse": float(np.sqrt(np.mean(e ** 2))), "medae": float(np.median(np.abs(e))),
            "bias": float(np.median(e)), "coverage": float(both.sum() / max(tv.sum(), 1))}


def _read(path):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1), ds.bounds, ds.res[0], ds.crs


def _csv(laz: Path, csv: Path) -> int:
    import laspy

    las = laspy.read(laz)
    keep = ~np.isin(np.asarray(las.classification), (7, 18))
    arr = np.column_stack((np.asarray(las.x)[keep], np.asarray(las.y)[keep], np.asarray(las.z)[keep]))
    with open(csv, "w") as f:
        f.write("x,y,z\n")
        np.savetxt(f, arr, fmt="%.3f", delimiter=",")
    return len(arr)


def _gdal(csv: Path, out: Path, algo: str, bounds, res: float, crs: str) -> float:
    left, bottom, right, top = bounds
    w, h = int(round((right - left) / res)), int(round((top - bottom) / res))
    vrt = csv.with_suffix(".vrt")
    vrt.write_text(
        f'<OGRVRTDataSource><OGRVRTLayer name="{csv.stem}"><SrcDataSource>{csv}</SrcDataSource>'
        '<GeometryType>wkbPoint25D</GeometryType>'
        '<GeometryField encoding="PointFromColumns" x="x" y="y" z="z"/></OGRVRTLayer></OGRVRTDataSource>'
    )
    cmd = [GDAL_GRID, "-q", "-a", algo, "-l", csv.stem, "-txe", str(left), str(right), "-tye", str(top), str(bottom), "-outsize", str(w), str(h),
           "-ot", "Float32", "-a_srs", crs, "--config", "GDAL_NUM_THREADS", "1", str(vrt), str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def _ours(laz: Path, out: Path, bounds, res: float, workdir: Path, options: dict | None = None) -> float:
    from geoimplicit.run import run_dsm

    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    run_dsm([str(laz)], out, resolution=res, bbox=tuple(bounds), workdir=workdir, overwrite=True,
            method="raster", method_options=options)
    return time.perf_counter() - t0


def compare(name: str, laz: Path, truth_path: Path, work: Path) -> list[dict]:
    truth, b, res, crs = _read(truth_path)
    crs_s = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_wkt()
    bounds = (b.left, b.bottom, b.right, b.top)
    work.mkdir(parents=True, exist_ok=True)
    csv = work / f"{name}_points.csv"
    n = _csv(laz, csv)
    rows = []
    t = _ours(laz, work / f"{name}_geoimplicit.tif", bounds, res, work / f"{name}_work")
    rows.append({"input": name, "points": n, "method": "geoimplicit raster (max + outliers + fill)", "seconds": t,
                 **_metrics(_read(work / f"{name}_geoimplicit.tif")[0], truth)})
    d = res * np.sqrt(2)
    # the interpolating statistic, with invdistnn's radius and power
    t = _ours(laz, work / f"{name}_geoimplicit_idw.tif", bounds, res, work / f"{name}_work_idw",
              {"stat": "idw", "idw_radius": d, "idw_max_points": 12})
    rows.append({"input": name, "points": n, "method": "geoimplicit raster --stat idw --idw-max-points 12",
                 "seconds": t, **_metrics(_read(work / f"{name}_geoimplicit_idw.tif")[0], truth)})
    for label, algo in (("gdal_grid maximum", f"maximum:radius1={d / 2}:radius2={d / 2}:nodata=-9999"),
                        ("gdal_grid invdistnn", f"invdistnn:power=2:radius={d}:max_points=12:nodata=-9999")):
        out = work / f"{name}_{label.split()[1]}.tif"
        t = _gdal(csv, out, algo, bounds, res, crs_s)
        pred = _read(out)[0]
        if pred.shape != truth.shape:
            raise RuntimeError(f"{label}: grid {pred.shape} != truth {truth.shape}")
        rows.append({"input": name, "points": n, "method": label, "seconds": t, **_metrics(pred, truth)})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/geoimplicit_bench_gdal"))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    ign = SHARED / "ign_montpellier"
    if (ign / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif").exists():
        rows += compare("ign_77055_627760", ign / "test_data_77055_627760_LA93_IGN69.laz",
                        ign / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif", work)
    city = work / "city"
    if not (city / "truth_dsm.tif").exists():
        subprocess.run([str(Path(os.sys.executable).with_name("geoimplicit")), "generate", str(city), "--seed", "7",
                        "--size", "256", "--density", "10"], check=True, capture_output=True)
    rows += compare("generated_city_seed7", city / "points.laz", city / "truth_dsm.tif", work)
    lines = ["", "## DSM raster vs GDAL gdal_grid (`python -m bench.gdal_grid_compare`)", "",
             f"{datetime.date.today()}, {platform.machine()} ({os.cpu_count()} cores, shared), GDAL "
             f"{subprocess.run([GDAL_GRID, '--version'], capture_output=True, text=True).stdout.strip()}. "
             "Same points (noise classes 7/18 dropped for gdal_grid too), same 0.5 m grid as the truth. Errors in "
             "metres on cells valid in both; coverage = share of the truth's cells with a value.", "",
             "| input | points | method | time | RMSE | median abs err | median err | coverage |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['points']:,} | {r['method']} | {r['seconds']:.2f} s | {r['rmse']:.3f} | "
                     f"{r['medae']:.3f} | {r['bias']:+.3f} | {r['coverage']:.1%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
