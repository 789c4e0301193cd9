"""Training of the MPI prior across generated scenes (``geoimplicit nvs train-prior CONFIG -o RUN``).

Each step draws a rendered scene, a random subset of its views as sources (``sources``: how many) and some of the
others as targets, builds the geo texture grid the per-scene fit would build from the sources
(:func:`geoimplicit.mpi.fit.scene_geometry`, ``union`` or ``nadir`` extent), predicts the surface and renders it
into the targets. Loss: ``L1 + ssim_weight * (1 - SSIM)`` of the targets (the views the prior never saw) plus
``height_weight *`` the smooth-L1 height error against the scene's DSM in sweep-plane spacings (refined and
coarse height) and the cross-entropy of the sweep planes' probabilities against the true height, on texels
some source sees. AdamW, cosine decay over the steps or the time limit (whichever
ends first), bfloat16 autocast on CUDA.

Run folder: ``config.json`` (resolved), ``scenes/`` (rendered scenes, reused by a resumed run), ``last.pt``
(resumable: weights, optimiser, step, training seconds; written every ``checkpoint_seconds``), ``model.pt``
(final weights), ``metrics.jsonl``. ``time_limit_s`` counts training seconds over all resumed runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from geoimplicit.errors import ConfigError, OutputExistsError
from geoimplicit.mpi.prior.network import PriorArch, PriorNet, sweep_planes_for
from geoimplicit.schedules import cosine_decay

log = logging.getLogger(__name__)

__all__ = ["PriorTrainConfig", "load_train_config", "train_prior", "validate_prior"]


def _default_scene() -> dict:
    return {"size_m": [64.0, 128.0], "views": [6, 10], "image_px": [96, 128], "fov_deg": [30.0, 50.0],
            "max_off_nadir_deg": [12.0, 30.0], "supersample": 3, "crs": None}


@dataclass
class PriorTrainConfig:
    """A prior training run (``geoimplicit/configs/mpi_prior.yaml`` spells out the shipped recipe)."""

    arch: PriorArch = field(default_factory=PriorArch)
    scene: dict = field(default_factory=_default_scene)
    """Ranges the training scenes are drawn from (:func:`geoimplicit.mpi.prior.data.scene_spec`)."""
    scenes: int = 400
    """Training scenes rendered at most (seeds ``first_seed`` ...)."""
    first_seed: int = 100000
    val_scenes: int = 2
    """Validation scenes (seeds ``val_first_seed`` ...), scored at the end."""
    val_first_seed: int = 900000
    workers: int = 3
    """Processes rendering scenes while the network trains (0: render in this process)."""
    steps: int = 100000
    time_limit_s: float = 0.0
    """Training seconds over all resumed runs (0: no limit); the cosine decay follows whichever ends first."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    sources: tuple[int, int] = (1, 7)
    """Range of the number of source views per example."""
    targets: int = 3
    height_weight: float = 0.05
    ssim_weight: float = 0.2
    union_share: float = 0.7
    """Share of the examples whose texture covers all sources' footprints (``extent union``), the rest ``nadir``."""
    max_texture: int = 256
    checkpoint_seconds: float = 60.0
    log_every: int = 20
    seed: int = 0
    amp: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "PriorTrainConfig":
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown prior training settings: {', '.join(bad)}", hint=f"known: {', '.join(sorted(known))}")
        arch = PriorArch.from_dict(dict(d.pop("arch", {}) or {}))
        scene = _default_scene()
        extra = sorted(set(d.get("scene", {}) or {}) - set(scene))
        if extra:
            raise ConfigError(f"unknown scene settings: {', '.join(extra)}", hint=f"known: {', '.join(sorted(scene))}")
        scene.update(d.pop("scene", {}) or {})
        if "sources" in d:
            d["sources"] = tuple(int(v) for v in d["sources"])
        cfg = cls(arch=arch, scene=scene, **d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        lo, hi = self.sources
        if not 1 <= lo <= hi:
            raise ConfigError("sources must be [min, max] with 1 <= min <= max")
        if self.scene["views"][0] < lo + 1:
            raise ConfigError("scene views: at least one more than the fewest sources (targets need views)")
        if self.scenes < 1 or self.targets < 1:
            raise ConfigError("scenes and targets must be >= 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d


def load_train_config(path) -> PriorTrainConfig:
    """A YAML or JSON config (``inherit_from`` like the occupancy configs); keys as :class:`PriorTrainConfig`."""
    from geoimplicit.config import load_yaml_tree

    def plain(x):
        return {k: plain(v) for k, v in x.items()} if isinstance(x, dict) else x

    try:
        return PriorTrainConfig.from_dict(plain(load_yaml_tree(path)))
    except ConfigError as exc:
        if exc.path is not None:
            raise
        raise ConfigError(exc.message, path=path, hint=exc.hint) from None
    except TypeError as exc:
        raise ConfigError(f"bad setting: {exc}", path=path) from None


# ------------------------------------------------------------------------------------------------ one example
def _example(scene, cfg: PriorTrainConfig, rng, device, n_sources: int | None = None, targets=None):
    """(plane set, source cams, source images, target cams, target images) of one draw from ``scene``."""
    from geoimplicit.geometry.tensors import camera_tensors
    from geoimplicit.mpi.fit import FitConfig, scene_geometry

    views = scene.views
    ids = list(views.ids)
    if targets is None:
        k = n_sources or int(rng.integers(cfg.sources[0], min(cfg.sources[1], len(ids) - 1) + 1))
        src = sorted(rng.choice(ids, size=k, replace=False).tolist())
        rest = [i for i in ids if i not in src]
        tgt = rng.choice(rest, size=min(cfg.targets, len(rest)), replace=False).tolist()
        extent = "union" if rng.random() < cfg.union_share else "nadir"
    else:
        src, tgt, extent = n_sources, targets, "union"
    fcfg = FitConfig(layout="geo", planes=cfg.arch.sweep_planes, extent=extent, max_texture=cfg.max_texture,
                     plane_placement="uniform")
    planes = scene_geometry(views, fcfg, src)
    cams = [camera_tensors(views.cameras[i], planes.origin, device=device) for i in src]
    tcams = [camera_tensors(views.cameras[i], planes.origin, device=device) for i in tgt]
    return planes, cams, [scene.images[i] for i in src], tcams, [scene.images[i] for i in tgt]


def _losses(net, scene, example, cfg: PriorTrainConfig, use_amp: bool, device) -> dict[str, torch.Tensor]:
    from geoimplicit.mpi.composite import render_mpi
    from geoimplicit.mpi.metrics import ssim
    from geoimplicit.mpi.prior.surface import surface_mpi, surface_weights

    planes, cams, imgs, tcams, timgs = example
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = net(planes, cams, imgs)
    sweep = sweep_planes_for(planes, cfg.arch.sweep_planes)
    mpi = surface_mpi(sweep, out["height"].float(), out["colour"].float())
    rgb = 0.0
    for cam, img in zip(tcams, timgs):
        r = render_mpi(mpi, sweep.A, cam)
        mask = (r["opacity"].detach() > 0.5).float()
        l1 = ((r["rgb"] - img).abs() * mask).sum() / (3 * mask.sum().clamp_min(1.0))
        rgb = rgb + (l1 + cfg.ssim_weight * (1 - ssim(r["rgb"] * mask, img * mask))) / len(tcams)
    truth = scene.true_height(planes).float().clamp(float(planes.values.min()), float(planes.values.max()))
    seen = out["seen"] > 0
    spacing = float(sweep.spacing)
    hl = torch.tensor(0.0, device=device)
    if bool(seen.any()):
        def err(h):
            return torch.nn.functional.smooth_l1_loss(h.float()[seen] / spacing, truth[seen] / spacing)

        # and the sweep planes' probabilities against the true height (split between its two sweep planes)
        target = surface_weights(sweep.values, truth)[:, seen]
        ce = -(target * torch.log(out["prob"].float()[:, seen].clamp_min(1e-8))).sum(0).mean()
        hl = err(out["height"]) + 0.5 * err(out["coarse_height"]) + 0.5 * ce
        mae = (out["height"].float() - truth)[seen].abs().mean().detach()
    else:
        mae = torch.tensor(float("nan"))
    return {"loss": rgb + cfg.height_weight * hl, "rgb": rgb.detach(), "height": hl.detach(), "height_mae": mae}


@torch.no_grad()
def validate_prior(net, scenes, cfg: PriorTrainConfig, device, n_sources: int = 3) -> dict[str, float]:
    """Prior alone on validation scenes: ``n_sources`` train views (the first of ``view_split.txt``) predict,
    the held-out views are scored (PSNR), and the height error (MAE, local units) on texels a source sees,
    beside the hand-made plane sweep's (the fit's start without a prior) on the same sweep planes."""
    from geoimplicit.mpi.composite import render_mpi
    from geoimplicit.mpi.fit import plane_sweep_mean, sweep_best_plane
    from geoimplicit.mpi.metrics import psnr
    from geoimplicit.mpi.prior.surface import surface_mpi

    net.eval()
    ps, mae, sweep_mae = [], [], []
    for scene in scenes:
        src = scene.views.train_ids[:n_sources]
        ex = _example(scene, cfg, None, device, n_sources=src, targets=scene.views.test_ids)
        planes, cams, imgs, tcams, timgs = ex
        use_amp = cfg.amp and device.type == "cuda"
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = net(planes, cams, imgs)
        sweep = sweep_planes_for(planes, cfg.arch.sweep_planes)
        mpi = surface_mpi(sweep, out["height"].float(), out["colour"].float())
        ps += [psnr(render_mpi(mpi, sweep.A, c)["rgb"].clamp(0, 1), i) for c, i in zip(tcams, timgs)]
        truth = scene.true_height(planes).float().clamp(float(planes.values.min()), float(planes.values.max()))
        seen = out["seen"] > 0
        mae.append(float((out["height"].float() - truth)[seen].abs().mean()))
        _, var, cnt = plane_sweep_mean(sweep, cams, imgs, device, return_variance=True)
        best, ok = sweep_best_plane(var, cnt)  # the fit's own start: the bottom plane where no plane is seen twice
        best = torch.where(ok, best, torch.full_like(best, sweep.num_planes - 1))
        sweep_h = torch.as_tensor(sweep.values, device=device).float()[best]
        sweep_mae.append(float((sweep_h - truth)[seen].abs().mean()))
    net.train()
    return {"val_psnr": float(np.mean(ps)), "val_height_mae": float(np.mean(mae)),
            "val_sweep_height_mae": float(np.mean(sweep_mae))}


# ------------------------------------------------------------------------------------------------ the run
def _lr(cfg: PriorTrainConfig, step: int, elapsed: float) -> float:
    frac = step / max(1, cfg.steps)
    if cfg.time_limit_s:
        frac = max(frac, elapsed / cfg.time_limit_s)
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.lr * warm * cosine_decay(frac, floor=0.05)


def _start(cfg: PriorTrainConfig, run_dir: Path, device, resume: bool, overwrite: bool, init=None):
    """Checks of the run folder, then (network, optimiser, step, training seconds), resumed from ``last.pt``;
    a run not resumed starts from the weights ``init`` (a warm start: new optimiser, step 0) when given."""
    from geoimplicit.mpi.prior.checkpoint import load_prior_checkpoint

    last = run_dir / "last.pt"
    if (run_dir / "model.pt").exists() and not (resume or overwrite):
        raise OutputExistsError("run folder already holds a model.pt", path=run_dir,
                                hint="pass --resume to continue it, --overwrite to start again, or another -o")
    if resume and (run_dir / "config.json").exists():
        saved = json.loads((run_dir / "config.json").read_text())
        if saved.get("arch") != cfg.arch.to_dict() or saved.get("scene") != cfg.scene:
            raise ConfigError("--resume with another network or scene recipe than the run's", path=run_dir / "config.json",
                              hint="resume with the run's own config, or start a new run folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    torch.manual_seed(cfg.seed)
    net = PriorNet(cfg.arch).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed = 0, 0.0
    if resume and last.exists():
        blob = load_prior_checkpoint(last, map_location=device)
        net.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        step, elapsed = int(blob["step"]), float(blob["elapsed_s"])
        log.info("resuming at step %d (%.0f s trained)", step, elapsed)
    elif init is not None:
        _warm_start(net, init)
    return net, opt, step, elapsed


def _warm_start(net, init) -> None:
    """Load the weights of ``init`` (``default`` or a path), which must have the network's architecture."""
    from geoimplicit.errors import WeightsError
    from geoimplicit.mpi.prior.checkpoint import load_prior_checkpoint, resolve_weights

    blob = load_prior_checkpoint(init)
    if blob.get("arch") != net.arch.to_dict():
        raise WeightsError("the --init weights have another network than the config's", path=resolve_weights(init),
                           hint=f"their arch: {blob.get('arch')}; set it in the config or start without --init")
    net.load_state_dict(blob["model"])
    log.info("warm start from %s (step %s of its run)", resolve_weights(init), blob.get("step"))


def _train_step(net, opt, scene, cfg: PriorTrainConfig, rng, device, lr: float) -> dict:
    for g in opt.param_groups:
        g["lr"] = lr
    use_amp = cfg.amp and device.type == "cuda"
    out = _losses(net, scene, _example(scene, cfg, rng, device), cfg, use_amp, device)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    return {k: float(v.detach()) for k, v in out.items()}


def train_prior(cfg: PriorTrainConfig, run_dir, *, device="auto", resume: bool = False, overwrite: bool = False,
                init=None, progress=None, cancel=None) -> dict:
    """Train the prior as ``cfg`` says into ``run_dir`` (from the weights ``init`` unless resumed); returns
    ``{"model", "run_dir", "steps", "metrics", "train_s"}``."""
    from geoimplicit.device import resolve_device
    from geoimplicit.mpi.prior.checkpoint import save_prior
    from geoimplicit.mpi.prior.data import ScenePool, load_scene
    from geoimplicit.progress import check_cancel

    run_dir = Path(run_dir)
    device = resolve_device(device)
    net, opt, step, elapsed = _start(cfg, run_dir, device, resume, overwrite, init)
    val_seeds = {cfg.val_first_seed + i for i in range(cfg.val_scenes)}
    train_seeds = [cfg.first_seed + i for i in range(cfg.scenes)]
    first = max(1, cfg.workers)  # training starts on these while the validation scenes render
    pool = ScenePool(run_dir / "scenes", cfg.scene, train_seeds[:first] + sorted(val_seeds) + train_seeds[first:],
                     cfg.workers)
    scenes, val_scenes = [], []
    rng = np.random.default_rng([cfg.seed, step])
    t_start = t_ckpt = time.perf_counter()
    total = cfg.time_limit_s or cfg.steps
    with open(run_dir / "metrics.jsonl", "a") as metrics_f:
        try:
            while True:
                check_cancel(cancel)
                for seed, folder in pool.ready_now():
                    (val_scenes if seed in val_seeds else scenes).append(load_scene(folder, device))
                now = elapsed + (time.perf_counter() - t_start)
                if step >= cfg.steps or (cfg.time_limit_s and now >= cfg.time_limit_s):
                    break
                if not scenes:
                    time.sleep(0.2)
                    continue
                lr = _lr(cfg, step, now)
                out = _train_step(net, opt, scenes[int(rng.integers(len(scenes)))], cfg, rng, device, lr)
                step += 1
                if step % cfg.log_every == 0:
                    row = {"step": step, "train_s": round(now, 1), "lr": lr, "scenes": len(scenes),
                           **{k: round(v, 5) for k, v in out.items()}}
                    metrics_f.write(json.dumps(row) + "\n")
                    metrics_f.flush()
                    if progress is not None:
                        progress(int(min(now if cfg.time_limit_s else step, total)), int(total), "train-prior",
                                 f"step {step} loss {out['loss']:.4f} height {out['height_mae']:.2f} "
                                 f"scenes {len(scenes)}")
                if cfg.checkpoint_seconds and time.perf_counter() - t_ckpt >= cfg.checkpoint_seconds:
                    save_prior(run_dir / "last.pt", net, config=cfg.to_dict(), step=step, elapsed_s=now,
                               optimizer=opt, scenes_started=pool.next_index)
                    t_ckpt = time.perf_counter()
        finally:
            pool.close()
        now = elapsed + (time.perf_counter() - t_start)
        metrics = validate_prior(net, val_scenes, cfg, device) if val_scenes else {}
        if metrics:
            metrics_f.write(json.dumps({"step": step, "train_s": round(now, 1), **metrics}) + "\n")
    metrics["scenes"] = len(scenes)
    save_prior(run_dir / "last.pt", net, config=cfg.to_dict(), step=step, elapsed_s=now, optimizer=opt,
               metrics=metrics, scenes_started=pool.next_index)
    model = save_prior(run_dir / "model.pt", net, config=cfg.to_dict(), step=step, elapsed_s=now, metrics=metrics)
    return {"model": model, "run_dir": run_dir, "steps": step, "metrics": metrics, "train_s": now}


def export_weights(model_path, export_path, overwrite: bool = True) -> Path:
    """Copy final weights to ``export_path`` atomically (e.g. ``geoimplicit/weights/mpi_prior_default.pt``)."""
    import shutil

    export_path = Path(export_path)
    export_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = export_path.with_name(f".{export_path.name}.partial")
    shutil.copyfile(model_path, tmp)
    os.replace(tmp, export_path)
    return export_path
