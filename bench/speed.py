"""End-to-end speed of the tiled DSM run, LAZ in -> COG out at 0.5 m (issue 21), for occupancy and raster.

    python -m bench.speed --device cuda --out OUT [--side-m 1000] [--copies-side 4] [--budget-s 420]

The small area: one generated city of ``--side-m`` x ``--side-m`` (seed ``--seed``, 10 points/m², one LAZ file).
The large area: ``--copies-side``² copies of that file side by side, shifted by rewriting only the header
offsets (tiles of a survey, like IGN's 1 km² LiDAR HD tiles; the content repeats, the work per km² does not
change). Per run: wall time, km²/h, the stages (from the run's progress: read points, tiles, mosaic; the
occupancy model's own timings), peak memory (PSS) of this process and its workers, peak GPU memory, and the ratio to
the surface-search-only ceiling of the same run. LAZ decoding: points/s of laspy's single-threaded read
against this package's reader (parallel) in the same run. Runs that would not fit ``--budget-s`` are skipped
(and said to be). Writes OUT/speed_bench.json and OUT/speed_bench.md; the LAZ and COGs go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from geoimplicit.cores import usable_cores
from geoimplicit.jobs.executors import LocalExecutor
from geoimplicit.tiling.route import route_chunk, route_workers

log = logging.getLogger("bench.speed")
RESOLUTION = 0.5


# --------------------------------------------------------------------------------------------- inputs
def make_area(work: Path, side_m: float, seed: int) -> dict:
    """One generated city LAZ of ``side_m`` x ``side_m`` metres (EPSG:2154)."""
    from geoimplicit.synthetic.city import generate_city, scene_bounds
    from geoimplicit.synthetic.points import iter_point_chunks, write_points

    laz, about = work / "area_0_0.laz", work / "area_0_0.json"
    if about.exists() and laz.exists():  # made by an earlier run in this work folder (same side and seed)
        made = json.loads(about.read_text())
        if made.get("side_m") == side_m and made.get("seed") == seed:
            return made
    t0 = time.perf_counter()
    bounds = scene_bounds(float(side_m), crs="EPSG:2154")
    city = generate_city(seed, bounds=bounds, resolution=RESOLUTION, crs="EPSG:2154")
    t1 = time.perf_counter()
    _, n = write_points(laz, iter_point_chunks(city, 1, density=10.0), city.crs, overwrite=True)
    made = {"laz": str(laz), "bounds": list(bounds), "points": int(n), "generate_s": t1 - t0,
            "write_laz_s": time.perf_counter() - t1, "side_m": side_m, "seed": seed}
    about.write_text(json.dumps(made))
    return made


# LAS header byte offsets of the x/y offsets and of max x, min x, max y, min y (all float64, LAS 1.0-1.4)
_OFFSET_X, _OFFSET_Y, _MAX_X, _MIN_X, _MAX_Y, _MIN_Y = 155, 163, 179, 187, 195, 203


def shifted_copy(src: Path, dst: Path, dx: float, dy: float) -> Path:
    """A copy of a LAS/LAZ file whose points are moved by (dx, dy): only the header's offsets and bounds change
    (the points are stored as integers relative to the offsets), so nothing is recompressed."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        for pos, d in ((_OFFSET_X, dx), (_OFFSET_Y, dy), (_MAX_X, dx), (_MIN_X, dx), (_MAX_Y, dy), (_MIN_Y, dy)):
            fh.seek(pos)
            (v,) = struct.unpack("<d", fh.read(8))
            fh.seek(pos)
            fh.write(struct.pack("<d", v + d))
    return dst


def tiled_area(area: dict, work: Path, n_side: int) -> dict:
    """``n_side`` x ``n_side`` shifted copies of the small area's file, edge to edge."""
    left, bottom, right, top = area["bounds"]
    step = right - left
    paths = []
    for i in range(n_side):
        for j in range(n_side):
            src = Path(area["laz"])
            paths.append(str(src if i == j == 0 else shifted_copy(src, work / f"area_{i}_{j}.laz", i * step, j * step)))
    return {"laz": paths, "bounds": [left, bottom, left + n_side * step, bottom + n_side * step],
            "points": area["points"] * n_side * n_side}


# --------------------------------------------------------------------------------------------- memory
def _rollup(pid: int) -> dict[str, int]:
    """Bytes of ``pid``'s Pss, Private_Clean and Private_Dirty (/proc/<pid>/smaps_rollup); {} where unreadable."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("Pss", "Private_Clean", "Private_Dirty"):
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def process_tree(root: int) -> dict[int, int]:
    """``root`` and all its descendants (Linux /proc): pid -> resident pages."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parent[int(d)], rss[int(d)] = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
    keep, todo = set(), [root]
    while todo:
        p = todo.pop()
        keep.add(p)
        todo += [c for c, pp in parent.items() if pp == p and c not in keep]
    return {p: rss[p] for p in keep if p in rss}


def tree_memory(root: int) -> tuple[int, int]:
    """Bytes of ``root``'s process tree: the sum of the PSS (shared pages split between the forked workers that
    share them; RSS where unreadable), and a bound that counts no page twice: the RSS of ``root`` and the
    private pages of its descendants (the pages they share with ``root`` are in its RSS)."""
    page = os.sysconf("SC_PAGE_SIZE")
    pss, bound = 0, 0
    for pid, rss_pages in process_tree(root).items():
        r = _rollup(pid)
        pss += r.get("Pss", rss_pages * page)
        bound += rss_pages * page if pid == root else r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
    return pss, bound


class PeakRss:
    """Samples the RSS of this process tree every ``every_s`` in a thread; ``peak`` in bytes, and ``by_stage``
    the peak while each ``stage`` (set by the caller) ran."""

    def __init__(self, every_s: float = 0.1):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self.stage, self.by_stage, self.bound_by_stage = "", {}, {}

    def __enter__(self):
        self.start = tree_memory(os.getpid())[0]
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every_s):
            (v, b), stage = tree_memory(os.getpid()), self.stage
            self.peak = max(self.peak, v)
            self.by_stage[stage] = max(self.by_stage.get(stage, 0), v)
            self.bound_by_stage[stage] = max(self.bound_by_stage.get(stage, 0), b)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_memory(os.getpid())[0])


# --------------------------------------------------------------------------------------------- runs
class _KeepPopped(dict):
    """run._STATES that remembers the last state popped (the occupancy predictor and its timings)."""

    popped = None

    def pop(self, key, *default):
        value = dict.pop(self, key, *default)
        if value is not None:
            self.popped = value
        return value


def _stages(marks: dict, t0: float, wall: float) -> dict:
    """Seconds per stage from the times each stage's progress first and last reported."""
    out, last = {}, t0
    for name, (first, end) in sorted(marks.items(), key=lambda kv: kv[1][1]):
        out[name or "other"] = end - last
        out[f"{name} (first report)"] = first - t0
        last = end
    out["after last progress"] = t0 + wall - last
    return out


def timed_run(paths, out_tif: Path, bounds, method: str, options: dict, executor=None,
              stacks: bool = False) -> dict:
    """One `geoimplicit dsm` run (plan, route, tiles, mosaic to COG), timed per stage, memory sampled;
    ``stacks``: the threads' Python stacks sampled too (:mod:`bench.stacks`)."""
    import contextlib

    import torch

    from bench.stacks import StackSampler

    from geoimplicit import run as run_module

    marks: dict[str, list[float]] = {}

    def progress(done, total, stage="", message=""):
        now = time.perf_counter()
        marks.setdefault(stage, [now, now])[1] = now
        mem.stage = stage  # the stage a memory peak belongs to (before the first report: "")

    states = run_module._STATES = _KeepPopped(run_module._STATES)
    work = out_tif.with_name(out_tif.stem + "_work")
    shutil.rmtree(work, ignore_errors=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = StackSampler() if stacks else contextlib.nullcontext()
    with PeakRss() as mem, sampler:
        t0 = time.perf_counter()
        run_module.run_dsm(paths, out_tif, resolution=RESOLUTION, bbox=tuple(bounds), method=method,
                           method_options=options, workdir=work, overwrite=True, progress=progress,
                           executor=executor)
        wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    area = (bounds[2] - bounds[0]) * (bounds[3] - bounds[1]) / 1e6
    r = {"wall_s": wall, "area_km2": area, "km2_per_h": area / wall * 3600, "stages_s": _stages(marks, t0, wall),
         "rss_start_gb": mem.start / 1e9, "peak_rss_gb": mem.peak / 1e9,
         "peak_rss_gb_by_stage": {k or "start": v / 1e9 for k, v in mem.by_stage.items()},
         "peak_rss_bound_gb_by_stage": {k or "start": v / 1e9 for k, v in mem.bound_by_stage.items()}}
    if stacks:
        r["thread_stacks"] = sampler.top()
    if cuda:
        r["peak_gpu_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
        r["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    timings = getattr(states.popped, "timings", None)
    if timings is not None:
        tm = timings.as_dict()
        r["model_timings_s"] = tm
        if tm.get("search"):
            r["search_ceiling_km2_per_h"] = area / tm["search"] * 3600
            r["ratio_to_search_ceiling"] = r["km2_per_h"] / r["search_ceiling_km2_per_h"]
    return r


def decode_rates(paths: list[str]) -> dict:
    """LAZ decoding, x y z: laspy's single-threaded read of the first file against this package's reader
    (one chunk per worker process, as the routing reads) on ``paths``; points/s, per core."""
    import laspy

    from geoimplicit.io.pointcloud import PointCloudDataset

    t0 = time.perf_counter()
    las = laspy.read(paths[0], laz_backend=laspy.LazBackend.Lazrs)
    n1 = len(las.points)
    _ = (np.asarray(las.x), np.asarray(las.y), np.asarray(las.z))
    single = n1 / (time.perf_counter() - t0)
    del las, _
    ds = PointCloudDataset(paths)
    t0 = time.perf_counter()
    n = sum(_map_decode(ds))
    ours = n / (time.perf_counter() - t0)
    workers = route_workers(ds.point_count, route_chunk(ds.point_count))
    cores = workers if workers > 1 else usable_cores()  # one worker: lazrs' threads on every core
    return {"files": len(paths), "points": int(n), "cores": cores, "laspy_single_thread_points_per_s": single,
            "ours_points_per_s": ours, "ours_points_per_s_per_core": ours / cores,
            "speedup_vs_laspy_single": ours / single}


def _decode_piece(piece) -> int:
    return sum(len(c["x"]) for c in _DS[0].file_chunks(*piece, serial=len(_DS) > 1))


_DS: list = []


def _map_decode(ds) -> list[int]:
    """Points decoded per chunk, the way the routing reads them (one chunk per worker process)."""
    import concurrent.futures as cf
    import multiprocessing

    from geoimplicit.tiling.route import _pieces

    chunk = route_chunk(ds.point_count)
    workers = route_workers(ds.point_count, chunk)
    _DS[:] = [ds] * (1 + (workers > 1))
    try:
        if workers == 1:
            return [_decode_piece(p) for p in _pieces(ds, chunk)]
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_decode_piece, _pieces(ds, chunk)))
    finally:
        _DS.clear()


# --------------------------------------------------------------------------------------------- driver
def _on_cuda(device: str) -> bool:
    import torch

    return device != "cpu" and torch.cuda.is_available()


def run_all(args, work: Path, results: dict, dump) -> None:
    t_start = time.perf_counter()
    small = make_area(work, args.side_m, args.seed)
    results["small_area"] = small
    dump()
    opts = {"occupancy": {"weights": args.weights, "device": args.device}, "raster": {}}
    methods = args.methods.split(",")
    runs = results.setdefault("runs", {})

    def method_and_options(m):  # "occupancy/none+torch@1": refiner none, torch search, one tile at a time
        m, _, threads = m.partition("@")
        m, _, kernel = m.partition("+")
        base, _, refiner = m.partition("/")
        executor = LocalExecutor(device_threads=int(threads)) if threads else None
        extra = ({"refiner": refiner} if refiner else {}) | ({"search_kernel": kernel} if kernel else {})
        return base, opts[base] | extra, executor, args.stacks

    results["decode_small"] = decode_rates([small["laz"]])
    if any(m.startswith("occupancy") for m in methods) and _on_cuda(args.device):  # warm-up: CUDA context, kernels, allocator
        b = small["bounds"]
        w = timed_run([small["laz"]], work / "warmup.tif", (b[0], b[1], b[0] + 128, b[1] + 128), "occupancy",
                      opts["occupancy"])
        results["warmup_s"] = w["wall_s"]
    for m in methods:
        name = m.replace("/", "_").replace("@", "_t").replace("+", "_")
        runs[f"{m} small"] = timed_run([small["laz"]], work / f"{name}_small.tif", small["bounds"],
                                       *method_and_options(m))
        log.info("%s small: %.2f s, %.0f km²/h", m, runs[f"{m} small"]["wall_s"], runs[f"{m} small"]["km2_per_h"])
        dump()
    if args.copies_side < 2:
        return
    large = tiled_area(small, work, args.copies_side)
    results["large_area"] = {k: v for k, v in large.items() if k != "laz"} | {"files": len(large["laz"])}
    for m in methods:
        need = runs[f"{m} small"]["wall_s"] * args.copies_side ** 2 * 1.1
        left = args.budget_s - (time.perf_counter() - t_start)
        if need > left:
            runs[f"{m} large"] = {"skipped": f"needs about {need:.0f} s, {left:.0f} s of the budget left"}
            continue
        name = m.replace("/", "_").replace("@", "_t").replace("+", "_")
        runs[f"{m} large"] = timed_run(large["laz"], work / f"{name}_large.tif", large["bounds"], *method_and_options(m))
        log.info("%s large: %.2f s, %.0f km²/h", m, runs[f"{m} large"]["wall_s"], runs[f"{m} large"]["km2_per_h"])
        dump()
    if args.budget_s - (time.perf_counter() - t_start) > 30:
        results["decode_large"] = decode_rates(large["laz"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default=None, help="occupancy checkpoint (default: the shipped weights)")
    ap.add_argument("--out", default="bench/out/speed", help="where the JSON and markdown go")
    ap.add_argument("--work", default=None, help="where the LAZ and COGs go (default: a temporary folder)")
    ap.add_argument("--side-m", type=float, default=1000.0, help="side of the small area in metres")
    ap.add_argument("--copies-side", type=int, default=4, help="the large area: this many copies per side")
    ap.add_argument("--methods", default="occupancy,raster",
                    help="comma list; occupancy/REFINER sets the height refiner (auto, none, a path), "
                         "occupancy+KERNEL the surface search's kernel (auto, triton, torch), METHOD@N the tiles in "
                         "flight on the device (default: the method's)")
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--stacks", action="store_true", help="sample the threads' stacks in every run (in the JSON)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip runs that would end after this")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "date": time.strftime("%Y-%m-%d %H:%M"),
               "torch": torch.__version__, "args": vars(args)}

    def dump():
        (out / "speed_bench.json").write_text(json.dumps(results, indent=1, default=str))

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="geoimplicit_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run_all(args, work, results, dump)
    except Exception:  # noqa: BLE001 - the bench reports what it got
        results["error"] = traceback.format_exc()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    dump()
    (out / "speed_bench.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"device: {results['device']}, {results['usable_cores']} of {results['cpu_count']} CPUs usable, "
             f"{results['date']}, torch {results['torch']}",
             "", "| run | km² | wall s | km²/h | stages s | peak PSS GB (bound) | peak GPU GB | search ceiling km²/h "
             "| ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.get("runs", {}).items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |||||||")
            continue
        st = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_s"].items() if "first report" not in k)
        if "tiles (first report)" in r["stages_s"]:  # the routing may go on behind the tiles
            st += f"; first tile at {r['stages_s']['tiles (first report)']:.2f}"
        tm = r.get("model_timings_s")
        if tm:
            st += " (model: " + ", ".join(f"{k} {tm[k]:.2f}" for k in ("select", "frame", "encode", "search")) + ")"
        lines.append(f"| {name} | {r['area_km2']:.3g} | {r['wall_s']:.2f} | {r['km2_per_h']:.0f} | {st} | "
                     f"{r['peak_rss_gb']:.2f} ({max(r.get('peak_rss_bound_gb_by_stage', {0: 0}).values()):.2f}) | "
                     f"{r.get('peak_gpu_allocated_gb', float('nan')):.2f} | "
                     f"{r.get('search_ceiling_km2_per_h', float('nan')):.0f} | "
                     f"{r.get('ratio_to_search_ceiling', float('nan')):.2f} |")
    for key in ("decode_small", "decode_large"):
        d = results.get(key)
        if d:
            lines += ["", f"LAZ decode ({d['files']} files, {d['points']:,} points, {d['cores']} cores): laspy "
                      f"single-threaded {d['laspy_single_thread_points_per_s'] / 1e6:.2f} M/s; ours "
                      f"{d['ours_points_per_s'] / 1e6:.2f} M/s = {d['ours_points_per_s_per_core'] / 1e6:.2f} M/s "
                      f"per core (x{d['speedup_vs_laspy_single']:.1f})"]
    for key in ("small_area", "large_area"):
        if key in results:
            lines += ["", f"{key}: " + json.dumps(results[key], default=str)]
    if "error" in results:
        lines += ["", "error: " + results["error"][-3000:]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
