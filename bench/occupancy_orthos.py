"""How an occupancy model takes the orthos a user has, on the validation scenes (never the test scenes).

    python -m bench.occupancy_orthos --weights default=geoimplicit/weights/occupancy_default.pt [--weights NAME=PATH ...]

Generator seeds 1000-1003 (``synthetic_val_seeds``), lidar_tin truth, their generator cloud as input; the model
gets: the true-ortho RGB and the same RGB under another sun (what it trains on), the RGB and an IRC ortho (near
infrared, red, green: IGN's BD ORTHO IRC), leaning versions of those (relief displacement of ``--lean`` per unit of
height, a random direction per scene, as in an ordinary non-true ortho), the leaning RGB alone, and no ortho. Models
that read a true-ortho flag are told which orthos are true (the first two sets) and which are not.
Prints one markdown row per model and condition: MAE / RMSE / median abs error / NMAD, overall and on buildings.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from bench.occupancy import KEYS

SEEDS = (1000, 1001, 1002, 1003)


def conditions(scene, lean_m_per_m: float) -> dict:
    """The ortho sets of one validation scene, by name."""
    from geoimplicit.synthetic.city import generate_city
    from geoimplicit.synthetic.ortho import relief_displacement, render_irc

    seed = int(scene.name[4:])
    city = generate_city(seed, bounds=scene.bounds, resolution=abs(scene.transform.a), crs=scene.crs)
    irc = render_irc(city, np.random.default_rng([seed, 1]))
    a = np.random.default_rng([seed, 5]).uniform(0, 2 * math.pi)
    lean = (lean_m_per_m * math.cos(a), lean_m_per_m * math.sin(a))

    def leaning(img):
        return relief_displacement(img, city.dsm, city.dtm, city.resolution, lean)

    rgb, sun, tr = scene.images[0][0], scene.images[1][0], scene.transform
    return {
        "true RGB + second-sun RGB": [(rgb, tr), (sun, tr)],
        "true RGB + IRC": [(rgb, tr), (irc, tr)],
        "leaning RGB + leaning second-sun RGB": [(leaning(rgb), tr), (leaning(sun), tr)],
        "leaning RGB + leaning IRC": [(leaning(rgb), tr), (leaning(irc), tr)],
        "leaning RGB": [(leaning(rgb), tr)],
        "no ortho": [],
    }


def main(argv=None):
    from geoimplicit.dsm.occupancy.data import synthetic_scene
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor
    from geoimplicit.dsm.occupancy.train import evaluate_scene

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lean", type=float, default=0.2, help="relief displacement per unit of height")
    args = ap.parse_args(argv)
    scenes = [synthetic_scene(s, 128.0, "EPSG:2154", n_clouds=0, truth="lidar_tin") for s in SEEDS]
    sets = [conditions(s, args.lean) for s in scenes]
    print("| model | orthos | MAE / RMSE / median / NMAD | buildings | raster | raster buildings |")
    print("|---|---|---|---|---|---|")
    for spec in args.weights:
        name, path = spec.split("=", 1)
        predictor = OccupancyPredictor(path, args.device)
        for cond in sets[0]:
            rows = [evaluate_scene(predictor, sc, int(sc.name[4:]), images=imgs[cond][:predictor.n_images],
                                   true_ortho=cond.startswith("true"))
                    for sc, imgs in zip(scenes, sets)]
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.startswith(("occ", "raster"))}
            cells = [" / ".join(f"{mean[f'{pre}{k}']:.3f}" for k in KEYS)
                     for pre in ("occ_", "occ_bldg_", "raster_", "raster_bldg_")]
            print(f"| {name} | {cond} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
