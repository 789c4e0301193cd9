"""Mesh benchmark: quality against the true surface, speed per tile and per km2, marching cubes torch vs scikit-image.

    python -m bench.mesh --device cuda --out OUT [--size 128] [--speed-size 512] [--mc-size 256]
    python -m bench.mesh --device cpu --out OUT --size 48 --seeds 2000 --speed-size 64 --mc-size 48   # small

Quality, on held-out generated cities (the seeds bench/occupancy.py holds out; never trained on or tuned on),
the same input for all three (the generator's photogrammetric cloud, the scene's ortho): the occupancy mesh
(``geoimplicit.mesh``, 0.5 m lattice), the 2.5D heightfield mesh of the raster DSM (max, outliers, hole fill)
and of the occupancy DSM, each against the generator's true surface (walls included): Chamfer-L1, accuracy,
completeness, normal consistency, F-score at 0.1 / 0.25 / 0.5 m, in metres. The occupancy mesh re-rasterized
is also scored as a DSM against the truth DSM. Speed: a generated area of ``--speed-size`` m with 128 m tiles:
seconds per tile and per km2 (in memory, and through the command's path: LAZ in, PLY out), triangles per km2,
peak memory. Marching cubes: the same dense grid through
``geoimplicit.mesh.marching.marching_cubes`` (CPU, and CUDA when present) and ``skimage.measure.marching_cubes``
(when installed): time, vertex and triangle counts, boundary edges. Results: OUT/mesh_bench.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.mesh")
HELD_OUT = [("EPSG:2154", 2000), ("EPSG:2154", 2001), ("EPSG:2154", 2002), ("EPSG:32632", 2003),
            ("EPSG:32632", 2004), ("EPSG:2994", 2005)]
SCORES = ("chamfer_l1", "accuracy", "completeness", "normal_consistency", "fscore_0.1", "fscore_0.25", "fscore_0.5")


def _scene(seed: int, crs: str, size_m: float):
    from geoimplicit.dsm.occupancy.train import VAL_GENERATOR
    from geoimplicit.io.crs import linear_units, parse_crs
    from geoimplicit.synthetic import generate_city, sample_points, scene_bounds

    mpu = linear_units(parse_crs(crs))[1]
    scene = generate_city(seed, bounds=scene_bounds(size_m / mpu, crs=crs), crs=crs, resolution=0.5 / mpu)
    points = sample_points(scene, seed, **VAL_GENERATOR)
    return scene, {k: points[k] for k in ("x", "y", "z")}, mpu


def _in_metres(scores: dict, mpu: float) -> dict:
    keep = {k: v for k, v in scores.items() if k in SCORES}
    for k in ("chamfer_l1", "accuracy", "completeness"):
        keep[k] = keep[k] * mpu
    return keep


def quality(predictor, seeds, size_m: float, samples: int) -> dict:
    """Every scene's scores for the three surfaces; the means at the end."""
    from geoimplicit.dsm.occupancy.infer import predict_dsm
    from geoimplicit.dsm.occupancy.train import raster_baseline
    from geoimplicit.evaluate.metrics import residual_stats
    from geoimplicit.mesh.heightfield import dsm_to_mesh, mesh_to_dsm
    from geoimplicit.mesh.metrics import compare_meshes
    from geoimplicit.mesh.occupancy import mesh_from_points
    from geoimplicit.synthetic.mesh import truth_mesh

    rows = {}
    for crs, seed in seeds:
        scene, pts, mpu = _scene(seed, crs, size_m)
        truth = truth_mesh(scene)
        res, b = scene.resolution, scene.bounds
        images = [(scene.ortho, scene.transform)]
        t0 = time.perf_counter()
        mesh = mesh_from_points(predictor, pts, b, res, metres_per_unit=mpu, images=images, true_ortho=True,
                                crs_wkt=scene.crs.to_wkt())
        t_mesh = time.perf_counter() - t0
        occ, occ_valid = predict_dsm(predictor, pts, b, res, metres_per_unit=mpu, images=images, true_ortho=True)
        raster, raster_valid = raster_baseline(pts, b, res, scene.crs)
        inner = (b[0] + 2 / mpu, b[1] + 2 / mpu, b[2] - 2 / mpu, b[3] - 2 / mpu)
        surfaces = {"mesh": mesh, "raster_heightfield": dsm_to_mesh(raster, scene.transform, raster_valid),
                    "occupancy_heightfield": dsm_to_mesh(occ, scene.transform, occ_valid)}
        row = {k: _in_metres(compare_meshes(m, truth, samples=samples, bounds=inner, seed=seed), mpu)
               for k, m in surfaces.items()}
        mesh_dsm, mesh_valid = mesh_to_dsm(mesh, b, res)
        both = mesh_valid & occ_valid
        for name, dsm in (("mesh_dsm", mesh_dsm), ("occupancy_dsm", occ)):
            s = residual_stats((dsm.astype(np.float64) - scene.dsm) * mpu, both)
            row[name] = {k: s[k] for k in ("mae", "rmse", "median_abs_error", "nmad") if k in s}
        row["mesh_seconds"] = t_mesh
        row["mesh_triangles"] = mesh.n_faces
        row["mesh_boundary_edges"] = int(len(mesh.boundary_edges()))
        rows[f"{crs} seed {seed}"] = row
        log.info("%s seed %d: mesh %.3f / raster hf %.3f / occupancy hf %.3f (Chamfer-L1, m)", crs, seed,
                 row["mesh"]["chamfer_l1"], row["raster_heightfield"]["chamfer_l1"],
                 row["occupancy_heightfield"]["chamfer_l1"])
    mean = {k: {s: float(np.mean([r[k][s] for r in rows.values()])) for s in SCORES}
            for k in ("mesh", "raster_heightfield", "occupancy_heightfield")}
    mean["mesh_vs_raster_chamfer"] = mean["mesh"]["chamfer_l1"] / mean["raster_heightfield"]["chamfer_l1"]
    return {"scenes": rows, "mean": mean}


def speed(predictor, size_m: float, device: str, out: Path) -> dict:
    """A generated area of size_m x size_m metres at 0.5 m, 128 m tiles: through the tile extraction in memory,
    and through ``geoimplicit mesh``'s path (LAZ and ortho GeoTIFF in, PLY out, the job layer)."""
    import torch

    from geoimplicit.mesh.occupancy import mesh_from_points
    from geoimplicit.mesh.run import run_mesh

    scene, pts, _ = _scene(7, "EPSG:2154", size_m)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    times = []

    def progress(done, total, stage="", message=""):
        times.append(time.perf_counter())

    mesh = mesh_from_points(predictor, pts, scene.bounds, 0.5, images=[(scene.ortho, scene.transform)],
                            true_ortho=True, tile_size=128, overlap=16, progress=progress)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    km2 = (size_m / 1000.0) ** 2
    tiles = np.diff([t0] + times)
    res = {"size_m": size_m, "tiles": len(tiles), "seconds": total, "seconds_per_tile": float(np.mean(tiles)),
           "seconds_per_km2": total / km2, "km2_per_hour": km2 / total * 3600, "triangles": mesh.n_faces,
           "triangles_per_km2": mesh.n_faces / km2,
           "stitch_seconds": float(total - (times[-1] - t0)) if times else None}
    if device.startswith("cuda"):
        res["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    laz, ortho = _write_inputs(scene, out / "speed_city")
    t0 = time.perf_counter()
    run_mesh([laz], out / "speed_mesh.ply", resolution=0.5, bbox=scene.bounds, ortho=[ortho],
             method_options={"device": device.split(":")[0], "true_ortho": True}, overwrite=True)
    run_s = time.perf_counter() - t0
    res["command_path"] = {"seconds": run_s, "seconds_per_km2": run_s / km2, "km2_per_hour": km2 / run_s * 3600}
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return res


def _write_inputs(scene, folder: Path):
    """The scene's cloud as LAZ and its ortho as a GeoTIFF (no geopandas: the GPU machine has none)."""
    from geoimplicit.dsm.occupancy.train import VAL_GENERATOR
    from geoimplicit.io.raster import write_geotiff
    from geoimplicit.synthetic.points import iter_point_chunks, write_points

    folder.mkdir(parents=True, exist_ok=True)
    laz, ortho = folder / "points.laz", folder / "ortho.tif"
    if not laz.exists():
        left, bottom, _, _ = scene.bounds
        chunks = iter_point_chunks(scene, 7, **VAL_GENERATOR)
        write_points(laz, chunks, scene.crs, bounds_xyz=(left, bottom, float(scene.dsm.min()) - 40.0))
        write_geotiff(ortho, scene.ortho, scene.transform, scene.crs, nodata=None, overwrite=True)
    return laz, ortho


def marching(size: int, devices) -> dict:
    """The same dense grid (a few blobs and a wavy ground) through each marching cubes."""
    import torch

    from geoimplicit.mesh.core import Mesh
    from geoimplicit.mesh.marching import marching_cubes

    g = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, size)] * 3, indexing="ij"), -1)
    field = 0.3 + 0.05 * torch.sin(12 * g[..., 0]) * torch.cos(9 * g[..., 1]) - g[..., 2]
    for cx, cy, cz, r in ((0.3, 0.3, 0.5, 0.15), (0.7, 0.6, 0.6, 0.2), (0.5, 0.8, 0.35, 0.1)):
        field = torch.maximum(field, r - ((g - torch.tensor([cx, cy, cz])) ** 2).sum(-1).sqrt())
    out = {"grid": size}

    def describe(verts, faces, seconds):
        m = Mesh(verts, faces)
        return {"seconds": seconds, "vertices": m.n_vertices, "triangles": m.n_faces,
                "boundary_edges": int(len(m.boundary_edges())), "area": m.area()}

    for dev in devices:
        f = field.to(dev)
        marching_cubes(f, 0.0)  # warm-up
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        verts, faces = marching_cubes(f, 0.0)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        out[f"torch_{dev}"] = describe(verts, faces, time.perf_counter() - t0)
    try:
        from skimage.measure import marching_cubes as sk_mc
    except ImportError:
        out["skimage"] = "not installed"
        return out
    arr = field.numpy()
    t0 = time.perf_counter()
    verts, faces, _, _ = sk_mc(arr, 0.0)
    out["skimage"] = describe(verts.astype(np.float64), faces.astype(np.int64), time.perf_counter() - t0)
    return out


def markdown(results: dict) -> str:
    lines = ["# Mesh benchmark", ""]
    q = results.get("quality")
    if q:
        lines += ["| surface | Chamfer-L1 (m) | accuracy | completeness | normal consistency | F@0.25 m |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for k in ("mesh", "raster_heightfield", "occupancy_heightfield"):
            m = q["mean"][k]
            lines.append(f"| {k} | {m['chamfer_l1']:.3f} | {m['accuracy']:.3f} | {m['completeness']:.3f} | "
                         f"{m['normal_consistency']:.3f} | {m['fscore_0.25']:.3f} |")
        lines += ["", f"mesh / raster heightfield Chamfer: {q['mean']['mesh_vs_raster_chamfer']:.2f}", ""]
    for key in ("speed", "marching_cubes"):
        if key in results:
            lines += [f"## {key}", "```", json.dumps(results[key], indent=1), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    import torch

    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--weights", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=float, default=128.0, help="side of each held-out scene, metres")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="held-out seeds (default: all six)")
    p.add_argument("--samples", type=int, default=200000, help="surface samples per direction")
    p.add_argument("--speed-size", type=float, default=512.0, help="side of the speed area, metres (0: skip)")
    p.add_argument("--mc-size", type=int, default=256, help="dense grid side for marching cubes (0: skip)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [s for s in HELD_OUT if args.seeds is None or s[1] in args.seeds]
    predictor = OccupancyPredictor(args.weights, args.device)
    results = {"device": str(predictor.device), "torch": torch.__version__}
    if seeds:
        results["quality"] = quality(predictor, seeds, args.size, args.samples)
    if args.speed_size:
        results["speed"] = speed(predictor, args.speed_size, str(predictor.device), out)
    if args.mc_size:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        results["marching_cubes"] = marching(args.mc_size, devices)
    (out / "mesh_bench.json").write_text(json.dumps(results, indent=1))
    (out / "mesh_bench.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
