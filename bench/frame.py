"""Per-tile framing time of the occupancy method (issue 21): ``OccupancyPredictor.frame_tile`` on generated tiles.

    python -m bench.frame [--side-m 480] [--tile-m 160] [--overlap-m 0] [--ortho] [--subcells 1] [--threads 1]
                          [--repeat 5] [--refiner auto|none] [--compare]

A generated city (10 points/m², seed ``--seed``) cut into ``--tile-m`` squares: a 128 m tile with its 16 m of
overlap on every side, at 0.5 m, as the tiled run frames them (``--ortho``: the city's RGB true ortho as both
images). Each pass frames every tile, in ``--threads`` threads as the run's prefetch does; the best pass of
``--repeat`` is reported as milliseconds per tile (wall time of the pass over the tiles). ``--overlap-m 16``:
each tile's core is its square less 16 m on every side (the tiled run's 128 m core in 160 m of context, with the
default 160 m tiles); ``--refiner none``: without the height refiner's statistics. ``--compare``: the passes
alternate with the former framing (the point cells and the refiner's statistics each binning the points, by
boolean masks: the code before the shared binning), checked to give the same tiles; the ratio is reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
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


def _former_point_cells(x, y, left, top, resolution, rows, cols):
    """support.point_cells before the shared binning (boolean masks)."""
    u = np.subtract(x, left)
    u /= resolution
    v = np.subtract(top, y)
    v /= resolution
    inside = (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
    if not inside.all():
        u, v = u[inside], v[inside]
    has = np.zeros(rows * cols, bool)
    has[v.astype(np.intp) * cols + u.astype(np.intp)] = True
    return has.reshape(rows, cols)


def _former_framing_cell_stats(x, y, z, left, top, rows, cols, resolution):
    """refine.cell_stats before the shared binning, and the point cells it did not share (the former framing
    binned the points twice)."""
    _former_point_cells(x, y, left, top, resolution, rows, cols)
    return former_cell_stats(x, y, z, left, top, rows, cols, resolution)


def former_cell_stats(x, y, z, left, top, rows, cols, resolution):
    """refine.cell_stats before it shared the framing's binning (issue 21): the reference the tests and
    ``--compare`` check the shared binning against."""
    col = np.floor((np.asarray(x) - left) / resolution).astype(np.int64)
    row = np.floor((top - np.asarray(y)) / resolution).astype(np.int64)
    ok = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    flat, zz = row[ok] * cols + col[ok], np.asarray(z, np.float64)[ok]
    n = rows * cols
    count = np.bincount(flat, minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(flat, zz, minlength=n) / count
    zmax, zmin = np.full(n, -np.inf), np.full(n, np.inf)
    np.maximum.at(zmax, flat, zz)
    np.minimum.at(zmin, flat, zz)
    for a in (zmax, zmin, mean):
        a[count == 0] = np.nan
    return np.stack([zmax, mean, zmin, count]).reshape(4, rows, cols).astype(np.float32)


@contextlib.contextmanager
def former_framing(enabled: bool = True):
    """The framing as before the shared binning (``frame_tile`` looks these functions up when it runs)."""
    from geoimplicit.dsm.occupancy import infer, support

    saved = infer.cell_stats, support.point_cells
    if enabled:
        infer.cell_stats, support.point_cells = _former_framing_cell_stats, _former_point_cells
    try:
        yield
    finally:
        infer.cell_stats, support.point_cells = saved


def _same_tiles(a, b) -> bool:
    keys = ("pts", "imgs", "xy", "supported", "stats", "zlo", "zhi", "margin", "rows", "cols")
    def same(u, v):
        return np.array_equal(u, v, equal_nan=np.asarray(u).dtype.kind == "f")

    return all(same(getattr(s, k), getattr(t, k)) for s, t in zip(a, b) for k in keys)


def main(argv=None):
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor, _crop_image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side-m", type=float, default=480.0)
    ap.add_argument("--tile-m", type=float, default=160.0)
    ap.add_argument("--overlap-m", type=float, default=0.0, help="context around each tile's core")
    ap.add_argument("--resolution", type=float, default=0.5)
    ap.add_argument("--refiner", default="auto", help="auto (the shipped refiner's statistics) or none")
    ap.add_argument("--compare", action="store_true", help="alternate with the former framing; report the ratio")
    ap.add_argument("--ortho", action="store_true", help="the city's ortho as both images")
    ap.add_argument("--subcells", type=int, default=1, help="extract.readout_subcells")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    predictor = OccupancyPredictor(device="cpu")
    predictor.cfg.extract.readout_subcells = args.subcells
    if args.refiner == "none":
        predictor.refiner = None
    tiles, city = city_tiles(args.side_m, args.tile_m, args.seed)
    images = {b: [_crop_image(city.ortho, city.transform, b)] * 2 if args.ortho else [] for b, *_ in tiles}
    o = args.overlap_m

    def frame(tile):
        b, x, y, z = tile
        return predictor.frame_tile(x, y, z, core_bounds=(b[0] + o, b[1] + o, b[2] - o, b[3] - o), context_bounds=b,
                                    resolution=args.resolution, images=images[b])

    modes = ("now", "former") if args.compare else ("now",)
    best, framed = dict.fromkeys(modes, float("inf")), {}
    with cf.ThreadPoolExecutor(args.threads) as pool:
        for mode in modes:
            with former_framing(mode == "former"):
                framed[mode] = list(pool.map(frame, tiles))  # also the imports and warm-up
        for _ in range(args.repeat):
            for mode in modes:  # alternating: a shared machine's load falls on both
                with former_framing(mode == "former"):
                    t0 = time.perf_counter()
                    list(pool.map(frame, tiles))
                    best[mode] = min(best[mode], time.perf_counter() - t0)
    points = np.mean([len(t[1]) for t in tiles])
    ms = {m: best[m] / len(tiles) * 1e3 for m in modes}
    print(f"{len(tiles)} tiles of {args.tile_m:g} m (core {args.tile_m - 2 * o:g} m), {points:,.0f} points each, "
          f"ortho {args.ortho}, subcells {args.subcells}, refiner {predictor.refiner is not None}, {args.threads} "
          f"threads: {ms['now']:.1f} ms per tile (best of {args.repeat})")
    if args.compare:
        print(f"former framing: {ms['former']:.1f} ms per tile; ratio former / now {ms['former'] / ms['now']:.2f}; "
              f"same tiles: {_same_tiles(framed['now'], framed['former'])}")


if __name__ == "__main__":
    main()
