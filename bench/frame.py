"""Per-tile framing time of the occupancy method (issue 21): ``OccupancyPredictor.frame_tile`` on generated tiles.

    python -m bench.frame [--side-m 480] [--tile-m 160] [--ortho] [--subcells 1] [--threads 1] [--repeat 5]

A generated city (10 points/m², seed ``--seed``) cut into ``--tile-m`` squares: a 128 m tile with its 16 m of
overlap on every side, at 0.5 m, as the tiled run frames them (``--ortho``: the city's RGB true ortho as both
images). Each pass frames every tile, in ``--threads`` threads as the run's prefetch does; the best pass of
``--repeat`` is reported as milliseconds per tile (wall time of the pass over the tiles).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import time

import numpy as np


def city_tiles(side_m: float, tile_m: float, seed: int, density: float = 10.0):
    """The generated city's points cut into ``tile_m`` squares: [(bounds, x, y, z)], and the city."""
    from geoimplicit.synthetic.city import generate_city, scene_bounds
    from geoimplicit.synthetic.points import sample_points

    city = generate_city(seed, bounds=scene_bounds(side_m, crs="EPSG:2154"), resolution=0.5, crs="EPSG:2154")
    p = sample_points(city, seed, density=density)
    left, _, _, top = city.bounds
    n = int(side_m // tile_m)
    tiles = []
    for i in range(n):
        for j in range(n):
            b = (left + i * tile_m, top - (j + 1) * tile_m, left + (i + 1) * tile_m, top - j * tile_m)
            m = (p["x"] >= b[0]) & (p["x"] < b[2]) & (p["y"] >= b[1]) & (p["y"] < b[3])
            tiles.append((b, p["x"][m].copy(), p["y"][m].copy(), p["z"][m].copy()))
    return tiles, city


def main(argv=None):
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor, _crop_image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side-m", type=float, default=480.0)
    ap.add_argument("--tile-m", type=float, default=160.0)
    ap.add_argument("--resolution", type=float, default=0.5)
    ap.add_argument("--ortho", action="store_true", help="the city's ortho as both images")
    ap.add_argument("--subcells", type=int, default=1, help="extract.readout_subcells")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    predictor = OccupancyPredictor(device="cpu")
    predictor.cfg.extract.readout_subcells = args.subcells
    tiles, city = city_tiles(args.side_m, args.tile_m, args.seed)
    images = {b: [_crop_image(city.ortho, city.transform, b)] * 2 if args.ortho else [] for b, *_ in tiles}

    def frame(tile):
        b, x, y, z = tile
        return predictor.frame_tile(x, y, z, core_bounds=b, context_bounds=b, resolution=args.resolution,
                                    images=images[b])

    frame(tiles[0])  # imports
    best = float("inf")
    with cf.ThreadPoolExecutor(args.threads) as pool:
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            list(pool.map(frame, tiles))
            best = min(best, time.perf_counter() - t0)
    points = np.mean([len(t[1]) for t in tiles])
    print(f"{len(tiles)} tiles of {args.tile_m:g} m, {points:,.0f} points each, ortho {args.ortho}, subcells "
          f"{args.subcells}, {args.threads} threads: {best / len(tiles) * 1e3:.1f} ms per tile (best of "
          f"{args.repeat})")


if __name__ == "__main__":
    main()
