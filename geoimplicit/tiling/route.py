"""Route a point cloud to the tiles that need it, reading every input once, in chunks.

A large area is far bigger than memory, and reading the input files once per tile would read every point
several times. Instead the clouds are streamed chunk by chunk; each point goes to every tile whose context
(``Tile.context_bounds``: its lattice cell plus the overlap) contains it, and each tile's share is appended to its own folder of ``.npy`` pieces in the
run's work folder. Peak memory depends on the chunk size, not on the area. A finished routing leaves a
manifest; a re-run with the same inputs and grid reuses it, an interrupted one starts the routing again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from geoimplicit.cores import HeapTrimmed, forked_pool, process_workers
from geoimplicit.outputs import input_fingerprint
from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel

log = logging.getLogger(__name__)

MANIFEST = "routing.json"


def _lattice(tiles: Sequence) -> tuple[float, float, float, dict]:
    """Origin (left, top) and step of the regular tile lattice, and (row, col) -> position in ``tiles``."""
    first = tiles[0]
    left, bottom, right, top = first.core_bounds
    step = (first.context_bounds[2] - first.context_bounds[0]) - 2 * (left - first.context_bounds[0])  # a whole cell
    origin_left = left - first.col * step
    origin_top = top + first.row * step
    return origin_left, origin_top, step, {(t.row, t.col): i for i, t in enumerate(tiles)}


def routing_key(files: Iterable[str | os.PathLike], tiles: Sequence, fields: Sequence[str]) -> str:
    """A fingerprint of the inputs (path, size, mtime), the tiles' bounds and the fields routed."""
    return input_fingerprint(files, {"tiles": [(t.id, [round(v, 6) for v in t.context_bounds]) for t in tiles],
                                     "fields": list(fields)})


def assign_to_tiles(x: np.ndarray, y: np.ndarray, tiles: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (point index, tile position) for every tile whose bounds contain a point (overlap included)."""
    pid, tid, _ = _assign(x, y, tiles)
    return pid, tid


def _assign(x: np.ndarray, y: np.ndarray, tiles: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`assign_to_tiles` and the group of each pair: 0 a point in its own cell's tile, 1-8 in the
    neighbour across an edge or corner (the pairs come by group, each in point order).

    The overlap may be at most half a tile step: a point belongs to its own lattice cell's tile and, when it
    lies within the overlap of that cell's edges, to the neighbours across those edges. Only the few points
    near an edge are tested against the neighbours, so the cost is about one pass over the points.
    """
    origin_left, origin_top, step, _ = _lattice(tiles)
    rows = np.array([t.row for t in tiles])
    cols = np.array([t.col for t in tiles])
    r0, c0 = rows.min() - 1, cols.min() - 1
    lookup = np.full((rows.max() - r0 + 2, cols.max() - c0 + 2), -1, dtype=np.int64)
    lookup[rows - r0, cols - c0] = np.arange(len(tiles))
    bounds = np.array([t.context_bounds for t in tiles], dtype=np.float64)  # what each tile's method may read
    margin = max(t.core_bounds[0] - t.context_bounds[0] for t in tiles)

    fx = (x - origin_left) / step
    fy = (origin_top - y) / step
    col = np.floor(fx).astype(np.int64)
    row = (np.ceil(fy) - 1).astype(np.int64)  # y in [bottom, top) of its row, like the bounds tests below

    def candidates(idx, dr, dc):
        rr = row[idx] + dr - r0
        cc = col[idx] + dc - c0
        inside = (rr >= 0) & (rr < lookup.shape[0]) & (cc >= 0) & (cc < lookup.shape[1])
        cand = np.full(len(idx), -1, dtype=np.int64)
        cand[inside] = lookup[rr[inside], cc[inside]]
        ok = cand >= 0
        b = bounds[np.where(ok, cand, 0)]
        xi, yi = x[idx], y[idx]
        # half-open on the right and top edges so a point on a shared edge is not counted twice
        ok &= (xi >= b[:, 0]) & (xi < b[:, 2]) & (yi >= b[:, 1]) & (yi < b[:, 3])
        return idx[ok], cand[ok]

    # a point always lies in the core of its own cell's tile (cores partition the plane): no bounds test
    h, w = lookup.shape
    inside = (row >= r0) & (row < r0 + h) & (col >= c0) & (col < c0 + w)
    own = lookup.ravel()[np.clip(row - r0, 0, h - 1) * w + np.clip(col - c0, 0, w - 1)]
    own = np.where(inside, own, -1)
    keep = np.flatnonzero(own >= 0)
    pairs = [(keep, own[keep], 0)]
    m = margin / step + 1e-12
    ux, uy = fx - col, fy - row  # position inside the own cell, in (0, 1]
    side_c = {-1: ux < m, 1: ux > 1 - m}  # near the left / right edge
    side_r = {-1: uy < m, 1: uy > 1 - m}  # near the top / bottom edge
    neighbours = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
    for group, (dr, dc) in enumerate(neighbours, start=1):
        near = side_c[dc] if dr == 0 else side_r[dr] if dc == 0 else side_c[dc] & side_r[dr]
        idx = np.flatnonzero(near)
        if len(idx):
            pairs.append((*candidates(idx, dr, dc), group))
    return (np.concatenate([p for p, _, _ in pairs]), np.concatenate([t for _, t, _ in pairs]),
            np.concatenate([np.full(len(p), g, np.uint8) for p, _, g in pairs]))


def route_chunk(total_points: int, workers: int | None = None) -> int:
    """Points per chunk: about two chunks per worker (they finish together), 200 000 to 1 000 000, a multiple of
    LAZ's 50 000-point chunks (a worker seeks to its first point without decoding the chunks before)."""
    workers = workers or process_workers()
    n = min(1_000_000, max(200_000, -(-int(total_points) // (2 * workers))))
    return -(-n // 50_000) * 50_000


def route_workers(total_points: int, chunk_size: int, workers: int | None = None) -> int:
    """Worker processes for the routing (:func:`geoimplicit.cores.process_workers`), no more than there are
    chunks; 1 (in this process) for a small input or where processes cannot fork."""
    import multiprocessing

    if workers is None:
        workers = process_workers()
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(int(workers), -(-int(total_points) // int(chunk_size))))


def _pieces(dataset, chunk_size: int) -> list[tuple[int, int, int]]:
    """(file number, first point, count) of every chunk, in reading order."""
    return [(i, s, min(chunk_size, f.point_count - s)) for i, f in enumerate(dataset.files)
            for s in range(0, f.point_count, chunk_size)]


_JOB: dict = {}  # the routing a forked worker serves: set in the parent before the pool forks


READ_POINTS = 250_000  # points decoded and assigned at a time within a chunk: a worker's memory


def _route_piece(piece: tuple[int, int, int]) -> tuple[int, np.ndarray]:
    """Read one chunk, ``READ_POINTS`` at a time, and write each tile's share of it to
    ``<tile id>/<file>_<first point>.npy``; (points read, points per tile)."""
    j = _JOB
    file_no, start, count = piece
    shares: dict[int, dict[int, list[np.ndarray]]] = {}  # tile -> group -> records, in reading order
    read = 0
    for chunk in j["dataset"].file_chunks(file_no, start, count, j["bounds"], fields=j["fields"],
                                          serial=j["serial"], read_size=READ_POINTS):
        read += len(chunk["x"])
        for t, g, rec in _tile_shares(chunk, j["tiles"], j["fields"], j["dtype"]):
            shares.setdefault(t, {}).setdefault(g, []).append(rec)
    counts = np.zeros(len(j["tiles"]), dtype=np.int64)
    for t, groups in shares.items():
        tile_dir = j["route_dir"] / j["tiles"][t].id
        tile_dir.mkdir(exist_ok=True)
        # by group, then reading order: the order the whole chunk read at once gives (the methods see the same)
        rec = np.concatenate([r for g in sorted(groups) for r in groups[g]])
        np.save(tile_dir / f"{file_no:05d}_{start:012d}.npy", rec)  # names sort in reading order
        counts[t] = len(rec)
    return read, counts


def _tile_shares(chunk: dict, tiles: Sequence, fields: Sequence[str], dtype):
    """(tile position, group, records) of ``chunk``'s points for every tile and group (:func:`_assign`) it has."""
    pid, tid, group = _assign(chunk["x"], chunk["y"], tiles)
    key = tid * 9 + group
    # a stable sort of 16-bit keys is a radix sort in numpy: linear in the points
    order = np.argsort(key.astype(np.uint16) if len(tiles) * 9 < 65536 else key, kind="stable")
    pid, key = pid[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.array([], int)
    for s, e in zip(starts, np.r_[starts[1:], len(key)]):
        sel = pid[s:e]
        rec = np.empty(len(sel), dtype=dtype)
        for f in fields:
            rec[f] = chunk[f][sel]
        yield int(key[s] // 9), int(key[s] % 9), rec


def _map_pieces(pieces, workers: int):
    """``_route_piece`` over the pieces, in this process or in forked worker processes; results in order."""
    if workers <= 1:
        yield from map(_route_piece, pieces)
        return
    with forked_pool(workers) as pool:
        futures = [pool.submit(HeapTrimmed(_route_piece), p) for p in pieces]
        try:
            for fut in futures:
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def route_points(
    dataset,
    tiles: Sequence,
    route_dir: str | os.PathLike,
    *,
    fields: Sequence[str] = ("x", "y", "z"),
    chunk_size: int | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> Path:
    """Stream ``dataset`` (a :class:`~geoimplicit.io.pointcloud.PointCloudDataset`) into per-tile pieces.

    Returns ``route_dir``; each tile's points are in ``route_dir/<tile id>/*.npy`` (read them with
    :func:`load_tile_points`, in the order of the inputs). Only points inside the union of the tiles' context
    bounds are kept. Chunks of ``chunk_size`` points (default :func:`route_chunk`) are read and routed by
    ``workers`` processes (default :func:`route_workers`), each decoding on one core; one worker: in this
    process, decoding with lazrs' threads.
    """
    route_dir = Path(route_dir)
    tiles = list(tiles)
    key = routing_key([f.path for f in dataset.files], tiles, fields)
    manifest = route_dir / MANIFEST
    if manifest.exists():
        try:
            if json.loads(manifest.read_text()).get("key") == key:
                log.info("reusing routed points in %s", route_dir)
                return route_dir
        except (OSError, ValueError):
            pass
    if route_dir.exists():
        shutil.rmtree(route_dir)
    route_dir.mkdir(parents=True)
    bounds = tuple(f(t.context_bounds[i] for t in tiles) for i, f in enumerate((min, min, max, max)))
    inside = {id(f) for f in dataset.files_for(bounds)}
    if not inside:
        next(iter(dataset.iter_chunks(bounds)), None)  # raises the AOIError that names the files
    fields = tuple(fields)
    total = int(dataset.point_count)
    chunk_size = chunk_size or route_chunk(total, workers)
    workers = route_workers(total, chunk_size, workers)
    pieces = [p for p in _pieces(dataset, int(chunk_size)) if id(dataset.files[p[0]]) in inside]
    dtype = np.dtype([(f, np.float64 if f in ("x", "y", "z") else np.float32) for f in fields])
    _JOB.update(dataset=dataset, tiles=tiles, bounds=bounds, fields=fields, dtype=dtype, route_dir=route_dir,
                serial=workers > 1)
    read, counts = 0, np.zeros(len(tiles), dtype=np.int64)
    try:
        for n, c in _map_pieces(pieces, workers):
            check_cancel(cancel)
            read, counts = read + n, counts + c
            if progress is not None:
                progress(min(read, total), total, "read points", f"{read:,} points read")
    finally:
        _JOB.clear()
    manifest.write_text(
        json.dumps({"key": key, "fields": list(fields), "points_read": read, "points_routed": int(counts.sum()),
                    "tiles": {t.id: int(c) for t, c in zip(tiles, counts)}}, indent=1)
    )
    return route_dir


def load_tile_points(route_dir: str | os.PathLike, tile_id: str) -> dict[str, np.ndarray]:
    """The points routed to one tile as a dict of arrays (empty arrays when the tile got none)."""
    tile_dir = Path(route_dir) / tile_id
    pieces = [np.load(p) for p in sorted(tile_dir.glob("*.npy"))] if tile_dir.exists() else []
    if not pieces:
        fields = json.loads((Path(route_dir) / MANIFEST).read_text())["fields"]
        return {f: np.empty(0, dtype=np.float64 if f in ("x", "y", "z") else np.float32) for f in fields}
    rec = np.concatenate(pieces)
    return {name: np.ascontiguousarray(rec[name]) for name in rec.dtype.names}


def routed_counts(route_dir: str | os.PathLike) -> dict[str, int]:
    """Points routed to each tile, from the manifest."""
    return json.loads((Path(route_dir) / MANIFEST).read_text())["tiles"]
