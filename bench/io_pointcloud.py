"""Streaming LAS/LAZ reading: throughput and peak memory of PointCloudDataset.iter_chunks vs laspy.read.

python -m bench.io_pointcloud [--points 5000000] [--chunk 1000000]
Writes a synthetic LAZ (EPSG:2154, point format 6) in a temporary folder, then measures, each in a fresh
subprocess: laspy.read of the whole file (the baseline) and iter_chunks over it (plus a crop, and a
reprojection to EPSG:32631).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, resource
import numpy as np
mode, path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
n = 0
if mode == "laspy.read":
    import laspy
    las = laspy.read(path)
    x, y, z = np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)
    n = len(x)
else:
    from geoimplicit.io import PointCloudDataset
    ds = PointCloudDataset(path, crs="EPSG:32631" if mode == "reproject" else None)
    b = ds.bounds
    bounds = None if mode != "crop" else (b[0], b[1], (b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    for c in ds.iter_chunks(bounds, chunk_size=chunk):
        n += len(c["x"])
dt = time.perf_counter() - t
print(json.dumps({"mode": mode, "points": n, "seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_file(path: Path, n: int) -> None:
    import laspy
    import numpy as np
    import pyproj

    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = [0.01, 0.01, 0.01]
    header.offsets = [770000, 6277000, 0]
    header.add_crs(pyproj.CRS.from_epsg(2154))
    rng = np.random.default_rng(0)
    side = (n / 20.0) ** 0.5  # 20 pts/m2
    with laspy.open(path, mode="w", header=header) as writer:
        step = 1_000_000
        for start in range(0, n, step):
            m = min(step, n - start)
            rec = laspy.ScaleAwarePointRecord.zeros(m, header=header)
            rec.x = 770000 + rng.random(m) * side
            rec.y = 6277000 + rng.random(m) * side
            rec.z = 30 + rng.random(m) * 20
            rec.classification = rng.integers(1, 7, m).astype(np.uint8)
            writer.write_points(rec)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=5_000_000)
    parser.add_argument("--chunk", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.laz"
        t = time.perf_counter()
        make_file(path, args.points)
        print(f"wrote {args.points} points, {path.stat().st_size / 1e6:.1f} MB LAZ in {time.perf_counter() - t:.1f} s")
        rows = []
        for mode in ("laspy.read", "iter_chunks", "crop", "reproject"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(args.chunk)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["mpts_per_s"] = row["points"] / row["seconds"] / 1e6 if mode != "crop" else args.points / row["seconds"] / 1e6
            rows.append(row)
            print(f"{mode:12s} {row['points']:>10d} pts  {row['seconds']:6.2f} s  {row['mpts_per_s']:5.2f} Mpts/s"
                  f"  peak RSS {row['peak_rss_mb']:7.1f} MB")


if __name__ == "__main__":
    main()
