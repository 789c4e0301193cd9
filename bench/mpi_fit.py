"""MPI fitting: time to fit one scene and PSNR on its held-out test views, for each generator and layout.

    python -m bench.mpi_fit [--scenes analytic512,city] [--steps 1500] [--planes 32] [--models direct,conv,mlp]

Scenes: ``analytic512`` = the analytic view set of ``geoimplicit.mpi.demo`` at 512x512, 20 views (4 held out),
generated in the run; ``city`` = ``sample_data/synthetic_city/views`` (the generated city, 256x256, 20 views,
4 held out); ``cityaerial`` / ``cityoblique`` = the same generated city (seed 4, 128 m) rendered in the run at
``--size`` x ``--size``, 20 views (16 train / 4 held out), in the ``aerial`` (default, near-nadir) or
``oblique`` view configuration of ``geoimplicit.synthetic.views``. ``--variants`` adds fits with other
:class:`FitConfig` settings (JSON objects separated by ``;``). Prints one JSON line per fit (fit seconds,
train PSNR, test PSNR / SSIM / depth error). ``--views-root`` shares generated view sets between runs (a view
set already there is reused), ``--render-only`` only generates them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from geoimplicit.mpi.demo import make_analytic_views
from geoimplicit.mpi.evaluate import evaluate_views
from geoimplicit.mpi.fit import FitConfig, fit_mpi

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", default="analytic512,city")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--planes", type=int, default=32)
    ap.add_argument("--models", default="direct")
    ap.add_argument("--layouts", default="fronto,geo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--variants", default="{}", help="FitConfig overrides, JSON objects separated by ';'")
    ap.add_argument("--out", default=os.environ.get("OUT", tempfile.mkdtemp()))
    ap.add_argument("--views-root", default=None,
                    help="folder of the generated view sets (default --out); a view set already there is reused, "
                         "so that several bench processes can share one rendering")
    ap.add_argument("--render-only", action="store_true", help="generate the view sets and stop")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vroot = Path(args.views_root) if args.views_root else out
    vroot.mkdir(parents=True, exist_ok=True)
    scenes = {}
    for name in args.scenes.split(","):
        if name.startswith("analytic"):
            t0 = time.perf_counter()
            scenes[name] = make_analytic_views(out / f"views_{name}", size=args.size, n_views=20, n_test=4, seed=5)
            print(json.dumps({"generated": name, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        elif name == "city":
            scenes[name] = REPO / "sample_data" / "synthetic_city" / "views"
        elif name in ("cityaerial", "cityoblique"):
            from geoimplicit.synthetic import generate_city, scene_bounds
            from geoimplicit.synthetic.views import render_view_set

            vdir = vroot / f"views_{name}"
            if (vdir / "view_split.txt").exists():
                scenes[name] = vdir
                continue
            t0 = time.perf_counter()
            city = generate_city(4, bounds=scene_bounds(128, crs="EPSG:2154", resolution=0.5), resolution=0.5,
                                 crs="EPSG:2154")
            scenes[name] = render_view_set(city, vdir, seed=4, n_views=20, size=args.size,
                                           n_track=4, config=name[4:], workers=min(16, os.cpu_count() or 1))
            print(json.dumps({"generated": name, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    if args.render_only:
        return []
    rows = []
    variants = [json.loads(v) for v in args.variants.split(";")]
    for sname, vdir in scenes.items():
        for layout, model, (vi, extra) in itertools.product(args.layouts.split(","), args.models.split(","),
                                                          enumerate(variants)):
            steps = args.steps if model == "direct" else max(1, args.steps // 3)
            cfg = FitConfig(**{"planes": args.planes, "layout": layout, "model": model, "steps": steps,
                               "device": args.device, **extra})  # a variant may override any of them
            mdir = out / f"model_{sname}_{layout}_{model}_{vi}"
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            res = fit_mpi(vdir, mdir, cfg, overwrite=True)
            rep = evaluate_views(mdir, vdir, out / f"eval_{sname}_{layout}_{model}_{vi}", overwrite=True,
                                 device=args.device)
            row = {"scene": sname, "layout": layout, "model": model, "variant": extra, "planes": cfg.planes,
                   "steps": cfg.steps, "size": args.size if sname != "city" else 256,
                   "fit_s": round(res.seconds, 1), "train_psnr": round(res.train_psnr, 2),
                   **{f"test_{k}": round(v, 4) for k, v in rep["mean"].items()},
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "mpi_fit.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
