"""Occupancy-field DSM benchmark: ablation training, quality on held-out scenes vs the raster baseline, speed.

    python -m bench.occupancy --device cuda --weights geoimplicit/weights/occupancy_default.pt --out OUT \
        [--ablation-seconds 35] [--speed-size 1000] [--data .traindata]

Quality: held-out generator seeds (EPSG:2154, EPSG:32632, feet EPSG:2994) and IGN Montpellier tile
77055_627760 (never trained on) with a degraded copy of its LiDAR as input and IGN's own DSM as truth; the
raster baseline (geoimplicit.dsm.rasterize: max, outliers, hole fill) on the same input and grid.
Speed: a generated area of ``--speed-size`` x ``--speed-size`` metres at 0.5 m, LAZ in, COG out, per stage.
Everything goes to OUT/occupancy_bench.json and OUT/occupancy_bench.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
import traceback
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.occupancy")
HELD_OUT = [("EPSG:2154", 2000), ("EPSG:2154", 2001), ("EPSG:2154", 2002), ("EPSG:32632", 2003),
            ("EPSG:32632", 2004), ("EPSG:2994", 2005)]
KEYS = ("mae", "rmse", "median_abs_error", "nmad")


def truth_suffix(truth: str) -> str:
    """Row-name suffix of the generated scenes evaluated against another truth than their surface."""
    return "" if truth == "surface" else f" [{truth} truth]"


def held_out_scenes(size_m=128.0, truths=("surface",)):
    """Held-out generated scenes, once per truth (``lidar_tin``: the TIN DSM of a dense simulated survey, the
    kind of DSM IGN makes; rows named with :func:`truth_suffix`)."""
    from geoimplicit.dsm.occupancy.data import synthetic_scene

    return [(f"{crs} seed {seed}" + truth_suffix(truth), synthetic_scene(seed, size_m, crs, n_clouds=0, truth=truth),
             seed) for truth in truths for crs, seed in HELD_OUT]


def ign_scene(data: Path):
    """IGN Montpellier 77055_627760: truth = IGN's 0.5 m DSM; input = its LiDAR (+ neighbours for context)
    thinned to 30 %, 0.15 m noise, 5 % holes, 0.5 % outliers; orthos RGB and IRC; buildings from class 6."""
    import laspy
    import pyproj
    import rasterio

    from geoimplicit.dsm.occupancy.data import TrainScene, degrade

    ign = data / "eval" / "ign_montpellier"
    with rasterio.open(ign / "DSM_test_data_77055_627760_LA93_IGN69_50CM.tif") as ds:
        truth = ds.read(1).astype(np.float64)
        if ds.nodata is not None:
            truth[truth == ds.nodata] = np.nan
        transform = ds.transform
    xs, ys, zs, cs = [], [], [], []
    for f in sorted(ign.glob("*.laz")):
        las = laspy.read(str(f))
        xs.append(np.asarray(las.x)); ys.append(np.asarray(las.y)); zs.append(np.asarray(las.z))
        cs.append(np.asarray(las.classification))
    x, y, z, c = (np.concatenate(a) for a in (xs, ys, zs, cs))
    keep = ~np.isin(c, [7, 18])
    x, y, z, c = x[keep], y[keep], z[keep], c[keep]
    crs = pyproj.CRS.from_epsg(2154)
    scene = TrainScene("ign_77055_627760", truth, transform, 1.0, [], None, crs=crs)
    # building cells: the highest point of the cell is class 6
    inv = ~transform
    col = np.floor(inv.a * x + inv.c).astype(int)
    row = np.floor(inv.e * y + inv.f).astype(int)
    H, W = truth.shape
    ok = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    flat = row[ok] * W + col[ok]
    order = np.lexsort((z[ok], flat))
    last = np.r_[flat[order][1:] != flat[order][:-1], True]
    bl = np.zeros(H * W, bool)
    bl[flat[order][last]] = c[ok][order][last] == 6
    scene.buildings = bl.reshape(H, W)
    rng = np.random.default_rng(31)
    b = scene.bounds
    ctx = (b[0] - 16, b[1] - 16, b[2] + 16, b[3] + 16)
    m = (x >= ctx[0]) & (x < ctx[2]) & (y >= ctx[1]) & (y < ctx[3])
    px, py, pz = degrade(x[m], y[m], z[m], rng, keep_fraction=0.3, noise=0.15, hole_fraction=0.05,
                         outlier_fraction=0.005, bounds=ctx)
    images = []
    for name in ("test_data_rgb_epsg2154.tif", "test_data_irc_epsg2154.tif"):
        with rasterio.open(data / "eval" / "derived" / name) as ds:
            images.append((ds.read()[:3], ds.transform))
    return scene, {"x": px, "y": py, "z": pz}, images


def quality(predictor, scenes, ign, n_images) -> dict:
    """Metrics per test scene. The generated scenes' orthos are true orthos and are said to be (``true_ortho``);
    IGN's RGB and IRC orthos are ordinary orthos (roofs lean off their footprints) and are said not to be."""
    from geoimplicit.dsm.occupancy.train import evaluate_scene, validation_input

    rows = {}
    for name, scene, seed in scenes:
        imgs = scene.images[:n_images]
        rows[name] = evaluate_scene(predictor, scene, seed, images=imgs, true_ortho=True,
                                    points=validation_input(scene, seed))
    if ign is not None:
        scene, pts, images = ign
        rows["IGN Montpellier (real, unseen)"] = evaluate_scene(predictor, scene, 0, images=images[:n_images],
                                                                true_ortho=False, points=pts)
    return rows


def summarise(rows: dict, suffix: str = "") -> dict:
    """Means over the generated scenes whose names end with ``suffix`` (:func:`truth_suffix`)."""
    if suffix:
        synth = [r for k, r in rows.items() if k.endswith(suffix)]
    else:  # the surface rows: neither IGN nor another truth
        synth = [r for k, r in rows.items() if not k.startswith("IGN") and not k.endswith(" truth]")]
    out = {}
    for pre in ("occ_", "raster_", "occ_bldg_", "raster_bldg_"):
        for k in KEYS:
            vals = [r[pre + k] for r in synth if pre + k in r and np.isfinite(r[pre + k])]
            if vals:
                out[pre + k] = float(np.mean(vals))
    return out


def ablation(args, out: Path, results: dict, device: str):
    from geoimplicit.dsm.occupancy.config import load_config, packaged_config
    from geoimplicit.dsm.occupancy.data import build_scenes, real_scene
    from geoimplicit.dsm.occupancy.train import train

    variants = [("points-only", {"variant": "points"}), ("mono", {"variant": "mono"}), ("stereo", {"variant": "stereo"}),
                ("stereo, no raster prior", {"variant": "stereo", "use_prior": False})]
    base = load_config(args.ablation_config or packaged_config("default.yaml"))
    scenes = build_scenes(base, base.data.synthetic_train_seeds, workers=base.data.workers)
    val = build_scenes(base, [1000, 1002], workers=2)
    real = [real_scene(p, base.data.truth) for p in base.data.real]
    models = {}
    for name, model_over in variants:
        cfg = copy.deepcopy(base)
        cfg.model.image_dropout = 0.0
        cfg.train.time_limit_s = args.ablation_seconds
        cfg.train.val_every = 0
        cfg.train.checkpoint_every = 0
        for k, v in model_over.items():
            setattr(cfg.model, k, v)
        t0 = time.perf_counter()
        s = train(cfg, out / "ablation" / name.replace(" ", "_").replace(",", ""), device=device,
                  scenes=scenes, val_scenes=val, real_scenes=real)
        log.info("ablation %s: %d steps in %.0fs, loss %.4f", name, s["steps"], time.perf_counter() - t0, s["final_loss"])
        results.setdefault("ablation_train", {})[name] = {k: s[k] for k in ("steps", "train_seconds", "final_loss", "patches")}
        models[name] = s["model"]
    return models


def speed(args, out: Path, weights, device: str) -> dict:
    import torch

    from geoimplicit.synthetic.city import generate_city, scene_bounds
    from geoimplicit.synthetic.points import iter_point_chunks, write_points

    res = {}
    t0 = time.perf_counter()
    size = args.speed_size
    bounds = scene_bounds(float(size), crs="EPSG:2154")
    city = generate_city(5000, bounds=bounds, resolution=0.5, crs="EPSG:2154")
    res["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    laz = out / "speed_area.laz"
    _, n = write_points(laz, iter_point_chunks(city, 1, density=10.0), city.crs, overwrite=True)
    res["write_laz_s"] = time.perf_counter() - t0
    res["points"] = int(n)
    res["area_km2"] = (bounds[2] - bounds[0]) * (bounds[3] - bounds[1]) / 1e6
    truth = city.dsm
    del city
    import rasterio

    def median_abs_error(path):
        with rasterio.open(path) as ds:
            pred = ds.read(1)
            valid = pred != ds.nodata
        return float(np.median(np.abs((pred.astype(np.float64) - truth)[valid])))

    from bench.speed import timed_run

    options = {"weights": weights, "device": device}
    for rep in range(2):  # the first run warms up CUDA kernels and the allocator
        r = timed_run([str(laz)], out / "speed_dsm.tif", bounds, "occupancy", options)
    tm = r["model_timings_s"]
    res["end_to_end_s"] = r["wall_s"]
    res["stages_s"] = r["stages_s"]
    res["model_timings"] = tm
    res["km2_per_h_end_to_end"] = res["area_km2"] / r["wall_s"] * 3600
    res["km2_per_h_search"] = res["area_km2"] / tm["search"] * 3600
    res["km2_per_h_encode_search"] = res["area_km2"] / (tm["search"] + tm["encode"]) * 3600
    res["search_queries_per_s"] = tm["queries"] / tm["search"]
    res["speed_area_median_abs_error"] = median_abs_error(out / "speed_dsm.tif")
    # the raster baseline through the same tiled run, same LAZ and grid
    rb = timed_run([str(laz)], out / "speed_raster.tif", bounds, "raster", {})
    res["raster_end_to_end_s"] = rb["wall_s"]
    res["raster_stages_s"] = rb["stages_s"]
    res["raster_area_median_abs_error"] = median_abs_error(out / "speed_raster.tif")
    # decoder alone: queries/s on a 512x512 plane, 4M queries per batch, bf16
    from geoimplicit.dsm.occupancy.checkpoint import load_checkpoint, model_from_checkpoint

    model, cfg = model_from_checkpoint(load_checkpoint(weights))
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev)
    C = cfg.model.features
    enc = {"features": torch.randn(1, C, 512, 512, device=dev), "prior": torch.zeros(1, 1, 512, 512, device=dev)}
    Q = 4_000_000 if dev.type == "cuda" else 200_000
    q = torch.rand(1, Q, 3, device=dev) * 200 - 100
    q[..., 2] = torch.rand(1, Q, device=dev)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for _ in range(3):
            model.decode(enc, q)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = 10
        for _ in range(n):
            model.decode(enc, q)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        res["decoder_full_queries_per_s"] = Q * n / (time.perf_counter() - t0)
        # the column-factored decode used by the search (features projected once per column, K heights each)
        M, K = Q // 16, 16
        c, prior = model.sample(enc, q[:, :M, :2])
        ctx = [t[0][:, None, :] for t in model.decoder.column_context(c)]
        z = torch.rand(M, K, device=dev)
        pr = prior[0][:, None].float()
        for _ in range(3):
            model.decoder.decode(ctx, z, pr)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            model.decoder.decode(ctx, z, pr)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        res["decoder_column_queries_per_s"] = M * K * n / (time.perf_counter() - t0)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", default=None, help="default model to evaluate (default: the shipped weights)")
    ap.add_argument("--out", default="bench/out/occupancy")
    ap.add_argument("--data", default=".traindata", help="folder with eval/ign_montpellier and eval/derived")
    ap.add_argument("--ablation-seconds", type=float, default=0.0, help="train each ablation variant this long (0: skip)")
    ap.add_argument("--speed-size", type=float, default=1000.0, help="side of the speed area in metres (0: skip)")
    ap.add_argument("--ablation-config", default=None, help="config the ablation variants start from (default: default.yaml)")
    ap.add_argument("--scene-size", type=float, default=128.0)
    ap.add_argument("--truths", default="surface", help="truths of the generated scenes: surface,lidar_tin,lidar_tin_trees")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=WEIGHTS",
                    help="another model to evaluate in the same run (e.g. the previous default)")
    ap.add_argument("--refiner", action="append", default=[], metavar="auto|none|PATH",
                    help="height refiner(s) each model is evaluated with (repeatable; default: auto)")
    ap.add_argument("--no-quality", action="store_true",
                    help="skip the quality evaluation (e.g. train the ablation variants on the GPU, then evaluate "
                         "their OUT/ablation/*/model.pt with --compare in another run)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "args": vars(args)}

    def dump():
        (out / "occupancy_bench.json").write_text(json.dumps(results, indent=1, default=str))

    models = {"default (stereo + image dropout + real data)": args.weights}
    for item in args.compare:
        name, _, path = item.partition("=")
        models[name] = path
    if args.ablation_seconds > 0:
        try:
            models.update(ablation(args, out, results, args.device))
        except Exception:  # noqa: BLE001
            results["ablation_error"] = traceback.format_exc()
        dump()
    if not args.no_quality:
        try:
            scenes = held_out_scenes(args.scene_size, tuple(args.truths.split(",")))
            try:
                ign = ign_scene(Path(args.data))
            except Exception:  # noqa: BLE001
                results["ign_error"] = traceback.format_exc()
                ign = None
            from geoimplicit.dsm.occupancy.infer import resolve_refiner

            modes = args.refiner or ["auto"]
            for (name, w), mode in ((m, r) for m in models.items() for r in modes):
                p = OccupancyPredictor(w, args.device)
                p.refiner = resolve_refiner(mode, w)
                p.refiner = None if p.refiner is None else p.refiner.to(p.device)
                name = name if len(modes) == 1 else f"{name} [refiner {mode}]"
                t0 = time.perf_counter()
                rows = quality(p, scenes, ign, p.n_images)
                results.setdefault("quality", {})[name] = {
                    "scenes": rows, "seconds": time.perf_counter() - t0,
                    "means": {truth: summarise(rows, truth_suffix(truth)) for truth in args.truths.split(",")}}
                dump()
        except Exception:  # noqa: BLE001
            results["quality_error"] = traceback.format_exc()
    dump()
    if args.speed_size > 0:
        try:
            results["speed"] = speed(args, out, args.weights, args.device)
        except Exception:  # noqa: BLE001
            results["speed_error"] = traceback.format_exc()
    dump()
    (out / "occupancy_bench.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"device: {results['device']}, date {results['date']}, torch {results['torch']}", ""]
    q = results.get("quality", {})
    if q:
        lines += ["| model | scene | occ MAE | occ RMSE | occ medAE | occ NMAD | raster MAE | raster RMSE | raster medAE | raster NMAD | medAE ratio | bldg occ medAE | bldg raster medAE |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for model, d in q.items():
            rows = dict(d["scenes"])
            for truth, mean in d["means"].items():
                rows["mean of generated" + truth_suffix(truth)] = mean
            for scene, r in rows.items():
                def g(k):
                    v = r.get(k)
                    return f"{v:.3f}" if isinstance(v, float) and np.isfinite(v) else "-"
                ratio = (r.get("occ_median_abs_error", np.nan) / r.get("raster_median_abs_error", np.nan)
                         if r.get("raster_median_abs_error") else np.nan)
                lines.append(f"| {model} | {scene} | " + " | ".join(g(f"occ_{k}") for k in KEYS) + " | "
                             + " | ".join(g(f"raster_{k}") for k in KEYS) + f" | {ratio:.2f} | "
                             + g("occ_bldg_median_abs_error") + " | " + g("raster_bldg_median_abs_error") + " |")
    s = results.get("speed")
    if s:
        lines += ["", "speed: " + json.dumps(s, default=str)]
    for k in ("ablation_error", "ign_error", "quality_error", "speed_error"):
        if k in results:
            lines += ["", f"{k}: {results[k][-2000:]}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
