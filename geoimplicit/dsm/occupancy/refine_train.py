"""Examples and training of the height refiner (:mod:`.refine`): ``geoimplicit train-refiner``.

Examples come from the occupancy model's own training sources, never from the validation or test cities:
- the real dense clouds of a training config's ``data.real`` (truth: their 0.5 m cell max, as
  bench/real_cities.py scores), each degraded ``real_passes`` times as ``data.real_degradations`` and its ranges
  say; clouds under ``MIN_TRUTH_DENSITY_M2`` are skipped (their cell max has holes in every other cell);
- generated cities drawn from ``data.synthetic_train_seeds`` (truth: the generator's DSM; input: its
  photogrammetric-like cloud with random density, noise, holes and outliers).
Per (crop, input) the occupancy model, refiner off, reads the whole crop (:func:`.infer.predict_dsm`); cells
where both the truth and the occupancy height exist are examples, ``cells_per_crop`` of them drawn at random.
Training: Adam on the squared error of the corrected height, in metres, clipped at ``clip_m``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from geoimplicit.dsm.occupancy.refine import HeightRefiner, cell_stats, file_sha256, save_refiner, window_features

log = logging.getLogger(__name__)
RESOLUTION_M = 0.5
MIN_TRUTH_DENSITY_M2 = 8.0


@dataclass
class RefinerRecipe:
    radius: int = 3
    width: int = 96
    deadband_m: float = 1.0  # chosen on validation (Amsterdam): keeps the median, costs no RMSE
    real_passes: int = 6  # 3 -> 6 and 8 -> 12 cities: worst-seed RMSE ratio on Amsterdam 1.02x -> 0.97x
    synthetic_cities: int = 12
    synthetic_size_m: float = 128.0
    cells_per_crop: int = 30000
    epochs: int = 25
    batch: int = 2048
    lr: float = 2e-3
    clip_m: float = 30.0
    seed: int = 0


def crop_bounds(x, y, res: float = RESOLUTION_M) -> tuple:
    """Bounds on multiples of ``res`` inside the points' bounding box."""
    return (math.ceil(x.min() / res) * res, math.ceil(y.min() / res) * res,
            math.floor(x.max() / res) * res, math.floor(y.max() / res) * res)


def grid_shape(bounds, res: float = RESOLUTION_M) -> tuple[int, int]:
    left, bottom, right, top = bounds
    return int(round((top - bottom) / res)), int(round((right - left) / res))


def crop_examples(predictor, pts: dict, truth: np.ndarray, bounds, radius: int, n_cells: int, rng):
    """(features (n, F), occupancy height (n,), truth (n,)) of up to ``n_cells`` cells of one crop input."""
    from geoimplicit.dsm.occupancy.infer import predict_dsm

    h, valid = predict_dsm(predictor, pts, bounds, RESOLUTION_M)
    rows, cols = h.shape
    stats = cell_stats(pts["x"], pts["y"], pts["z"], bounds[0], bounds[3], rows, cols, RESOLUTION_M)
    ok = valid & np.isfinite(truth)
    idx = np.flatnonzero(ok)
    if len(idx) > n_cells:
        idx = np.sort(rng.choice(idx, n_cells, replace=False))
    r = radius
    hp = np.pad(np.where(valid, h, 0).astype(np.float32), r)
    vp = np.pad(valid, r)
    sp = np.pad(stats, ((0, 0), (r, r), (r, r)), constant_values=np.nan)
    sp[3] = np.nan_to_num(sp[3])
    feats = window_features(torch.from_numpy(hp), torch.from_numpy(vp), torch.from_numpy(sp), r)
    return feats[torch.from_numpy(idx)], h.reshape(-1)[idx].astype(np.float32), truth.reshape(-1)[idx].astype(np.float32)


def real_crops(data_cfg, passes: int, rng):
    """(name, input points in metres, truth, bounds) for each real training cloud and degradation."""
    from geoimplicit.dsm.occupancy.data import read_dense, real_input

    kinds = [k for k in data_cfg.real_degradations if k != "simple"] or ["photogrammetric"]
    for path in data_cfg.real:
        dense, mpu = read_dense(path)
        x, y, z = (dense[k] * mpu for k in ("x", "y", "z"))
        b = crop_bounds(x, y)
        density = len(x) / max((b[2] - b[0]) * (b[3] - b[1]), 1.0)
        if density < MIN_TRUTH_DENSITY_M2:
            log.info("%s: %.1f points/m2, too sparse for a 0.5 m truth; skipped", path, density)
            continue
        rows, cols = grid_shape(b)
        truth = cell_stats(x, y, z, b[0], b[3], rows, cols, RESOLUTION_M)[0]
        for p in range(passes):
            kind = kinds[int(rng.integers(len(kinds)))]
            ix, iy, iz = real_input(kind, x, y, z, rng, data_cfg)
            yield f"{Path(path).name}#{p} {kind}", {"x": ix, "y": iy, "z": iz}, truth, b


def synthetic_crops(data_cfg, n: int, size_m: float, rng):
    """(name, input points, truth, bounds) for ``n`` generated cities of the config's training seeds."""
    from geoimplicit.synthetic.city import generate_city, scene_bounds
    from geoimplicit.synthetic.points import sample_points

    lo, hi = data_cfg.synthetic_train_seeds
    for seed in rng.choice(np.arange(lo, hi), size=min(n, hi - lo), replace=False):
        b = scene_bounds(size_m, crs="EPSG:2154")
        city = generate_city(int(seed), bounds=b, resolution=RESOLUTION_M, crs="EPSG:2154")
        pts = sample_points(city, int(rng.integers(2**31)), density=rng.uniform(3.0, 10.0),
                            noise=rng.uniform(0.05, 0.2), holes=rng.uniform(0.02, 0.1), outliers=rng.uniform(0, 0.01))
        yield f"city {int(seed)}", {k: pts[k] for k in ("x", "y", "z")}, city.dsm.astype(np.float32), tuple(b)


def build_examples(predictor, data_cfg, recipe: RefinerRecipe, progress=None) -> dict:
    """Every example of the recipe: features, occupancy heights and truths (CPU tensors), and what made them."""
    rng = np.random.default_rng([recipe.seed, 7717])
    lo, hi = data_cfg.synthetic_train_seeds
    total = len(data_cfg.real) * recipe.real_passes + min(recipe.synthetic_cities, hi - lo)  # at most
    parts, names = [], []
    sources = [real_crops(data_cfg, recipe.real_passes, rng),
               synthetic_crops(data_cfg, recipe.synthetic_cities, recipe.synthetic_size_m, rng)]
    for source in sources:
        for name, pts, truth, b in source:
            t0 = time.perf_counter()
            f, h, t = crop_examples(predictor, pts, truth, b, recipe.radius, recipe.cells_per_crop, rng)
            parts.append((f, torch.from_numpy(h), torch.from_numpy(t)))
            names.append(name)
            if progress:
                progress(len(names), total, "examples", f"{name}: {len(h):,} cells in {time.perf_counter() - t0:.1f} s")
    if not parts:
        raise ValueError("no training examples: data.real and data.synthetic_train_seeds give none")
    f, h, t = (torch.cat([p[i] for p in parts]) for i in range(3))
    return {"features": f, "height": h, "truth": t, "crops": names}


def fit_refiner(examples: dict, recipe: RefinerRecipe, device="cpu", progress=None) -> tuple[HeightRefiner, dict]:
    """Train a refiner on ``examples``; 5 % of them are held out to report the RMSE before and after."""
    torch.manual_seed(recipe.seed)
    dev = torch.device(device)
    f, h, t = examples["features"], examples["height"], examples["truth"]
    target = (t - h).clamp(-recipe.clip_m, recipe.clip_m)
    n = len(target)
    perm = torch.randperm(n)
    n_hold = max(1, n // 20)
    hold, train_idx = perm[:n_hold], perm[n_hold:]
    model = HeightRefiner(recipe.radius, recipe.width, resolution_m=RESOLUTION_M).to(dev)  # no deadband in training
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    steps = recipe.epochs * math.ceil(len(train_idx) / recipe.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.1)
    for epoch in range(recipe.epochs):
        order = train_idx[torch.randperm(len(train_idx))]
        total = 0.0
        for i in range(0, len(order), recipe.batch):
            b = order[i:i + recipe.batch]
            loss = torch.mean((model(f[b].to(dev)) - target[b].to(dev)) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        if progress:
            progress(epoch + 1, recipe.epochs, "fit", f"train RMSE of the correction {math.sqrt(total / len(order)):.3f} m")
    model.eval()
    model.deadband_m = recipe.deadband_m
    with torch.no_grad():
        pred = torch.cat([model.correction(f[hold[i:i + 65536]].to(dev)).cpu() for i in range(0, n_hold, 65536)])
    before = float(torch.sqrt(torch.mean(target[hold] ** 2)))
    after = float(torch.sqrt(torch.mean((target[hold] - pred) ** 2)))
    return model.cpu(), {"examples": n, "held_out": n_hold, "held_out_rmse_before_m": before,
                         "held_out_rmse_after_m": after}


def train_refiner(weights, config, output, *, recipe: RefinerRecipe, device="cpu", progress=None) -> dict:
    """The whole command: examples from ``config``'s data with the occupancy ``weights``, fit, save ``output``."""
    from geoimplicit.dsm.occupancy.config import load_config
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor

    cfg = load_config(config)
    predictor = OccupancyPredictor(weights, device)
    predictor.refiner = None
    examples = build_examples(predictor, cfg.data, recipe, progress)
    model, report = fit_refiner(examples, recipe, device, progress)
    report |= {"crops": examples["crops"], "config": str(config), "weights": str(weights)}
    save_refiner(model, output, base_weights_sha256=file_sha256(weights), recipe=asdict(recipe) | {
        "config": str(config), "crops": examples["crops"]})
    return report
