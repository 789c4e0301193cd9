"""Scale-out benchmark: peak memory and throughput of a tiled DSM run, local executor vs a Dask cluster.

    python -m bench.scale --size 2000 --density 6 [--methods raster] [--executors local,dask2] [--write]

Generates (once, seeded) a synthetic area of ``size x size`` metres with ``geoimplicit generate``, then runs
``geoimplicit dsm`` on it as a subprocess per executor, sampling the resident memory of the whole process tree
(driver plus Dask workers and nanny processes) every 0.2 s. Reports points/s, km^2/h and peak RSS. ``--write``
appends the table to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], env=None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], tree_rss(ps))
            except psutil.Error:
                pass
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_bytes": peak[0], "stdout": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=2000.0, help="side of the square area, metres")
    ap.add_argument("--density", type=float, default=6.0, help="points per m^2")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--resolution", type=float, default=0.5)
    ap.add_argument("--method", default="raster")
    ap.add_argument("--executors", default="local,dask2")
    ap.add_argument("--tile-size", type=float, default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "scale"))
    ap.add_argument("--extra", default="", help="extra dsm options, e.g. '--device cuda'")
    ap.add_argument("--write", action="store_true", help="append the results to bench/RESULTS.md")
    args = ap.parse_args(argv)

    out = Path(args.out)
    scene = out / f"city_{int(args.size)}m_d{args.density:g}_s{args.seed}"
    py = [sys.executable, "-m", "cli"]
    if not (scene / "points.laz").exists():
        t0 = time.perf_counter()
        gen = run_measured(py + ["generate", str(scene), "--seed", str(args.seed), "--size", str(args.size),
                                 "--density", str(args.density), "--no-views", "--overwrite"])
        print(f"generated {scene} in {time.perf_counter() - t0:.0f} s (peak RSS {gen['peak_rss_bytes'] / 2**30:.2f} GiB)")
    import laspy

    with laspy.open(scene / "points.laz") as f:
        n_points = f.header.point_count
    area_km2 = (args.size / 1000.0) ** 2

    rows = []
    for name in args.executors.split(","):
        dsm = out / f"dsm_{args.method}_{name}.tif"
        cmd = py + ["--progress", "none", "dsm", "--points", str(scene / "points.laz"), "--aoi",
                    str(scene / "aoi.geojson"), "--resolution", str(args.resolution), "--method", args.method,
                    "-o", str(dsm), "--overwrite", "--workdir", str(out / f"work_{args.method}_{name}")]
        if args.tile_size:
            cmd += ["--tile-size", str(args.tile_size)]
        if name.startswith("dask"):
            cmd += ["--dask-workers", name[4:] or "2"]
        cmd += args.extra.split()
        # a fresh run each time: remove a previous work folder so nothing is resumed
        subprocess.run(["rm", "-rf", str(out / f"work_{args.method}_{name}")], check=True)
        r = run_measured(cmd)
        rows.append({
            "executor": name, "seconds": r["seconds"], "points_per_s": n_points / r["seconds"],
            "km2_per_h": area_km2 / (r["seconds"] / 3600), "peak_rss_gib": r["peak_rss_bytes"] / 2**30,
        })
        print(json.dumps(rows[-1]), flush=True)

    base = rows[0]["seconds"]
    lines = [
        f"\n### Tiled DSM run, {args.method}: {n_points / 1e6:.1f} M points over {area_km2:g} km^2 at {args.resolution} m",
        f"{dt.date.today()}, {platform.node()} ({os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB), "
        f"`python -m bench.scale --size {args.size:g} --density {args.density:g} --method {args.method} "
        f"--executors {args.executors}{' --extra ' + repr(args.extra) if args.extra else ''}`",
        "",
        "| executor | wall s | points/s | km^2/h | peak RSS (tree) GiB | time vs first |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['executor']} | {r['seconds']:.1f} | {r['points_per_s'] / 1e6:.2f} M | {r['km2_per_h']:.1f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['seconds'] / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(REPO / "bench" / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
