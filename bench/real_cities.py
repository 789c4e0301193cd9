"""Occupancy DSM vs the raster baseline and gdal_grid invdistnn on real cities, points only (issue 17).

    python -m bench.real_cities --out OUT [--weights NAME=PATH ...] [--readout SPEC ...]
        [--cities amsterdam,montpellier,ign_crop1] [--device cpu]

Per city: the dense real LiDAR (noise classes 7/18 dropped) is the truth: its cell maximum at 0.5 m. The input
is a photogrammetric-like copy of it (:func:`geoimplicit.synthetic.points.photogrammetric_points`: top surface
only, ~4.5 pts/m2, noise and smear growing at height edges, holes in shadows and along facades, outliers;
seeded per crop, so every run sees the same input). Methods on the same input and grid: the raster baseline
(``geoimplicit dsm --method raster``: max, outliers, fill), ``gdal_grid invdistnn:power=2:radius=3:max_points=12``
(skipped with a note where gdal_grid is not installed), and each occupancy weight with each read-out
(``--readout MODE[/SUBCELLS[/REDUCE]]``, e.g. ``surface``, ``expected``, ``surface/3/mean``; extract.py).

Roles: ``amsterdam`` (AHN, two 52 m tiles) is VALIDATION: choose settings there. ``montpellier`` (IGN LiDAR HD,
six tiles, 150 m x 100 m) and ``ign_crop1`` (IGN ``crop_1.laz``, 50 m) are TEST: look once, after choosing.
None of them is in the training data (bench/traindata.sh).

Metrics on the cells valid in the truth and in every method (pooled over a city's crops): median absolute
error, RMSE, building RMSE (cells whose top dense point is class 6; without class 6: :func:`fallback_buildings`), ground RMSE (the other cells), edge RMSE
(cells within 1 m of a truth step of more than 2 m), each also as a ratio to the raster baseline's.
Writes OUT/real_cities.json and OUT/real_cities.md (atomic).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.real_cities")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOIMPLICIT_SHARED_DATA", REPO.parent / "shared" / "data"))
RES_M = 0.5
DENSITY_M2 = 4.5
GDAL_ALGO = "invdistnn:power=2:radius=3:max_points=12:nodata=-9999"
# city -> (role, CRS, crops: (name, files relative to SHARED))
CITIES = {
    "amsterdam": ("validation", "EPSG:28992", [("ahn_2386_9702", ["ahn_amsterdam/ahn_2386_9702.laz"]),
                                               ("ahn_2397_9705", ["ahn_amsterdam/ahn_2397_9705.laz"])]),
    "montpellier": ("test", "EPSG:2154", [("ign_6_tiles", [f"ign_montpellier/test_data_{t}_LA93_IGN69.laz" for t in (
        "77050_627755", "77050_627760", "77055_627755", "77055_627760", "77060_627755", "77060_627760")])]),
    "ign_crop1": ("test", "EPSG:2154", [("crop_1", ["ign_lidarhd_extra/crop_1.laz"])]),
}
KEYS = ("median_abs_error", "rmse", "bldg_rmse", "ground_rmse", "edge_rmse")


# ------------------------------------------------------------------------------------------ inputs
def read_dense(files: list[Path]) -> dict:
    """x, y, z (float64) and classification of the files together, noise classes 7 and 18 dropped."""
    import laspy

    parts = []
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"{f}: real city file not found; set GEOIMPLICIT_SHARED_DATA to the shared "
                                    "data folder (../shared/data/README.md)")
        las = laspy.read(str(f))
        c = np.asarray(las.classification)
        k = ~np.isin(c, [7, 18])
        parts.append({"x": np.asarray(las.x, np.float64)[k], "y": np.asarray(las.y, np.float64)[k],
                      "z": np.asarray(las.z, np.float64)[k], "classification": c[k]})
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def crop_grid(pts: dict, res: float = RES_M) -> tuple:
    """Bounds on multiples of ``res`` inside the cloud's bounding box (no half-empty border cells)."""
    left, bottom = np.ceil(pts["x"].min() / res) * res, np.ceil(pts["y"].min() / res) * res
    right, top = np.floor(pts["x"].max() / res) * res, np.floor(pts["y"].max() / res) * res
    return float(left), float(bottom), float(right), float(top)


def truth_grid(pts: dict, bounds, res: float = RES_M) -> tuple[np.ndarray, np.ndarray]:
    """Cell max of the dense cloud (NaN where empty) and the building mask (the top point is class 6)."""
    left, bottom, right, top = bounds
    cols, rows = int(round((right - left) / res)), int(round((top - bottom) / res))
    col = np.floor((pts["x"] - left) / res).astype(np.int64)
    row = np.floor((top - pts["y"]) / res).astype(np.int64)
    ok = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    flat, z, c = row[ok] * cols + col[ok], pts["z"][ok], pts["classification"][ok]
    order = np.lexsort((z, flat))
    last = np.r_[flat[order][1:] != flat[order][:-1], True]
    idx = order[last]
    truth = np.full(rows * cols, np.nan)
    truth[flat[idx]] = z[idx]
    top_cls = np.zeros(rows * cols, np.int64)
    top_cls[flat[idx]] = c[idx]
    truth, top_cls = truth.reshape(rows, cols), top_cls.reshape(rows, cols)
    if (c == 6).any():
        return truth, top_cls == 6
    return truth, fallback_buildings(truth, top_cls, res)


def fallback_buildings(truth, top_cls, res: float = RES_M, above_m: float = 2.5, window_m: float = 30.0):
    """Building cells of a cloud with no class 6: more than ``above_m`` above the local ground (the lowest truth
    within ``window_m``) and whose top point is not ground, vegetation or water (classes 2-5, 9)."""
    from scipy import ndimage

    t = np.where(np.isfinite(truth), truth, np.nanmax(truth))
    ground = ndimage.minimum_filter(t, size=max(3, int(round(window_m / res))) | 1)
    return (t - ground > above_m) & ~np.isin(top_cls, [2, 3, 4, 5, 9]) & np.isfinite(truth)


def edge_mask(truth: np.ndarray, res: float = RES_M, step_m: float = 2.0, within_m: float = 1.0) -> np.ndarray:
    """Cells within ``within_m`` of a truth height step of more than ``step_m`` (walls)."""
    from scipy import ndimage

    t = np.where(np.isfinite(truth), truth, np.nanmedian(truth))
    k = 2 * int(round(within_m / res)) + 1
    return (ndimage.maximum_filter(t, size=k) - ndimage.minimum_filter(t, size=k)) > step_m


def degraded_input(pts: dict, seed: int) -> dict:
    """The photogrammetric-like input of a crop (fixed per seed)."""
    from geoimplicit.synthetic.points import photogrammetric_points

    out = photogrammetric_points(pts, seed, density_m2=DENSITY_M2)
    return {k: out[k] for k in ("x", "y", "z")}


# ------------------------------------------------------------------------------------------ methods
def run_raster(pts: dict, bounds, crs: str) -> np.ndarray:
    from geoimplicit.dsm.occupancy.train import raster_baseline

    h, v = raster_baseline(pts, bounds, RES_M, crs)
    return np.where(v, h, np.nan).astype(np.float64)


def run_gdal(pts: dict, bounds, crs: str, work: Path) -> np.ndarray | None:
    """gdal_grid invdistnn on the same points and grid; None where gdal_grid is not installed."""
    exe = shutil.which("gdal_grid")
    if exe is None:
        return None
    import rasterio

    csv, vrt, out = work / "pts.csv", work / "pts.vrt", work / "idw.tif"
    with open(csv, "w") as f:
        f.write("x,y,z\n")
        np.savetxt(f, np.column_stack([pts["x"], pts["y"], pts["z"]]), fmt="%.3f", delimiter=",")
    vrt.write_text(f'<OGRVRTDataSource><OGRVRTLayer name="pts"><SrcDataSource>{csv}</SrcDataSource>'
                   '<GeometryType>wkbPoint25D</GeometryType><GeometryField encoding="PointFromColumns" x="x" y="y" '
                   'z="z"/></OGRVRTLayer></OGRVRTDataSource>')
    left, bottom, right, top = bounds
    w, h = int(round((right - left) / RES_M)), int(round((top - bottom) / RES_M))
    subprocess.run([exe, "-q", "-a", GDAL_ALGO, "-l", "pts", "-txe", str(left), str(right), "-tye", str(top),
                    str(bottom), "-outsize", str(w), str(h), "-ot", "Float32", "-a_srs", crs, str(vrt), str(out)],
                   check=True, capture_output=True)
    with rasterio.open(out) as ds:
        a = ds.read(1).astype(np.float64)
    return np.where(a == -9999, np.nan, a)


def parse_readout(spec: str) -> dict:
    """``MODE[/SUBCELLS[/REDUCE]]`` -> extract settings (``expected/2/mean``)."""
    parts = spec.split("/")
    if parts[0] not in ("surface", "expected") or len(parts) > 3:
        raise SystemExit(f"--readout {spec!r}: use MODE[/SUBCELLS[/REDUCE]], MODE surface|expected, REDUCE mean|max|min")
    return {"readout": parts[0], "readout_subcells": int(parts[1]) if len(parts) > 1 else 1,
            "readout_reduce": parts[2] if len(parts) > 2 else "mean"}


def run_occupancy(predictor, pts: dict, bounds, readout: dict) -> np.ndarray:
    from geoimplicit.dsm.occupancy.infer import predict_dsm

    for k, v in readout.items():
        setattr(predictor.cfg.extract, k, v)
    h, v = predict_dsm(predictor, pts, bounds, RES_M, images=())
    return np.where(v, h, np.nan).astype(np.float64)


# ------------------------------------------------------------------------------------------ metrics
def metrics(err: np.ndarray, bldg: np.ndarray, edge: np.ndarray) -> dict:
    def rmse(v):
        return float(np.sqrt(np.mean(v * v))) if v.size else float("nan")

    return {"cells": int(err.size), "median_abs_error": float(np.median(np.abs(err))), "rmse": rmse(err),
            "bldg_rmse": rmse(err[bldg]), "ground_rmse": rmse(err[~bldg]), "edge_rmse": rmse(err[edge]),
            "bias": float(np.mean(err))}


def city_rows(city: str, weights: dict, readouts: list[str], device: str, refiners: dict | None = None) -> dict:
    """Metrics of every method on one city (pooled over its crops). Each weight runs without a refiner
    (``NAME [readout]``) and with each of ``refiners`` (``NAME+REFINER [readout]``)."""
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor
    from geoimplicit.dsm.occupancy.refine import load_refiner

    role, crs, crops = CITIES[city]
    errs, info = {}, []
    preds = {}
    for n, p in weights.items():
        for rn, rp in [("", None)] + list((refiners or {}).items()):
            pred = OccupancyPredictor(p, device)
            pred.refiner = None if rp is None else load_refiner(rp)[0].to(pred.device)
            preds[n + (f"+{rn}" if rn else "")] = pred
    for i, (crop, files) in enumerate(crops):
        dense = read_dense([SHARED / f for f in files])
        bounds = crop_grid(dense)
        truth, bldg = truth_grid(dense, bounds)
        pts = degraded_input(dense, seed=1000 + i)
        out = {"raster": run_raster(pts, bounds, crs)}
        with tempfile.TemporaryDirectory(prefix="real_cities_") as tmp:
            g = run_gdal(pts, bounds, crs, Path(tmp))
            if g is not None:
                out["gdal_grid invdistnn"] = g
        for name, pred in preds.items():
            for spec in readouts:
                t0 = time.perf_counter()
                out[f"{name} [{spec}]"] = run_occupancy(pred, pts, bounds, parse_readout(spec))
                log.info("%s %s %s: %.1f s", city, crop, f"{name} [{spec}]", time.perf_counter() - t0)
        both = np.isfinite(truth) & np.logical_and.reduce([np.isfinite(a) for a in out.values()])
        edge = edge_mask(truth)
        for name, a in out.items():
            e = errs.setdefault(name, {"err": [], "bldg": [], "edge": []})
            e["err"].append((a - truth)[both]); e["bldg"].append(bldg[both]); e["edge"].append(edge[both])
        info.append({"crop": crop, "bounds": bounds, "dense_points": int(len(dense["x"])),
                     "input_points": int(len(pts["x"])), "cells": int(truth.size), "common_cells": int(both.sum()),
                     "building_cells": int((bldg & both).sum()), "edge_cells": int((edge & both).sum())})
    rows = {n: metrics(*(np.concatenate(e[k]) for k in ("err", "bldg", "edge"))) for n, e in errs.items()}
    base = rows["raster"]
    for r in rows.values():
        for k in KEYS:
            r[f"{k}_ratio"] = r[k] / base[k] if base[k] else float("nan")
    return {"role": role, "crs": crs, "crops": info, "methods": rows}


# ------------------------------------------------------------------------------------------ output
def markdown(result: dict) -> str:
    lines = ["## Real cities, points only (`python -m bench.real_cities`)", "",
             f"Input: each dense cloud made photogrammetric-like (~{DENSITY_M2} pts/m2, top surface only, edge noise "
             "and smear, shadow and facade holes, outliers); truth: the dense cloud's 0.5 m cell max. Ratios are to "
             "the raster baseline on the same input. Amsterdam is validation (settings chosen there); the others are "
             "test sets.", ""]
    for city, c in result["cities"].items():
        pts = sum(x["input_points"] for x in c["crops"])
        cells = sum(x["common_cells"] for x in c["crops"])
        lines += [f"### {city} ({c['role']}; {len(c['crops'])} crop(s), {pts:,} input points, {cells:,} cells)", "",
                  "| method | median abs err | RMSE | building RMSE | ground RMSE | edge RMSE | median ratio | RMSE ratio "
                  "| building ratio |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in c["methods"].items():
            lines.append(f"| {name} | {r['median_abs_error']:.3f} | {r['rmse']:.3f} | {r['bldg_rmse']:.3f} | "
                         f"{r['ground_rmse']:.3f} | {r['edge_rmse']:.3f} | {r['median_abs_error_ratio']:.2f}x | "
                         f"{r['rmse_ratio']:.2f}x | {r['bldg_rmse_ratio']:.2f}x |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_weights(items: list[str]) -> dict:
    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not Path(path).exists():
            raise SystemExit(f"{it!r}: give NAME=PATH of an existing .pt")
        out[name] = path
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", action="append", default=[], help="NAME=PATH (repeatable; default: the shipped one)")
    ap.add_argument("--readout", action="append", default=[], help="MODE[/SUBCELLS[/REDUCE]] (repeatable)")
    ap.add_argument("--refiner", action="append", default=[],
                    help="NAME=PATH of a height refiner (repeatable; each weight also runs with each)")
    ap.add_argument("--cities", default="amsterdam", help=f"comma list of {', '.join(CITIES)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from geoimplicit.dsm.occupancy.checkpoint import DEFAULT_WEIGHTS

    weights = parse_weights(args.weights) or {"shipped": str(DEFAULT_WEIGHTS)}
    refiners = parse_weights(args.refiner)
    readouts = args.readout or ["surface"]
    for spec in readouts:
        parse_readout(spec)
    cities = [c.strip() for c in args.cities.split(",") if c.strip()]
    bad = [c for c in cities if c not in CITIES]
    if bad:
        raise SystemExit(f"--cities: unknown {bad}; known: {', '.join(CITIES)}")
    t0 = time.perf_counter()
    result = {"weights": weights, "refiners": refiners, "readouts": readouts, "density_m2": DENSITY_M2, "resolution_m": RES_M,
              "gdal_grid": GDAL_ALGO if shutil.which("gdal_grid") else "not installed", "device": args.device,
              "cities": {c: city_rows(c, weights, readouts, args.device, refiners) for c in cities}}
    result["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "real_cities.json", json.dumps(result, indent=1))
    md = markdown(result)
    write_atomic(args.out / "real_cities.md", md)
    print(md)
    return result


if __name__ == "__main__":
    main()
