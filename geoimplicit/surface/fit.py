"""Fitting a neural SDF and its appearance to posed views, optionally with trainable cameras (IDR).

Each step renders ``rays_per_step`` random column rays (see :mod:`geoimplicit.surface.box`) of a few train
views through their (corrected) cameras and minimises

- ``rgb``: L1 between rendered and observed colours;
- ``hit`` (IDR's mask loss without masks): column rays that met no surface get ``softplus(alpha f_min) /
  alpha`` at the point of lowest SDF along them;
- ``eikonal``: ``(|grad f| - 1)^2`` at uniform box samples, perturbed surface hits and (Iso-Points) samples
  near the Iso-Points;
- ``box``: ``relu(f)`` on the bottom face, ``relu(-f)`` on the top face (ground below, sky above);
- ``points`` (``--points``): ``|f|`` at the given surface points (+ ``1 - cos`` to their normals);
- the pose corrections' regularisation (``refine_cameras``), their gauge projected out after each step.

Outputs in ``MODEL_DIR``: ``model.pt`` (weights-only loadable), ``config.json``, ``fit.json`` (box, views,
timings, losses), ``iso_points.laz`` (Iso-Points in the CRS with normals) and, with ``refine_cameras``,
``cameras/<id>.txt`` (the corrected train cameras, LEVIR-NVS format, world coordinates, input image scale).
A fit is resumable from ``checkpoint.pt``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoimplicit.device import resolve_device
from geoimplicit.errors import OutputExistsError, WeightsError
from geoimplicit.geometry.pose import CameraOptimizer
from geoimplicit.geometry.pose import camera_optimizer as shared_camera_optimizer
from geoimplicit.geometry.tensors import camera_tensors
from geoimplicit.progress import check_cancel
from geoimplicit.schedules import cosine_decay
from geoimplicit.surface.box import ray_box
from geoimplicit.surface.config import SurfaceConfig
from geoimplicit.surface.data import SurfaceInputs, prepare_inputs
from geoimplicit.surface.isopoints import IsoPoints
from geoimplicit.surface.model import SurfaceModel
from geoimplicit.surface.networks import sdf_and_gradient

log = logging.getLogger(__name__)

__all__ = ["SurfaceFitResult", "fit_surface", "camera_optimizer", "corrected_cameras", "Trainer"]


@dataclass
class SurfaceFitResult:
    model_dir: Path
    steps: int
    seconds: float
    final_loss: float
    outputs: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def camera_optimizer(cfg: SurfaceConfig, cams_local) -> CameraOptimizer:
    """Pose corrections of the train cameras (:func:`geoimplicit.geometry.pose.camera_optimizer`), ``depth`` the
    camera's distance to the box's centre (the local origin); ``pose_warmup`` steps before they learn."""
    depth = np.linalg.norm(np.array([c.center for c in cams_local]), axis=1)
    pose = replace(cfg.pose, warmup=max(cfg.pose.warmup, cfg.pose_warmup))
    return shared_camera_optimizer(pose, cams_local, depth, enabled=cfg.refine_cameras)


def corrected_cameras(poses: CameraOptimizer, inputs: SurfaceInputs, image_scale: float) -> dict:
    """Train cameras with their corrections, in world coordinates at the input images' scale (id -> camera)."""
    m_inv = poses.motion_inverses_numpy()
    out = {}
    for k, vid in enumerate(inputs.train_ids):
        cam = inputs.cameras[k].moved(m_inv[k]).with_origin(-inputs.box.origin)
        out[vid] = cam.scaled(1.0 / image_scale) if image_scale != 1 else cam
    return out


class Trainer:
    """The state of one fit: model, pose corrections, optimiser, Iso-Points, the train rays' pixels."""

    def __init__(self, inputs: SurfaceInputs, cfg: SurfaceConfig, device):
        self.inputs, self.cfg, self.device = inputs, cfg, device
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = SurfaceModel(inputs.box, cfg).to(device)
        self.poses = camera_optimizer(cfg, inputs.cameras).to(device)
        self.base = [camera_tensors(c, None, device=device) for c in inputs.cameras]
        self.images, self.pixels = self._load_views()
        if cfg.init == "plane" and cfg.init_height == "sweep":
            self.model.sdf_net.plane_z.fill_(self.sweep_height())
        groups = [{"params": list(self.model.parameters()), "lr": cfg.lr}]
        if self.poses.enabled:
            groups.append({"params": [self.poses.pose_adjustment], "lr": 0.0})
        self.opt = torch.optim.Adam(groups)
        self.iso = IsoPoints(cfg.iso_count, inputs.box, device) if cfg.iso_points else None
        self.points = None if inputs.points is None else torch.as_tensor(inputs.points, dtype=torch.float32,
                                                                          device=device)
        self.normals = None if inputs.normals is None else torch.as_tensor(inputs.normals, dtype=torch.float32,
                                                                            device=device)
        self.step = 0
        self.time_frac = 0.0
        self.history: list[dict] = []

    def _load_views(self):
        """Images (H*W, 3) per train view and the indices of their column pixels (computed with the input
        cameras: the mask must not move with the corrections)."""
        lo, hi = self.inputs.box.tensors(self.device, torch.float64)
        images, pixels = [], []
        for vid, cam, ct in zip(self.inputs.train_ids, self.inputs.cameras, self.base):
            img = torch.from_numpy(self.inputs.views.read_image(vid)).permute(2, 0, 1)
            if self.cfg.image_scale != 1:
                img = F.interpolate(img[None], size=(cam.height, cam.width), mode="area")[0]
            images.append(img.permute(1, 2, 0).reshape(-1, 3).to(self.device))
            o, d = ct.rays()
            _, _, column = ray_box(o, d, lo, hi)
            pixels.append(torch.nonzero(column).squeeze(1))
        if sum(int(p.numel()) for p in pixels) == 0:
            from geoimplicit.errors import EmptyTileError

            raise EmptyTileError("no train pixel sees the whole height range of the box",
                                 path=self.inputs.views.root, hint="check the AOI, the cameras and crs.txt")
        return images, pixels

    @torch.no_grad()
    def sweep_height(self, levels: int = 64, texels: int = 64) -> float:
        """The tile's typical surface height (local): a plane sweep of the train views over ``levels``
        heights of the box (the MPI fit's), the median of every texel's best height."""
        from geoimplicit.mpi.fit import plane_sweep_mean, sweep_best_plane
        from geoimplicit.mpi.planes import geo_planes

        box = self.inputs.box
        res = 2 * box.scale / texels
        planes = geo_planes((box.lo[0], box.lo[1], box.hi[0], box.hi[1]), res, box.lo[2], box.hi[2], levels,
                            origin=box.origin)
        imgs = [im.reshape(c.height, c.width, 3).permute(2, 0, 1) for im, c in zip(self.images, self.base)]
        _, var, cnt = plane_sweep_mean(planes, self.base, imgs, self.device, return_variance=True)
        best, ok = sweep_best_plane(var, cnt)
        if not bool(ok.any()):
            return float(box.centre[2])
        z = float(np.median(planes.values[best[ok].cpu().numpy()]))
        log.info("plane init at %.2f (plane sweep of %d views)", z + box.origin[2], len(imgs))
        return z

    # ------------------------------------------------------------------------------------------ one step
    def sample_rays(self):
        """Column rays of ``views_per_step`` random train views: local (o, d) float32 (differentiable in the
        pose corrections), target colours, the view index of each ray."""
        n_views = len(self.base)
        usable = [k for k in range(n_views) if self.pixels[k].numel()]
        pick = torch.randperm(len(usable), generator=self.gen)[: self.cfg.views_per_step].tolist()
        per = max(1, self.cfg.rays_per_step // len(pick))
        os_, ds, targets = [], [], []
        for j in pick:
            k = usable[j]
            pix = self.pixels[k][torch.randint(0, self.pixels[k].numel(), (per,), generator=self.gen).to(self.device)]
            cam = self.poses.apply(self.base[k], k)
            w = cam.width
            uv = torch.stack([pix % w, pix // w], 1).to(torch.float64)
            o, d = cam.rays(uv)
            os_.append(o.float())
            ds.append(d.float())
            targets.append(self.images[k][pix])
        return torch.cat(os_), torch.cat(ds), torch.cat(targets)

    def losses(self) -> dict:
        cfg, model, box = self.cfg, self.model, self.inputs.box
        o, d, target = self.sample_rays()
        out = model.render_rays(o, d, train=True, generator=None)
        col = out["column"]
        hit = out["hit"] & col
        err = (out["rgb"] - target).abs().sum(1)
        terms = {"rgb": cfg.rgb_weight * (err * hit).sum() / col.sum().clamp_min(1)}
        if cfg.renderer == "volume":
            terms["rgb"] = cfg.rgb_weight * (err * col).sum() / col.sum().clamp_min(1)
        miss = col & ~out["hit"]
        if out["f_min"] is not None and cfg.hit_weight:
            a = cfg.hit_sharpness
            terms["hit"] = cfg.hit_weight * (F.softplus(a * out["f_min"][miss]).sum() / a) / col.sum().clamp_min(1)
        eik_pts = [box.uniform(cfg.eikonal_samples // 2, self.device, None)]
        if cfg.renderer == "idr" and out["points"].shape[0]:
            near = out["points"].detach()
            near = near + torch.randn_like(near) * cfg.iso_sigma_m
            eik_pts.append(near[: cfg.eikonal_samples // 2])
        if self.iso is not None and len(self.iso) and self.step >= cfg.iso_start:
            n_iso = int(cfg.iso_share * cfg.eikonal_samples)
            eik_pts.append(self.iso.samples(n_iso, cfg.iso_sigma_m))
            if cfg.iso_sdf_weight:
                terms["iso"] = cfg.iso_sdf_weight * model.sdf(self.iso.points).abs().mean()
            if cfg.renderer == "idr":
                self.iso.attribute_loss(out["points"], err[out["hit"]])
        x = torch.cat(eik_pts)
        _, g, _ = sdf_and_gradient(model.sdf_net, x, create_graph=True)
        eik = ((g.norm(dim=1) - 1) ** 2).mean()
        if cfg.renderer == "volume":
            eik = 0.5 * eik + 0.5 * ((out["normals"].norm(dim=1) - 1) ** 2).mean()
        terms["eikonal"] = cfg.eikonal_weight * eik
        if cfg.box_weight:
            terms["box"] = cfg.box_weight * self._box_loss()
        if self.points is not None and cfg.points_weight:
            terms.update(self._points_loss())
        if self.poses.enabled:
            terms["pose_reg"] = self.poses.regularisation().float()
        with torch.no_grad():
            mse = (((out["rgb"] - target) ** 2).mean(1) * col).sum() / col.sum().clamp_min(1)
        self._last_psnr = float(-10 * torch.log10(mse.clamp_min(1e-10)))
        return terms

    def _box_loss(self) -> torch.Tensor:
        box = self.inputs.box
        n = 512
        xy = box.uniform(n, self.device)
        bottom = xy.clone()
        bottom[:, 2] = float(box.lo[2])
        top = xy.clone()
        top[:, 2] = float(box.hi[2])
        return F.relu(self.model.sdf(bottom)).mean() + F.relu(-self.model.sdf(top)).mean()

    def _points_loss(self) -> dict:
        cfg = self.cfg
        idx = torch.randint(0, self.points.shape[0], (cfg.points_per_step,), generator=self.gen).to(self.device)
        p = self.points[idx]
        out = {}
        if self.normals is None:
            out["points"] = cfg.points_weight * self.model.sdf(p).abs().mean()
        else:
            f, g, _ = sdf_and_gradient(self.model.sdf_net, p, create_graph=True)
            cos = F.cosine_similarity(g, self.normals[idx], dim=1)
            out["points"] = cfg.points_weight * f.abs().mean()
            out["normals"] = cfg.normals_weight * (1 - cos).mean()
        if cfg.points_sign_weight:
            up = torch.zeros_like(p)
            up[:, 2] = cfg.points_sign_m * (0.1 + 0.9 * torch.rand(p.shape[0], generator=self.gen)).to(self.device)
            above, below = self.model.sdf(p + up), self.model.sdf(p - 0.5 * up)
            gap = up[:, 2]  # air above a point seen from above: at least half that far from any surface
            out["points_sign"] = cfg.points_sign_weight * (F.relu(0.5 * gap - above).mean()
                                                           + F.relu(below + 0.25 * gap).mean())
        return out

    def train_step(self) -> float:
        cfg = self.cfg
        frac = max(self.step / max(1, cfg.steps), self.time_frac)  # a time budget ends the schedule too
        decay = cosine_decay(frac)
        self.opt.param_groups[0]["lr"] = cfg.lr * decay
        if self.poses.enabled:  # the same decay: Adam's steps on noisy pose gradients would otherwise drift
            self.opt.param_groups[1]["lr"] = self.poses.lr_at(self.step, decay)
        if cfg.encoding_anneal:
            self.model.sdf_net.anneal_encoding(frac / cfg.encoding_anneal)
        if self.iso is not None and self.step >= cfg.iso_start and (self.step - cfg.iso_start) % cfg.iso_every == 0:
            self.iso.update(self.model.sdf_net, cfg.iso_upsample)
        terms = self.losses()
        loss = sum(terms.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.poses.project_gauge_()
        self.step += 1
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return float(loss.detach())

    # ------------------------------------------------------------------------------------------ state
    def state(self) -> dict:
        iso = None if self.iso is None else {"points": self.iso.points, "normals": self.iso.normals}
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict(), "poses": self.poses.state_dict(),
                "iso": iso, "step": self.step, "gen": self.gen.get_state(), "history": self.history}

    def load_state(self, blob: dict) -> None:
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["optim"])
        self.poses.load_state_dict(blob["poses"])
        if self.iso is not None and blob.get("iso") is not None:
            self.iso.points = blob["iso"]["points"].to(self.device)
            self.iso.normals = blob["iso"]["normals"].to(self.device)
            self.iso.loss = torch.zeros(len(self.iso), device=self.device)
        self.step = int(blob["step"])
        self.gen.set_state(blob["gen"])
        self.history = list(blob.get("history", []))


def _save_checkpoint(path: Path, trainer: Trainer) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(trainer.state(), tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, trainer: Trainer) -> None:
    try:
        blob = torch.load(path, map_location=trainer.device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file
        raise WeightsError(f"cannot read the checkpoint ({exc})", path=path,
                           hint="delete it to start the fit again") from None
    trainer.load_state(blob)


def _eta(done: int, total: int, seconds: float) -> str:
    if done <= 0:
        return ""
    left = seconds / done * (total - done)
    return f"eta {int(left // 60)}:{int(left % 60):02d}"


def fit_surface(views_dir, model_dir, config: SurfaceConfig | dict | None = None, *, points=None, aoi=None,
                bounds=None, points_xyz=None, resume: bool = False, overwrite: bool = False, progress=None,
                cancel=None, train_ids=None, on_step=None) -> SurfaceFitResult:
    """Fit a surface to the train views of ``views_dir`` and save it in ``model_dir`` (see the module doc).

    ``points``: LAS/LAZ paths of surface points in the views' CRS (or ``points_xyz``, (N, 3) world points);
    ``aoi``: a polygon file bounding the box (or ``bounds``, left, bottom, right, top in the views' CRS);
    ``on_step(trainer)``: called after every step (benchmarks record curves with it).
    """
    cfg = config if isinstance(config, SurfaceConfig) else SurfaceConfig.from_dict(dict(config or {}))
    cfg.validate()
    model_dir = Path(model_dir)
    ckpt = model_dir / "checkpoint.pt"
    if (model_dir / "model.pt").exists() and not (overwrite or resume):
        raise OutputExistsError("a fitted surface is already here", path=model_dir,
                                hint="pass --overwrite to refit or --resume to continue")
    inputs = prepare_inputs(views_dir, cfg, points=points, aoi=aoi, bounds=bounds, points_xyz=points_xyz,
                            train_ids=train_ids)
    device = resolve_device(cfg.device)
    if resume and (model_dir / "model.pt").exists() and not ckpt.exists():
        log.info("%s is already fitted; nothing to resume", model_dir)
        return SurfaceFitResult(model_dir, 0, 0.0, float("nan"), {"model": model_dir / "model.pt"})
    trainer = Trainer(inputs, cfg, device)
    if resume and ckpt.exists():
        _load_checkpoint(ckpt, trainer)
        log.info("resuming from step %d", trainer.step)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    loss, seconds = _optimise(trainer, ckpt, progress, cancel, on_step)
    return _finish(trainer, model_dir, ckpt, loss, seconds)


def _optimise(trainer: Trainer, ckpt: Path, progress, cancel, on_step) -> tuple[float, float]:
    cfg = trainer.cfg
    t0 = last = time.perf_counter()
    start, loss = trainer.step, float("nan")
    while trainer.step < cfg.steps:
        check_cancel(cancel)
        if cfg.time_budget_s:
            trainer.time_frac = min(1.0, (time.perf_counter() - t0) / cfg.time_budget_s)
        loss = trainer.train_step()
        now = time.perf_counter()
        done = trainer.step
        if on_step is not None:
            on_step(trainer)
        if progress is not None and (done % cfg.progress_every == 0 or done == cfg.steps):
            progress(done, cfg.steps, "fit", f"loss {loss:.4f} psnr {trainer._last_psnr:.1f} "
                     f"{_eta(done - start, cfg.steps - start, now - t0)}")
        if cfg.time_budget_s and now - t0 >= cfg.time_budget_s:
            log.info("time budget reached after %d steps", done)
            break
        due = (done % cfg.checkpoint_every == 0) if cfg.checkpoint_every else (
            bool(cfg.checkpoint_seconds) and now - last >= cfg.checkpoint_seconds)
        if due and done < cfg.steps:
            _save_checkpoint(ckpt, trainer)
            last = now
    return loss, time.perf_counter() - t0


def _finish(trainer: Trainer, model_dir: Path, ckpt: Path, loss: float, seconds: float) -> SurfaceFitResult:
    from geoimplicit.io.cameras import write_cameras_dir
    from geoimplicit.surface.products import export_iso_points

    cfg, inputs = trainer.cfg, trainer.inputs
    trainer.model.sdf_net.anneal_encoding(1.0)  # as it loads: a time budget may end before the bands are open
    meta = {"train_ids": inputs.train_ids, "steps": trainer.step, "fit_seconds": seconds,
            "views": str(inputs.views.root), "points": inputs.point_files}
    outputs = {"model": trainer.model.save(model_dir / "model.pt", meta), "config": model_dir / "config.json"}
    if trainer.poses.enabled:
        cams = corrected_cameras(trainer.poses, inputs, cfg.image_scale)
        outputs["cameras"] = write_cameras_dir(model_dir / "cameras", cams, overwrite=True)
    iso = trainer.iso
    outputs["iso_points"] = export_iso_points(trainer.model, model_dir / "iso_points.laz", count=cfg.iso_count,
                                              seeds=None if iso is None else iso.points, overwrite=True)
    summary = {"box": inputs.box.to_dict(), "steps": trainer.step, "seconds": seconds, "final_loss": loss,
               "last_terms": getattr(trainer, "last_terms", {}), "train_ids": inputs.train_ids}
    (model_dir / "fit.json").write_text(json.dumps(summary, indent=2))
    outputs["summary"] = model_dir / "fit.json"
    if ckpt.exists():
        ckpt.unlink()
    log.info("fitted surface: %d steps in %.1f s", trainer.step, seconds)
    return SurfaceFitResult(model_dir, trainer.step, seconds, loss, outputs, trainer.history)
