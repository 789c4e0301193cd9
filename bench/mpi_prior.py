"""The across-scene MPI prior against the per-scene fit from scratch, on generated view sets it never saw.

    python -m bench.mpi_prior [--prior default|PATH] [--seeds 1] [--crs EPSG:28992] [--size 384] [--steps 1500]

Scenes: generated cities (``--scene-m`` square, seeds ``--seeds``, CRS ``--crs``) rendered in the run at ``--size``
px, ``--views`` views of which ``--test`` are held out (``view_split.txt``); the prior's training scenes use seeds
from 100000 (validation 900000) and EPSG:2154 / 32631 / 25832 / 3035, so these are held out by seed and CRS.
For 3 train views (the nadir view, the middle and the last of the train views) and for all train views:

- (a) ``scratch``: the fit from the plane sweep with ``--steps`` steps (``--preset auto``: ``best`` on CUDA);
  ``sweep alone``: its start (0 steps);
- (b) ``prior alone``: a fit of 0 steps started from the prior (``--prior``; several are compared in turn);
- (c) ``prior+fit``: fits started from the prior with ``--fractions`` of (a)'s steps, whether each reaches (a)'s
  held-out PSNR, and a ``summary`` row: the fewest of those steps that did, and their seconds.

Each row: held-out PSNR / SSIM / depth MAE (``nvs eval``), optimisation seconds, wall seconds of the whole fit
(images, plane sweep or prior, saving), and the geo-MPI's nadir height raster against the scene's DSM through
``geoimplicit eval`` (median absolute error, RMSE, NMAD, on the cells the MPI covers). One JSON line per row on
stdout and in ``OUT/mpi_prior.jsonl`` (rows are written as they come, so a run cut short keeps what it had).
CPU-sized: ``--size 64 --scene-m 48 --views 6 --test 2 --planes 8 --steps 40 --preset cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from geoimplicit.mpi.evaluate import evaluate_views
from geoimplicit.mpi.fit import FIT_PRESETS, FitConfig, fit_mpi, preset_settings


def _scene(seed: int, args, root: Path) -> tuple[Path, Path]:
    """The view set and the DSM GeoTIFF of held-out scene ``seed`` (reused when already there)."""
    from geoimplicit.io.raster import write_geotiff
    from geoimplicit.synthetic import generate_city, scene_bounds
    from geoimplicit.synthetic.views import render_view_set

    vdir, truth = root / f"views_{seed}", root / f"truth_dsm_{seed}.tif"
    if (vdir / "view_split.txt").exists() and truth.exists():
        return vdir, truth
    t0 = time.perf_counter()
    city = generate_city(seed, bounds=scene_bounds(args.scene_m, crs=args.crs, resolution=0.5), resolution=0.5,
                         crs=args.crs)
    render_view_set(city, vdir, seed=seed, n_views=args.views, n_test=args.test, size=args.size, n_track=2,
                    workers=min(16, os.cpu_count() or 1))
    write_geotiff(truth, city.dsm.astype("float32"), city.transform, city.crs, overwrite=True)
    print(json.dumps({"generated": seed, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return vdir, truth


def _three(train_ids: list[str]) -> list[str]:
    """Nadir (the first), middle and last train view: the widest spread of three."""
    return sorted({train_ids[0], train_ids[len(train_ids) // 2], train_ids[-1]})


def _height_stats(model_dir: Path, truth: Path, out: Path, device) -> dict:
    from geoimplicit.evaluate import evaluate_dsm
    from geoimplicit.mpi.render import render_geo_products

    paths = render_geo_products(model_dir, out / "geo", device=device, overwrite=True)
    rep = evaluate_dsm(paths["height"], truth, out / "dsm_eval", overwrite=True, figures=False)["overall"]
    return {"height_median_abs": round(rep["median_abs_error"], 3), "height_rmse": round(rep["rmse"], 3),
            "height_nmad": round(rep["nmad"], 3), "height_cells": rep["count"]}


def _run(vdir: Path, truth: Path, ids: list[str], cfg: FitConfig, out: Path, device, keep: bool) -> dict:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = fit_mpi(vdir, out / "model", cfg, overwrite=True, train_ids=ids)
    wall = time.perf_counter() - t0
    rep = evaluate_views(out / "model", vdir, out / "eval", overwrite=True, device=cfg.device)["mean"]
    row = {"steps": cfg.steps, "fit_s": round(res.seconds, 1), "wall_s": round(wall, 1),
           "train_psnr": round(res.train_psnr, 2), **{f"test_{k}": round(v, 4) for k, v in rep.items()},
           **_height_stats(out / "model", truth, out, cfg.device)}
    if not keep:
        shutil.rmtree(out / "model")
    return row


def _prior_rows(vdir, truth, ids, base, prior, fractions, methods, ref, work, args, head, emit) -> None:
    """The prior alone and the fits started from it; then the fewest steps (and their seconds) that reached the
    scratch fit's held-out PSNR, among the fractions tried (None: none did)."""
    tag = Path(prior).stem if prior != "default" else "default"
    if "prior" in methods:
        row = _run(vdir, truth, ids, FitConfig(**{**base, "steps": 0, "prior": prior}), work / f"prior_{tag}",
                   args.device, args.keep)
        emit({**head, "method": "prior alone", **row})
    if "fit" not in methods:
        return
    reached = None
    for frac in fractions:
        steps = max(1, round(frac * base["steps"]))
        row = _run(vdir, truth, ids, FitConfig(**{**base, "steps": steps, "prior": prior}),
                   work / f"prior_{tag}_fit_{steps}", args.device, args.keep)
        if ref is not None:
            row["reaches_scratch_psnr"] = bool(row["test_psnr"] >= ref["test_psnr"])
            if row["reaches_scratch_psnr"] and reached is None:
                reached = {"steps_to_scratch_psnr": steps, "fit_s_to_scratch_psnr": row["fit_s"]}
        emit({**head, "method": "prior+fit", "fraction": frac, **row})
    if ref is not None:
        emit({**head, "method": "summary", "scratch_psnr": ref["test_psnr"], "scratch_steps": ref["steps"],
              "scratch_fit_s": ref["fit_s"], **(reached or {"steps_to_scratch_psnr": None})})


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default="default",
                    help="default (the shipped weights) or a weights path; several, comma-separated, are compared")
    ap.add_argument("--seeds", default="1", help="held-out scene seeds, comma-separated")
    ap.add_argument("--crs", default="EPSG:28992", help="CRS of the held-out scenes (not a training CRS)")
    ap.add_argument("--scene-m", type=float, default=128.0)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--test", type=int, default=3)
    ap.add_argument("--preset", default="auto", choices=["auto", *sorted(FIT_PRESETS)],
                    help="fit preset (auto: best on CUDA, cpu otherwise)")
    ap.add_argument("--planes", type=int, default=None, help="override the preset's planes")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps (the scratch fit's)")
    ap.add_argument("--fit", default="{}", help='other FitConfig fields as JSON, e.g. \'{"empty_alpha": 0.005}\'')
    ap.add_argument("--fractions", default="0.05,0.1,0.2,0.333",
                    help="steps of the prior-started fits, as fractions of --steps")
    ap.add_argument("--methods", default="scratch,sweep,prior,fit",
                    help="rows: scratch (the fit from the plane sweep), sweep (its start alone), prior (alone), fit "
                         "(fits started from the prior)")
    ap.add_argument("--train-sets", default="3,all", help="which train sets: 3, all, or both")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the fitted models (large: ~0.5 GB at 96 planes)")
    ap.add_argument("--out", default=os.environ.get("OUT", tempfile.mkdtemp()))
    args = ap.parse_args(argv)
    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.mpi.prior.checkpoint import load_prior_checkpoint

    priors = [p for p in args.prior.split(",") if p]
    for prior in priors:
        load_prior_checkpoint(prior)  # a clear error before any rendering
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "mpi_prior.jsonl", "a")
    base = dict(preset_settings(args.preset, args.device)[1], device=args.device)
    if args.planes:
        base["planes"] = args.planes
    if args.steps is not None:
        base["steps"] = args.steps
    base.update(json.loads(args.fit))
    fractions = [float(f) for f in args.fractions.split(",") if f]
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    rows = []

    def emit(row):
        row["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        rows.append(row)
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()

    methods = set(args.methods.split(","))
    for seed in (int(s) for s in args.seeds.split(",")):
        vdir, truth = _scene(seed, args, out)
        train = ViewSet.load(vdir).train_ids
        sets = {"3": _three(train), "all": train}
        for name in args.train_sets.split(","):
            ids = sets[name]
            head = {"seed": seed, "crs": args.crs, "size": args.size, "train_views": len(ids), "planes": base["planes"],
                    **({"fit": json.loads(args.fit)} if json.loads(args.fit) else {})}
            work = out / f"s{seed}_{name}"
            ref = None
            if "scratch" in methods:
                ref = _run(vdir, truth, ids, FitConfig(**base), work / "scratch", args.device, args.keep)
                emit({**head, "method": "scratch", **ref})
            if "sweep" in methods:  # the fit's start without a prior (0 steps)
                row = _run(vdir, truth, ids, FitConfig(**{**base, "steps": 0}), work / "sweep", args.device, args.keep)
                emit({**head, "method": "sweep alone", **row})
            for prior in priors:
                _prior_rows(vdir, truth, ids, base, prior, fractions, methods, ref, work, args, {**head, "prior": prior},
                            emit)
    log.close()
    (out / "mpi_prior.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
