"""Benchmark: time to generate a large synthetic city (rasters + chunked LAZ), and its peak memory.

    python -m bench.synthetic --size 1000 --density 22 [--out bench/out/synthetic_1km]

Baseline in the same run: the 128 m demo tile, to show how the time scales with the area.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=float, default=1000.0)
    ap.add_argument("--density", type=float, default=22.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="bench/out/synthetic_1km")
    args = ap.parse_args(argv)

    from geoimplicit.synthetic import generate_city, scene_bounds, write_city

    out = Path(args.out)
    for path in (out, out.with_name(out.name + "_demo")):
        if path.exists():
            shutil.rmtree(path)
    tb = time.perf_counter()
    demo = generate_city(args.seed, bounds=scene_bounds(128.0))
    write_city(demo, out.with_name(out.name + "_demo"), seed=args.seed, density=args.density, views=False)
    t_demo = time.perf_counter() - tb
    t0 = time.perf_counter()
    scene = generate_city(args.seed, bounds=scene_bounds(args.size))
    t_scene = time.perf_counter() - t0
    t1 = time.perf_counter()
    paths = write_city(scene, out, seed=args.seed, density=args.density, views=False)
    t_write = time.perf_counter() - t1
    import json

    meta = json.loads(paths["scene"].read_text())
    n = meta["points"]["count"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    laz_mb = paths["points"].stat().st_size / 1e6
    print(f"host: {platform.node()} {platform.processor() or platform.machine()}")
    print(f"area: {args.size:.0f} m x {args.size:.0f} m at 0.5 m ({scene.shape[0]}x{scene.shape[1]} px), "
          f"{len(scene.buildings)} buildings, {len(scene.trees)} trees")
    print(f"scene (rasters, ortho, shadows): {t_scene:.1f} s")
    print(f"write (GeoTIFFs + {n:,} points to LAZ, {laz_mb:.0f} MB): {t_write:.1f} s "
          f"({n / max(t_write, 1e-9) / 1e6:.2f} M points/s)")
    print(f"total: {t_scene + t_write:.1f} s; peak RSS {peak_mb:.0f} MB")
    ratio = (t_scene + t_write) / t_demo
    area_ratio = (args.size / 128.0) ** 2
    print(f"baseline 128 m demo tile: {t_demo:.2f} s; {area_ratio:.0f}x the area took {ratio:.0f}x the time")


if __name__ == "__main__":
    main()
