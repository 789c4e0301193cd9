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
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from geoimplicit.cores import HeapTrimmed, forked_pool, process_workers
from geoimplicit.errors import CancelledError
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


def _map_pieces(pieces, workers: int, forked: Callable[[], None] | None = None):
    """``(piece, _route_piece(piece))`` over the pieces as they complete, in this process or in forked worker
    processes; ``forked()`` once every worker is forked (all pieces are submitted first: no fork comes later)."""
    if workers <= 1:
        _tell(forked)
        for p in pieces:
            yield p, _route_piece(p)
        return
    import concurrent.futures as cf

    with forked_pool(workers) as pool:
        futures = {pool.submit(HeapTrimmed(_route_piece), p): p for p in pieces}
        _tell(forked)
        try:
            for fut in cf.as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def top_down_files(dataset) -> list[int]:
    """The input files' numbers from the north down, west to east within a row of files (files whose tops are
    within half a file's height of each other make a row): the order the tiles
    and the mosaic's blocks go in, so that the routing finishes the tiles in about their order."""
    b = np.array([f.xy_bounds for f in dataset.files], dtype=np.float64).reshape(-1, 4)
    height = float(np.median(b[:, 3] - b[:, 1])) or 1.0  # rows of files: tops within half a file of each other
    row = np.round((b[:, 3].max() - b[:, 3]) / height)
    return sorted(range(len(b)), key=lambda i: (row[i], b[i, 0], i))


def tile_files(dataset, tiles: Sequence) -> list[list[int]]:
    """Per tile, the numbers of the files whose header bounds meet its context (the points it may get)."""
    fb = np.array([f.xy_bounds for f in dataset.files], dtype=np.float64).reshape(-1, 4)
    out = []
    for t in tiles:
        left, bottom, right, top = t.context_bounds
        meet = (fb[:, 0] < right) & (fb[:, 2] >= left) & (fb[:, 1] < top) & (fb[:, 3] >= bottom)
        out.append(np.flatnonzero(meet).tolist())
    return out


def routing_order(dataset, tiles: Sequence) -> list[int]:
    """Positions in ``tiles`` in the order their points are all routed (the last of their files in
    :func:`top_down_files` order), north to south and west to east among equals: about the order of the mosaic's
    blocks, which are written behind the tiles."""
    rank = {f: r for r, f in enumerate(top_down_files(dataset))}
    last = [max((rank[f] for f in files), default=-1) for files in tile_files(dataset, tiles)]
    return sorted(range(len(tiles)), key=lambda i: (last[i], tiles[i].row, tiles[i].col))


class _Readiness:
    """Which tiles have all their points routed, as the files complete (:func:`route_points` ``ready=``)."""

    def __init__(self, dataset, tiles: Sequence, pieces: Sequence, ready: Callable[[list[int]], None]):
        self.ready = ready
        self.left = {}  # file -> pieces still to route
        for f, _, _ in pieces:
            self.left[f] = self.left.get(f, 0) + 1
        self.waiting = {}  # tile position -> files still to route
        self.by_file: dict[int, list[int]] = {}
        for pos, files in enumerate(tile_files(dataset, tiles)):
            files = [f for f in files if f in self.left]
            self.waiting[pos] = len(files)
            for f in files:
                self.by_file.setdefault(f, []).append(pos)
        self.ready([pos for pos, n in self.waiting.items() if n == 0])

    def piece_done(self, file_no: int) -> None:
        self.left[file_no] -= 1
        if self.left[file_no]:
            return
        now = []
        for pos in self.by_file.get(file_no, ()):
            self.waiting[pos] -= 1
            if self.waiting[pos] == 0:
                now.append(pos)
        if now:
            self.ready(now)


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
    ready: Callable[[list[int]], None] | None = None,
    forked: Callable[[], None] | None = None,
) -> Path:
    """Stream ``dataset`` (a :class:`~geoimplicit.io.pointcloud.PointCloudDataset`) into per-tile pieces.

    Returns ``route_dir``; each tile's points are in ``route_dir/<tile id>/*.npy`` (read them with
    :func:`load_tile_points`, in the order of the inputs). Only points inside the union of the tiles' context
    bounds are kept. Chunks of ``chunk_size`` points (default :func:`route_chunk`) are read and routed by
    ``workers`` processes (default :func:`route_workers`), each decoding on one core; one worker: in this
    process, decoding with lazrs' threads. The files are read from the north down (:func:`top_down_files`);
    the pieces' names keep every tile's points in the order of the inputs whatever order they are routed in.

    ``ready(positions)``: told, from this thread, the tiles (positions in ``tiles``) whose points are all routed,
    as the files complete (the tiles can start while the rest is routed); ``forked()``: once the worker processes
    exist (no fork comes later), or when there are none to make.
    """
    route_dir = Path(route_dir)
    tiles = list(tiles)
    key = routing_key([f.path for f in dataset.files], tiles, fields)
    manifest = route_dir / MANIFEST
    if manifest.exists():
        try:
            if json.loads(manifest.read_text()).get("key") == key:
                log.info("reusing routed points in %s", route_dir)
                _tell(forked)
                if ready is not None:
                    ready(list(range(len(tiles))))
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
    rank = {f: r for r, f in enumerate(top_down_files(dataset))}
    pieces = sorted((p for p in _pieces(dataset, int(chunk_size)) if id(dataset.files[p[0]]) in inside),
                    key=lambda p: (rank[p[0]], p[1]))
    dtype = np.dtype([(f, np.float64 if f in ("x", "y", "z") else np.float32) for f in fields])
    _JOB.update(dataset=dataset, tiles=tiles, bounds=bounds, fields=fields, dtype=dtype, route_dir=route_dir,
                serial=workers > 1)
    read, counts = 0, np.zeros(len(tiles), dtype=np.int64)
    readiness = None if ready is None else _Readiness(dataset, tiles, pieces, ready)
    try:
        for piece, (n, c) in _map_pieces(pieces, workers, forked):
            check_cancel(cancel)
            read, counts = read + n, counts + c
            if readiness is not None:
                readiness.piece_done(piece[0])
            if progress is not None:
                progress(min(read, total), total, "read points", f"{read:,} points read")
    finally:
        _JOB.clear()
    manifest.write_text(
        json.dumps({"key": key, "fields": list(fields), "points_read": read, "points_routed": int(counts.sum()),
                    "tiles": {t.id: int(c) for t, c in zip(tiles, counts)}}, indent=1)
    )
    return route_dir


def _tell(callback) -> None:
    if callback is not None:
        callback()


_BEHIND: dict[str, "RoutingBehind"] = {}  # route folder -> the routing still running for it in this process


class RoutingBehind:
    """:func:`route_points` in a thread while the tiles run: a tile starts once every file over its context is
    routed (:func:`wait_routed`, called by the tile's loading). The worker processes are forked before this
    returns, so that no fork happens while the tiles' threads (GDAL, CUDA) run. :meth:`join` waits for the end
    and raises the routing's error; :meth:`stop` ends it early (the run stopped)."""

    def __init__(self, dataset, tiles: Sequence, route_dir, *, fields: Sequence[str], progress=None, cancel=None,
                 **route_kw):
        self.route_dir = Path(route_dir)
        self._pos = {t.id: i for i, t in enumerate(tiles)}
        self._ready: set[int] = set()
        self.order: list[int] = []  # tile positions in the order they were told ready
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._finished = False
        self._stop = threading.Event()
        forked = threading.Event()

        def stopped() -> bool:
            return self._stop.is_set() or (cancel is not None and cancel())

        def work() -> None:
            try:
                route_points(dataset, tiles, route_dir, fields=fields, progress=progress, cancel=stopped,
                             ready=self._tell_ready, forked=forked.set, **route_kw)
            except BaseException as exc:  # noqa: BLE001 - handed to join()
                self._error = exc
            finally:
                forked.set()
                with self._cond:
                    self._finished = True
                    self._cond.notify_all()

        self._thread = threading.Thread(target=work, name="routing", daemon=True)
        self._thread.start()
        forked.wait()
        _BEHIND[_key(route_dir)] = self

    def _tell_ready(self, positions: list[int]) -> None:
        with self._cond:
            self._ready.update(positions)
            self.order.extend(positions)
            self._cond.notify_all()

    def wait(self, tile_id: str) -> None:
        """Block until the tile's points are routed; :class:`CancelledError` (the tile is left pending) if the
        routing stopped first (its own error comes from :meth:`join`)."""
        pos = self._pos[tile_id]
        with self._cond:
            while pos not in self._ready and not self._finished:
                self._cond.wait()
            if pos not in self._ready:
                raise CancelledError("the routing of the points stopped", hint="re-run the same command to resume")

    def join(self) -> None:
        self._thread.join()
        _BEHIND.pop(_key(self.route_dir), None)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        _BEHIND.pop(_key(self.route_dir), None)

    def join_error(self, cause: BaseException) -> None:
        """After :meth:`stop`: raise the routing's own error (from ``cause``, the tiles' failure) if it had one
        other than being stopped."""
        if self._error is not None and not (self._stop.is_set() and isinstance(self._error, CancelledError)):
            raise self._error from cause


def _key(route_dir) -> str:
    return str(Path(route_dir).resolve())


def wait_routed(route_dir, tile_id: str) -> None:
    """Wait for a tile's points where this process routes them behind the tiles (:class:`RoutingBehind`)."""
    behind = _BEHIND.get(_key(route_dir))
    if behind is not None:
        behind.wait(tile_id)


def load_tile_points(route_dir: str | os.PathLike, tile_id: str,
                     fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The points routed to one tile as a dict of arrays (empty arrays when the tile got none; ``fields``: their
    names, else read from the routing's manifest)."""
    tile_dir = Path(route_dir) / tile_id
    pieces = [np.load(p) for p in sorted(tile_dir.glob("*.npy"))] if tile_dir.exists() else []
    if not pieces:
        if fields is None:
            fields = json.loads((Path(route_dir) / MANIFEST).read_text())["fields"]
        return {f: np.empty(0, dtype=np.float64 if f in ("x", "y", "z") else np.float32) for f in fields}
    rec = np.concatenate(pieces)
    return {name: np.ascontiguousarray(rec[name]) for name in rec.dtype.names}


def routed_counts(route_dir: str | os.PathLike) -> dict[str, int]:
    """Points routed to each tile, from the manifest."""
    return json.loads((Path(route_dir) / MANIFEST).read_text())["tiles"]
