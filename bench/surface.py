"""Benchmark of neural SDF surfaces (geoimplicit.surface) on held-out generated view sets.

Per seed (seeds 7101, 7102, ... are used nowhere else), a generated city with a LEVIR-NVS view set (depths),
its true DSM, classes and photogrammetric points; then, as concurrent processes on one device, each with a
wall-clock budget, the variants (by default: exact, noiso, refine1, refine3 on the first seed, exact and
refine1 on the second, six processes of 120 s):

  exact      exact train cameras, Iso-Points on
  noiso      exact train cameras, Iso-Points off           (Iso-Points' effect at equal time)
  idr        exact train cameras, IDR's sphere tracing      (renderer choice)
  fixed1     train cameras perturbed by 0.1 deg / 1 m, not refined
  refine1    the same perturbation, cameras refined
  refine3    0.3 deg / 3 m, cameras refined

Measured per variant: held-out PSNR on the test views (rays inside the surface's box, rendered with the true
cameras; for refined runs the true test cameras are moved into the fit's gauge by the similarity that aligns
the refined train cameras onto the true ones), rotation and centre errors of the train cameras before and
after refinement (after that similarity alignment), the DSM read off the SDF against the true DSM (median
absolute error, RMSE, building RMSE, over the box's cells), the Chamfer-L1 distance between the Iso-Points of
the final surface and points on the true surface (the mesh library is not in this branch: the Iso-Points are
the surface sample), steps and seconds to reach a PSNR on the train rays, device time and peak memory. The raster
and occupancy DSMs of the scene's points are scored on the same cells.

Small CPU run (tested):   python bench/surface.py --small -o out/bench_surface
Full run (one H200):       see --help and docs/surface.md; writes OUT/surface.json and OUT/surface.log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.surface")

VARIANTS = {
    "exact": {},
    "noiso": {"iso_points": False},
    "idr": {"renderer": "idr"},
    "fixed1": {"perturb": (0.1, 1.0)},
    "refine1": {"perturb": (0.1, 1.0), "refine_cameras": True},
    "refine3": {"perturb": (0.3, 3.0), "refine_cameras": True},
}

SMALL = dict(size_m=48.0, view_size=64, n_views=8, seeds=[7101], steps=150, budget_s=0.0, parallel=2,
             variants=["exact", "noiso", "refine1"], other_seeds=["exact"], iso_count=512, chamfer_points=4000,
             fit={"encoding": "frequency", "hidden": 32, "feature_size": 16, "rays_per_step": 384,
                  "eikonal_samples": 384, "iso_count": 256, "iso_every": 40, "iso_start": 40, "trace_samples": 24,
                  "trace_steps": 24, "surface_samples": 8, "pose_warmup": 40, "progress_every": 25})
FULL = dict(size_m=128.0, view_size=256, n_views=10, seeds=[7101, 7102], steps=20000, budget_s=120.0, parallel=6,
            variants=["exact", "noiso", "refine1", "refine3"], other_seeds=["exact", "refine1"], iso_count=20000,
            chamfer_points=200000,
            fit={"rays_per_step": 4096, "eikonal_samples": 4096, "iso_count": 8192, "progress_every": 100})


# ------------------------------------------------------------------------------------------------ data
def make_scene(seed: int, out: Path, size_m: float, view_size: int, n_views: int, workers: int) -> Path:
    """A generated city with views, points, truth DSM and classes in ``out/seed_<seed>``."""
    from geoimplicit.synthetic import generate_city, render_view_set, sample_points, scene_bounds, write_points
    from geoimplicit.io.raster import write_geotiff

    d = out / f"seed_{seed}"
    if (d / "views" / "view_split.txt").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    scene = generate_city(seed, bounds=scene_bounds(size_m, crs="EPSG:2154"), resolution=0.5)
    from affine import Affine

    left, _, _, top = scene.bounds
    tr = Affine(scene.resolution, 0, left, 0, -scene.resolution, top)
    write_geotiff(d / "truth_dsm.tif", scene.dsm.astype(np.float32), tr, "EPSG:2154", overwrite=True)
    write_geotiff(d / "classes.tif", scene.classes.astype(np.uint8), tr, "EPSG:2154", nodata=None, overwrite=True)
    write_points(d / "points.laz", [sample_points(scene, seed, density=10.0)], scene.crs)
    render_view_set(scene, d / "views", seed=seed, n_views=n_views, size=view_size, n_track=2, supersample=3,
                    workers=workers)
    return d


# ------------------------------------------------------------------------------------------------ one variant
def run_variant(args) -> dict:
    """Fit one variant and measure it (runs in its own process)."""
    import torch

    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.surface.fit import fit_surface
    from geoimplicit.synthetic.views import perturbed_view_set

    spec = VARIANTS[args.variant]
    scene_dir = Path(args.scene)
    views = scene_dir / "views"
    if "perturb" in spec:
        a, s = spec["perturb"]
        views = perturbed_view_set(views, Path(args.work) / "views", a, s, args.seed)
    cfg = {**json.loads(args.fit), "steps": args.steps, "time_budget_s": args.budget_s, "device": args.device,
           "seed": args.seed}
    cfg.update({k: v for k, v in spec.items() if k != "perturb"})
    curve = []
    t0 = time.perf_counter()

    def on_step(tr):
        curve.append((tr.step, round(time.perf_counter() - t0, 3), round(tr._last_psnr, 3)))

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    res = fit_surface(views, Path(args.work) / "model", cfg, overwrite=True, on_step=on_step)
    out = {"variant": args.variant, "seed": args.seed, "config": cfg, "steps": res.steps, "fit_s": res.seconds,
           "curve": curve[:: max(1, len(curve) // 400)]}
    if torch.cuda.is_available():
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    out.update(measure(Path(args.work) / "model", scene_dir, ViewSet.load(scene_dir / "views"), ViewSet.load(views),
                       args))
    return out


def measure(model_dir: Path, scene_dir: Path, truth: "ViewSet", used: "ViewSet", args) -> dict:
    import torch

    from geoimplicit.geometry.align import transform_camera
    from geoimplicit.io.cameras import read_cameras_dir
    from geoimplicit.surface.model import load_surface

    model = load_surface(model_dir, "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    ids = model.meta["train_ids"]
    true_train = [truth.cameras[i] for i in ids]
    given = [used.cameras[i] for i in ids]
    out = {"pose_before": camera_errors(given, true_train)}
    sim = None
    if (model_dir / "cameras").is_dir():
        refined = read_cameras_dir(model_dir / "cameras")
        out["pose_after"] = camera_errors([refined[i] for i in ids], true_train)
        sim = out["pose_after"].pop("_similarity").inverse()  # truth -> the fit's gauge
    out["pose_before"].pop("_similarity")
    test_cams = [truth.cameras[i] if sim is None else transform_camera(truth.cameras[i], sim) for i in truth.test_ids]
    out["heldout_psnr"] = heldout_psnr(model, test_cams, [truth.read_image(i) for i in truth.test_ids])
    out["dsm"] = dsm_metrics(model, scene_dir, sim)
    out["chamfer"] = chamfer(model, scene_dir, args.iso_count, args.chamfer_points, sim)
    return out


def camera_errors(estimated, truth) -> dict:
    """Rotation (deg) and centre (m) errors, raw (``none``: the gauge ``mean`` keeps the input cameras' mean
    pose) and after the similarity that best aligns each camera's centre and a point 100 m along its axis (the
    centres alone leave the rotation ill-conditioned over a small baseline)."""
    from geoimplicit.geometry.align import align_points, rotation_angle_deg, transform_camera

    def look(c):
        return np.concatenate([c.center, c.center + 100.0 * c.R[2]])

    sim = align_points(np.array([look(c) for c in estimated]).reshape(-1, 3),
                       np.array([look(c) for c in truth]).reshape(-1, 3))
    out = {"_similarity": sim}
    for name, cams in (("none", estimated), ("aligned", [transform_camera(c, sim) for c in estimated])):
        rot = [rotation_angle_deg(e.R, t.R) for e, t in zip(cams, truth)]
        cen = [float(np.linalg.norm(e.center - t.center)) for e, t in zip(cams, truth)]
        out[name] = {"mean_rotation_deg": float(np.mean(rot)), "mean_centre_m": float(np.mean(cen)),
                     "max_rotation_deg": float(np.max(rot)), "max_centre_m": float(np.max(cen))}
    out["mean_rotation_deg"] = out["aligned"]["mean_rotation_deg"]
    out["mean_centre_m"] = out["aligned"]["mean_centre_m"]
    return out


def heldout_psnr(model, cams, images) -> float:
    import torch

    from geoimplicit.geometry.tensors import camera_tensors
    from geoimplicit.surface.box import ray_box

    lo, hi = model.box.tensors("cpu", torch.float64)
    mses = []
    for cam, img in zip(cams, images):
        rgb, _ = model.render_camera(cam)
        o, d = camera_tensors(cam, model.box.origin).rays()
        col = ray_box(o, d, lo, hi)[2].reshape(cam.height, cam.width).numpy()
        mses.append(((rgb - img) ** 2).mean(2)[col].mean())
    return float(-10 * np.log10(np.mean(mses)))


def _truth(scene_dir: Path):
    import rasterio

    with rasterio.open(scene_dir / "truth_dsm.tif") as ds:
        dsm, tr = ds.read(1).astype(np.float64), ds.transform
    with rasterio.open(scene_dir / "classes.tif") as ds:
        classes = ds.read(1)
    return dsm, classes, tr


def box_cells(model, scene_dir: Path):
    """Rows, cols and world xy of the truth DSM's cells inside the model's box (shrunk by 2 m)."""
    dsm, _, tr = _truth(scene_dir)
    left, bottom, right, top = model.box.bounds
    rows, cols = np.mgrid[0:dsm.shape[0], 0:dsm.shape[1]]
    x = tr.c + (cols + 0.5) * tr.a
    y = tr.f + (rows + 0.5) * tr.e
    inside = (x > left + 2) & (x < right - 2) & (y > bottom + 2) & (y < top - 2)
    return rows[inside], cols[inside], np.stack([x[inside], y[inside]], 1)


def _metrics(pred, truth, building) -> dict:
    ok = np.isfinite(pred)
    e = pred[ok] - truth[ok]
    b = building[ok]
    return {"valid": float(ok.mean()), "median_abs": float(np.median(np.abs(e))), "rmse": float(np.sqrt(np.mean(e**2))),
            "mae": float(np.mean(np.abs(e))),
            "building_rmse": float(np.sqrt(np.mean(e[b] ** 2))) if b.any() else float("nan")}


def dsm_metrics(model, scene_dir: Path, sim=None) -> dict:
    from geoimplicit.surface.products import dsm_heights

    dsm, classes, _ = _truth(scene_dir)
    r, c, xy = box_cells(model, scene_dir)
    if sim is not None:  # world cell centres into the fit's gauge (columns stay near-vertical: tiny rotations)
        xy = sim.apply(np.c_[xy, np.zeros(len(xy))])[:, :2]
    h = dsm_heights(model, xy)
    if sim is not None:
        pts = sim.inverse().apply(np.c_[xy, np.nan_to_num(h)])
        h = np.where(np.isfinite(h), pts[:, 2], np.nan)
    return _metrics(h, dsm[r, c], classes[r, c] == 6)


def true_surface_points(scene_dir: Path, bounds, n: int, rng) -> np.ndarray:
    """Points on the true surface: the bilinear height field at random xy, and its walls (vertical samples
    between neighbouring cells more than 0.5 m apart)."""
    dsm, _, tr = _truth(scene_dir)
    left, bottom, right, top = bounds
    xs = rng.uniform(left, right, n)
    ys = rng.uniform(bottom, top, n)
    fc = (xs - tr.c) / tr.a - 0.5
    fr = (ys - tr.f) / tr.e - 0.5
    c0 = np.clip(np.floor(fc).astype(int), 0, dsm.shape[1] - 2)
    r0 = np.clip(np.floor(fr).astype(int), 0, dsm.shape[0] - 2)
    wc, wr = np.clip(fc - c0, 0, 1), np.clip(fr - r0, 0, 1)
    z = (dsm[r0, c0] * (1 - wc) * (1 - wr) + dsm[r0, c0 + 1] * wc * (1 - wr) + dsm[r0 + 1, c0] * (1 - wc) * wr
         + dsm[r0 + 1, c0 + 1] * wc * wr)
    pts = [np.c_[xs, ys, z]]
    for axis in (0, 1):  # walls: between horizontal / vertical neighbours
        a = dsm[:-1, :] if axis == 0 else dsm[:, :-1]
        b = dsm[1:, :] if axis == 0 else dsm[:, 1:]
        rr, cc = np.nonzero(np.abs(a - b) > 0.5)
        x = tr.c + (cc + (0.5 if axis == 0 else 1.0)) * tr.a
        y = tr.f + (rr + (1.0 if axis == 0 else 0.5)) * tr.e
        keep = (x > left) & (x < right) & (y > bottom) & (y < top)
        lo_, hi_ = np.minimum(a, b)[rr, cc][keep], np.maximum(a, b)[rr, cc][keep]
        x, y = x[keep], y[keep]
        k = max(1, int(np.ceil((hi_ - lo_).max() / 0.25))) if len(x) else 1
        t = rng.uniform(0, 1, (len(x), k))
        pts.append(np.c_[np.repeat(x, k), np.repeat(y, k), (lo_[:, None] + t * (hi_ - lo_)[:, None]).ravel()])
    return np.concatenate(pts)


def chamfer(model, scene_dir: Path, iso_count: int, n_truth: int, sim=None) -> dict:
    """Chamfer-L1 (mean of both directions' mean nearest distances) between the final surface's Iso-Points
    and points on the true surface, inside the box shrunk by 2 m."""
    from scipy.spatial import cKDTree

    from geoimplicit.surface.isopoints import IsoPoints

    rng = np.random.default_rng(0)
    iso = IsoPoints(iso_count, model.box, model.device)
    iso.initialise(model.sdf_net)
    pred = iso.points.cpu().numpy().astype(np.float64) + model.box.origin
    if sim is not None:
        pred = sim.inverse().apply(pred)
    left, bottom, right, top = model.box.bounds
    inner = (left + 2, bottom + 2, right - 2, top - 2)
    keep = (pred[:, 0] > inner[0]) & (pred[:, 0] < inner[2]) & (pred[:, 1] > inner[1]) & (pred[:, 1] < inner[3])
    pred = pred[keep]
    truth = true_surface_points(scene_dir, inner, n_truth, rng)
    if len(pred) == 0:
        return {"chamfer_l1": float("nan"), "points": 0}
    d_pt = cKDTree(truth).query(pred)[0]
    d_tp = cKDTree(pred).query(truth)[0]
    return {"chamfer_l1": float(0.5 * (d_pt.mean() + d_tp.mean())), "accuracy": float(d_pt.mean()),
            "completeness": float(d_tp.mean()), "points": int(len(pred))}


# ------------------------------------------------------------------------------------------------ baselines
def baseline_dsms(scene_dir: Path, bounds, device: str) -> dict:
    """Raster and occupancy DSMs of the scene's points over the box, scored on the box's cells."""
    import rasterio

    dsm, classes, tr = _truth(scene_dir)
    out = {}
    left, bottom, right, top = bounds
    for method in ("raster", "occupancy"):
        path = scene_dir / f"dsm_{method}.tif"
        if not path.exists():
            cmd = [sys.executable, "-m", "cli", "dsm", "--points", str(scene_dir / "points.laz"), "--bbox",
                   *(f"{v:.2f}" for v in (left, bottom, right, top)), "--resolution", "0.5", "--method", method,
                   "-o", str(path), "--overwrite"]
            if method == "occupancy":
                cmd += ["--device", device]
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        with rasterio.open(path) as ds:
            pred = ds.read(1, masked=True).filled(np.nan).astype(np.float64)
            ptr = ds.transform
        rows, cols = np.mgrid[0:pred.shape[0], 0:pred.shape[1]]
        x, y = ptr.c + (cols + 0.5) * ptr.a, ptr.f + (rows + 0.5) * ptr.e
        inside = (x > left + 2) & (x < right - 2) & (y > bottom + 2) & (y < top - 2)
        tc = np.floor((x[inside] - tr.c) / tr.a).astype(int)
        trr = np.floor((y[inside] - tr.f) / tr.e).astype(int)
        out[method] = _metrics(pred[inside], dsm[trr, tc], classes[trr, tc] == 6)
    return out


# ------------------------------------------------------------------------------------------------ driver
def steps_to_psnr(curve, target: float, window: int = 20):
    """First (step, seconds) where the moving mean of the train-ray PSNR reaches ``target``."""
    if not curve:
        return None
    p = np.array([c[2] for c in curve])
    mean = np.convolve(p, np.ones(window) / window, mode="valid") if len(p) >= window else p
    hit = np.nonzero(mean >= target)[0]
    if not hit.size:
        return None
    i = int(hit[0]) + (window - 1 if len(p) >= window else 0)
    return {"step": curve[i][0], "seconds": curve[i][1]}


def _best_mean(curve, window: int = 20) -> float:
    p = np.array([c[2] for c in curve])
    return float((np.convolve(p, np.ones(window) / window, mode="valid") if len(p) >= window else p).max())


def summarise(results: list[dict], baselines: dict) -> dict:
    by = {}
    for r in results:
        by.setdefault(r["variant"], []).append(r)

    def agg(key_fn, rows):
        vals = [key_fn(r) for r in rows]
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        return {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals))} if vals else None

    table = {}
    for name, rows in by.items():
        table[name] = {
            "heldout_psnr": agg(lambda r: r["heldout_psnr"], rows),
            "dsm_median_abs": agg(lambda r: r["dsm"]["median_abs"], rows),
            "dsm_rmse": agg(lambda r: r["dsm"]["rmse"], rows),
            "dsm_building_rmse": agg(lambda r: r["dsm"]["building_rmse"], rows),
            "chamfer_l1": agg(lambda r: r["chamfer"]["chamfer_l1"], rows),
            "rot_before_deg": agg(lambda r: r["pose_before"]["mean_rotation_deg"], rows),
            "centre_before_m": agg(lambda r: r["pose_before"]["mean_centre_m"], rows),
            "rot_after_deg": agg(lambda r: r.get("pose_after", {}).get("mean_rotation_deg"), rows),
            "centre_after_m": agg(lambda r: r.get("pose_after", {}).get("mean_centre_m"), rows),
            "rot_after_raw_deg": agg(lambda r: r.get("pose_after", {}).get("none", {}).get("mean_rotation_deg"), rows),
            "centre_after_raw_m": agg(lambda r: r.get("pose_after", {}).get("none", {}).get("mean_centre_m"), rows),
            "steps": agg(lambda r: r["steps"], rows), "fit_s": agg(lambda r: r["fit_s"], rows),
            "peak_gpu_gb": agg(lambda r: r.get("peak_gpu_gb"), rows),
        }
    iso = {}
    for seed in sorted({r["seed"] for r in results}):
        a = next((r for r in results if r["seed"] == seed and r["variant"] == "exact"), None)
        b = next((r for r in results if r["seed"] == seed and r["variant"] == "noiso"), None)
        if a and b and a["curve"] and b["curve"]:
            target = min(_best_mean(a["curve"]), _best_mean(b["curve"])) - 0.5
            iso[seed] = {"target_psnr": target, "with": steps_to_psnr(a["curve"], target),
                         "without": steps_to_psnr(b["curve"], target),
                         "chamfer_with": a["chamfer"]["chamfer_l1"], "chamfer_without": b["chamfer"]["chamfer_l1"]}
    base = {m: {k: agg(lambda r: r[m][k], list(baselines.values())) for k in ("median_abs", "rmse", "building_rmse")}
            for m in ("raster", "occupancy")} if baselines else {}
    wall = max((r["fit_s"] for r in results), default=0.0)
    device = {"concurrent_fits": len(results), "steps_per_s_all_fits": sum(r["steps"] for r in results) / wall
              if wall else None, "note": "fits shared one device: a fit alone runs about concurrent_fits x faster"}
    return {"variants": table, "iso_points": iso, "baselines": base, "device": device}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", type=Path, default=Path(os.environ.get("OUT", "out")) / "bench_surface")
    p.add_argument("--small", action="store_true", help="CPU-sized run (48 m, 64 px views, few steps)")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--size-m", type=float)
    p.add_argument("--view-size", type=int)
    p.add_argument("--n-views", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--budget-s", type=float, help="wall-clock budget of each variant's fit (0: none)")
    p.add_argument("--parallel", type=int, help="variants run at the same time")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="variants of the first seed")
    p.add_argument("--other-seeds", nargs="+", choices=list(VARIANTS), help="variants of the other seeds")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--fit", help=argparse.SUPPRESS)
    p.add_argument("--iso-count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--chamfer-points", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:  # a child process: one variant
        torch_threads()
        result = run_variant(args)
        Path(args.work, "result.json").write_text(json.dumps(result))
        return 0
    preset = dict(SMALL if args.small else FULL)
    for k in ("seeds", "size_m", "view_size", "n_views", "steps", "budget_s", "parallel", "variants", "other_seeds"):
        v = getattr(args, k)
        if v is not None:
            preset[k] = v
    return drive(args, preset)


def torch_threads():
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("BENCH_THREADS", "1"))))


def drive(args, preset) -> int:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(out / "surface.log"), logging.StreamHandler()])
    t0 = time.perf_counter()
    workers = max(1, (os.cpu_count() or 2) - 1)
    scenes = {s: make_scene(s, out, preset["size_m"], preset["view_size"], preset["n_views"], workers)
              for s in preset["seeds"]}
    log.info("scenes ready in %.1f s", time.perf_counter() - t0)
    jobs = []
    for s, d in scenes.items():
        for v in preset["variants"] if s == preset["seeds"][0] else preset["other_seeds"]:
            work = out / "runs" / f"{s}_{v}"
            work.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", v, "--scene", str(d), "--work",
                   str(work), "--seed", str(s), "--fit", json.dumps(preset["fit"]), "--steps", str(preset["steps"]),
                   "--budget-s", str(preset["budget_s"]), "--device", args.device, "--iso-count",
                   str(preset["iso_count"]), "--chamfer-points", str(preset["chamfer_points"])]
            jobs.append((s, v, work, cmd))
    results, running = [], []
    env = dict(os.environ, BENCH_THREADS=str(max(1, (os.cpu_count() or 2) // max(1, preset["parallel"]))))
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < preset["parallel"]:
            s, v, work, cmd = pending.pop(0)
            fh = open(work / "run.log", "w")
            running.append((s, v, work, subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env), fh))
        time.sleep(1.0)
        for item in list(running):
            s, v, work, proc, fh = item
            if proc.poll() is None:
                continue
            fh.close()
            running.remove(item)
            if proc.returncode == 0:
                results.append(json.loads((work / "result.json").read_text()))
                r = results[-1]
                log.info("%s seed %d: %d steps in %.0f s, held-out PSNR %.2f, DSM median %.3f, chamfer %.3f", v, s,
                         r["steps"], r["fit_s"], r["heldout_psnr"], r["dsm"]["median_abs"], r["chamfer"]["chamfer_l1"])
            else:
                log.error("%s seed %d failed (exit %d): see %s", v, s, proc.returncode, work / "run.log")
    baselines = {}
    if not args.no_baselines:
        from geoimplicit.surface.model import load_surface

        for s, d in scenes.items():
            model_dir = out / "runs" / f"{s}_exact" / "model"
            if model_dir.exists():
                box = load_surface(model_dir).box
                baselines[s] = baseline_dsms(d, box.bounds, args.device)
                log.info("baselines seed %d: %s", s, json.dumps(baselines[s]))
    summary = summarise(results, baselines)
    report = {"preset": preset, "seconds": time.perf_counter() - t0, "summary": summary, "runs": results,
              "baselines": baselines}
    (out / "surface.json").write_text(json.dumps(report, indent=1))
    log.info("summary: %s", json.dumps(summary, indent=1))
    log.info("total %.1f s", time.perf_counter() - t0)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
