"""Training: BCE on occupancy labels, AdamW, bf16 mixed precision on CUDA, checkpoints, resume, validation.

Outputs in the run folder: ``config.yaml`` (the resolved config), ``last.pt`` (resumable: weights, optimizer,
step), ``model.pt`` (final weights, config and normalisation, no optimizer), ``metrics.jsonl`` (one line per
validation).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from geoimplicit.dsm.occupancy.config import Config, save_config
from geoimplicit.progress import check_cancel
from geoimplicit.schedules import cosine_decay

log = logging.getLogger(__name__)

VAL_DEGRADE = dict(keep_fraction=0.5, noise=0.15, hole_fraction=0.05, outlier_fraction=0.002)
VAL_DENSITY_M2 = 8.0


def dsm_metrics(pred, truth, mask=None) -> dict:
    """MAE, RMSE, median absolute error, NMAD (and more) of pred - truth where both are valid (and mask)."""
    res = np.where(np.isfinite(truth), pred.astype(np.float64) - truth, np.nan)
    try:
        from geoimplicit.evaluate.metrics import residual_stats

        return residual_stats(res, mask)
    except ImportError:  # the evaluation module is not installed: the same numbers with numpy
        v = res[mask] if mask is not None else res
        v = v[np.isfinite(v)]
        if not v.size:
            return {"count": 0}
        med = np.median(v)
        return {"count": int(v.size), "mae": float(np.abs(v).mean()), "rmse": float(np.sqrt((v * v).mean())),
                "median_abs_error": float(np.median(np.abs(v))), "nmad": float(1.4826 * np.median(np.abs(v - med))),
                "bias": float(v.mean())}


def validation_input(scene, seed: int):
    """The fixed degraded input cloud of a validation scene (same every time)."""
    from geoimplicit.dsm.occupancy.data import degrade, sample_scene_points

    rng = np.random.default_rng([seed, 4242])
    b = scene.bounds
    if scene.points is None and scene.crs is not None:  # generated: the generator's photogrammetric cloud
        return _generator_cloud(scene, seed)
    if scene.points is not None:
        x, y, z = scene.points["x"], scene.points["y"], scene.points["z"]
    else:
        x, y, z = sample_scene_points(scene, b, rng, VAL_DENSITY_M2)
    x, y, z = degrade(x, y, z, rng, bounds=b, upm=1.0 / scene.metres_per_unit, **VAL_DEGRADE)
    return {"x": x, "y": y, "z": z}


def _generator_cloud(scene, seed: int) -> dict:
    """Re-make the generated city of ``scene`` and sample the evaluation cloud with the generator's defects."""
    from geoimplicit.synthetic.city import generate_city
    from geoimplicit.synthetic.points import sample_points

    upm = 1.0 / scene.metres_per_unit
    city = generate_city(int(scene.name[4:]), bounds=scene.bounds, resolution=abs(scene.transform.a), crs=scene.crs)
    pts = sample_points(city, seed, **VAL_GENERATOR)
    del upm
    return {k: pts[k] for k in ("x", "y", "z")}


VAL_GENERATOR = dict(density=8.0, noise=0.15, holes=0.05, outliers=0.005)


def raster_baseline(points: dict, bounds, resolution: float, crs=None):
    """The project's raster baseline (geoimplicit.dsm.rasterize: max, outliers removed, holes filled) on the
    exact grid; the in-memory fallback when that module is absent. Returns (height with NODATA, valid)."""
    try:
        from geoimplicit.dsm.rasterize import rasterize
        from geoimplicit.tiling.grid import GridSpec
    except ImportError:
        from geoimplicit.dsm.occupancy.infer import raster_max_prior

        return raster_max_prior(points, bounds, resolution)
    r = rasterize(points, GridSpec.from_bounds(bounds, resolution, crs, snap=False))
    return r.with_nodata(), r.valid


def evaluate_scene(predictor, scene, seed: int, *, images=None, true_ortho: bool = True, buildings=None,
                   points=None) -> dict:
    """Occupancy DSM vs the in-memory raster max baseline on one scene with a truth DSM, on the truth grid
    (metrics in metres). ``true_ortho``: whether ``images`` are true orthos (a scene's own images are)."""
    from geoimplicit.dsm.occupancy.infer import predict_dsm

    pts = points if points is not None else validation_input(scene, seed)
    res = abs(scene.transform.a)
    b = scene.bounds
    imgs = scene.images if images is None else images
    dsm, valid = predict_dsm(predictor, pts, b, res, metres_per_unit=scene.metres_per_unit, images=imgs,
                             true_ortho=true_ortho)
    base, bvalid = raster_baseline(pts, b, res, scene.crs)
    buildings = scene.buildings if buildings is None else buildings
    both = valid & bvalid & np.isfinite(scene.truth)
    out = {}
    mpu = scene.metres_per_unit  # metrics in metres whatever the CRS unit
    for name, pred in (("occ", dsm * mpu), ("raster", base * mpu)):
        m = dsm_metrics(pred, scene.truth * mpu, both)
        out.update({f"{name}_{k}": m[k] for k in ("mae", "rmse", "median_abs_error", "nmad") if k in m})
        if buildings is not None:
            mb = dsm_metrics(pred, scene.truth * mpu, both & buildings)
            out.update({f"{name}_bldg_{k}": mb[k] for k in ("mae", "rmse", "median_abs_error", "nmad") if k in mb})
    out["valid_fraction"] = float(valid.mean())
    return out


class _SampleStream:
    """Endless collated batches from ``sampler`` (an iterable dataset; one random stream per worker). It holds
    no reference back to its loader, so that a finished training's loader and worker processes are freed when
    its iterator goes, not later by the garbage collector (possibly inside the next training's forked workers)."""

    def __init__(self, sampler, batch_size: int, seed: int):
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed

    def __iter__(self):
        import torch

        from geoimplicit.dsm.occupancy.data import collate

        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            yield collate([self.sampler.sample(rng) for _ in range(self.batch_size)])


def _batches(sampler, batch_size: int, seed: int, workers: int):
    """Iterator over :class:`_SampleStream` batches, made in ``workers`` processes when > 0."""
    import torch

    class _Stream(_SampleStream, torch.utils.data.IterableDataset):
        pass

    loader = torch.utils.data.DataLoader(
        _Stream(sampler, batch_size, seed), batch_size=None, num_workers=workers,
        prefetch_factor=4 if workers > 0 else None, multiprocessing_context="fork" if workers > 0 else None,
    )
    return iter(loader)


def train(cfg: Config, run_dir, *, device: str = "auto", resume=None, progress=None, cancel=None,
          scenes=None, val_scenes=None, real_scenes=None, init_weights=None) -> dict:
    """Train a model as ``cfg`` says; write checkpoints, the resolved config and metrics into ``run_dir``.

    Args:
        cfg: the resolved config.
        run_dir: output folder (created).
        device: "auto", "cpu" or "cuda".
        resume: a ``last.pt`` to continue from (weights, optimizer, step).
        progress, cancel: callbacks; progress gets (step, steps, "train", "loss ...").
        scenes, val_scenes, real_scenes: prebuilt scenes (tests); default: built from the config.
        init_weights: a checkpoint (e.g. the shipped weights) whose model weights start the training (fine-tuning:
            the same architecture as ``cfg.model``; a fresh optimizer and schedule). Ignored when resuming.

    Returns:
        a summary dict (steps, seconds, final loss, last validation metrics, paths).
    """
    import torch
    import torch.nn.functional as F

    from geoimplicit.dsm.occupancy.checkpoint import load_checkpoint, save_checkpoint
    from geoimplicit.dsm.occupancy.data import PatchSampler, build_scenes, real_scene
    from geoimplicit.device import resolve_device
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor
    from geoimplicit.dsm.occupancy.model import OccupancyNet

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    dev = resolve_device(device)
    tc, dc = cfg.train, cfg.data
    torch.manual_seed(tc.seed)
    t_setup = time.perf_counter()
    if scenes is None:
        scenes = build_scenes(cfg, dc.synthetic_train_seeds, progress, workers=max(dc.workers, 0))
    if val_scenes is None:
        val_scenes = build_scenes(cfg, dc.synthetic_val_seeds, workers=max(dc.workers, 0))
    if real_scenes is None:
        real_scenes = [real_scene(p, dc.truth) for p in dc.real]
    t_setup = time.perf_counter() - t_setup
    model = OccupancyNet(cfg.model).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    step = 0
    if init_weights is not None and resume is None:
        from geoimplicit.errors import WeightsError

        try:
            model.load_state_dict(load_checkpoint(init_weights)["model"])
        except RuntimeError as exc:
            raise WeightsError(f"init weights do not fit the config's model: {str(exc)[:160]}", path=init_weights,
                               hint="use a config whose model section matches the checkpoint's") from None
        log.info("initialised from %s", init_weights)
    if resume is not None:
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:
            opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        log.info("resumed from %s at step %d", resume, step)
    sampler = PatchSampler(scenes, real_scenes, cfg, model.grid_multiple)
    batches = _batches(sampler, tc.batch_size, tc.seed + 1000 * step, dc.workers)
    amp = torch.bfloat16 if (tc.amp and dev.type == "cuda") else None
    metrics_path = run_dir / "metrics.jsonl"
    t0 = time.perf_counter()
    losses, last_metrics, ema = [], {}, None
    n_patches = 0

    def lr_at(frac):
        w = tc.warmup_steps / max(tc.steps, 1)
        if frac < w:
            return tc.lr * max(frac / max(w, 1e-9), 0.01)
        p = (frac - w) / max(1 - w, 1e-9)
        return tc.lr * cosine_decay(p, floor=0.05)

    def validate():
        model.eval()
        pred = OccupancyPredictor(model=model, cfg=cfg, device=dev, amp=tc.amp)
        rows = [evaluate_scene(pred, s, 1000 + i) for i, s in enumerate(val_scenes)]
        model.train()
        m = {k: float(np.mean([r[k] for r in rows if k in r])) for k in rows[0]} if rows else {}
        # query-level IoU on fixed validation patches
        if val_scenes:
            vs = PatchSampler(val_scenes, [], cfg, model.grid_multiple)
            rng = np.random.default_rng(7)
            from geoimplicit.dsm.occupancy.data import collate

            b = collate([vs.sample(rng, training=False) for _ in range(8)])
            with torch.inference_mode():
                logits = model(b["points"].to(dev), b["batch"].to(dev), b["n_batch"], b["shape"],
                               b["queries"].to(dev), b["images"].to(dev), b["true_ortho"].to(dev)).float().cpu()
            p, l = logits > 0, b["labels"] > 0.5
            w = b["weights"] > 0
            m["iou"] = float(((p & l) & w).sum() / max(((p | l) & w).sum(), 1))
        return m

    model.train()
    while step < tc.steps:
        check_cancel(cancel)
        elapsed = time.perf_counter() - t0
        if tc.time_limit_s and elapsed > tc.time_limit_s:
            log.info("time limit reached at step %d", step)
            break
        frac = step / tc.steps
        if tc.time_limit_s:
            frac = max(frac, elapsed / tc.time_limit_s)
        for g in opt.param_groups:
            g["lr"] = lr_at(frac)
        b = next(batches)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = model(b["points"].to(dev, non_blocking=True), b["batch"].to(dev, non_blocking=True),
                           b["n_batch"], b["shape"], b["queries"].to(dev, non_blocking=True),
                           b["images"].to(dev, non_blocking=True), b["true_ortho"].to(dev, non_blocking=True))
        w = b["weights"].to(dev)
        loss = (F.binary_cross_entropy_with_logits(logits.float(), b["labels"].to(dev), reduction="none") * w).sum() / w.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        n_patches += b["n_batch"]
        lv = float(loss.detach())
        losses.append(lv)
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        if progress:
            progress(step, tc.steps, "train", f"loss {ema:.4f}")
        if tc.checkpoint_every and step % tc.checkpoint_every == 0:
            save_checkpoint(run_dir / "last.pt", model, cfg, step=step, optimizer=opt)
        if tc.val_every and step % tc.val_every == 0 and step < tc.steps:
            last_metrics = validate()
            _log_metrics(metrics_path, step, ema, last_metrics)
    train_s = time.perf_counter() - t0
    last_metrics = validate()
    _log_metrics(metrics_path, step, ema, last_metrics)
    save_checkpoint(run_dir / "last.pt", model, cfg, step=step, optimizer=opt, metrics=last_metrics)
    final = save_checkpoint(run_dir / "model.pt", model, cfg, step=step, metrics=last_metrics)
    return {"steps": step, "train_seconds": train_s, "setup_seconds": t_setup, "patches": n_patches,
            "first_loss": losses[0] if losses else float("nan"), "final_loss": ema if ema is not None else float("nan"),
            "metrics": last_metrics, "model": str(final), "run_dir": str(run_dir), "device": str(dev)}


def _log_metrics(path: Path, step: int, loss, metrics: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "loss": loss, **metrics}) + "\n")
    log.info("step %d loss %s %s", step, loss, metrics)
