"""Per-scene fitting of an MPI to the train views of a LEVIR-NVS view set.

Loss: ``l1 * |I - I*| + ssim * (1 - SSIM) + smooth * edge-aware depth smoothness`` on whole rendered views (a
random train view, or a few, per step). Mixed precision (bfloat16 autocast) on CUDA; progress through the
``progress`` callback; a checkpoint every ``checkpoint_seconds`` (or ``checkpoint_every`` steps) for ``resume``;
``config.json`` (the resolved :class:`FitConfig`) beside ``model.pt``. With ``refine_cameras`` a small pose
correction per train view is learned (:mod:`geoimplicit.geometry.pose`: about the scene point each view looks at,
the corrections' common similarity removed after each step) and the corrected cameras go to
``MODEL_DIR/cameras/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoimplicit.device import resolve_device
from geoimplicit.errors import CameraFileError, ConfigError, OutputExistsError
from geoimplicit.geometry.cameras import PinholeCamera
from geoimplicit.geometry.pose import CameraOptimizer, CameraOptimizerConfig
from geoimplicit.geometry.pose import camera_optimizer as shared_camera_optimizer
from geoimplicit.geometry.tensors import CameraTensors, camera_tensors
from geoimplicit.io.cameras import ViewSet, write_cameras_dir
from geoimplicit.mpi.composite import render_mpi
from geoimplicit.mpi.metrics import edge_aware_smoothness, psnr, ray_entropy, ssim
from geoimplicit.mpi.model import build_model
from geoimplicit.mpi.planes import PlaneSet, fronto_planes, geo_planes
from geoimplicit.mpi.scene import MPIScene
from geoimplicit.mpi.warp import plane_homographies
from geoimplicit.progress import check_cancel
from geoimplicit.schedules import cosine_decay

log = logging.getLogger(__name__)

__all__ = ["FitConfig", "FitResult", "fit_mpi", "scene_geometry", "FIT_PRESETS", "preset_settings"]

FIT_PRESETS = {
    "best": {"layout": "geo", "planes": 96, "extent": "union", "colour_share": 0.8, "steps": 1500},
    "fast": {"layout": "geo", "planes": 32, "extent": "union", "colour_share": 0.8, "steps": 500},
    "cpu": {"layout": "geo", "planes": 24, "extent": "nadir", "colour_share": 0.8, "steps": 300},
}
"""``nvs fit --preset``: ``best`` = the best measured fit (generated city, 384x384, 7 train views, H200: 32.5 dB
held out in 50 s, against 30.1 dB for the fronto defaults of :class:`FitConfig`); ``fast`` = 32 planes, a third of
the steps; ``cpu`` = 24 planes, 300 steps, images at most :data:`CPU_IMAGE_SIDE` pixels (minutes on a CPU)."""
CPU_IMAGE_SIDE = 192


def preset_settings(name: str, device, image_side: int | None = None) -> tuple[str, dict]:
    """(preset name, FitConfig settings) of ``name``: ``auto`` is ``best`` on a CUDA device and ``cpu`` otherwise;
    ``cpu`` scales images of ``image_side`` pixels (their larger side) down to :data:`CPU_IMAGE_SIDE`."""
    if name == "auto":
        name = "best" if resolve_device(device).type == "cuda" else "cpu"
    if name not in FIT_PRESETS:
        raise ConfigError(f"unknown fit preset {name!r}", hint=f"choose one of auto, {', '.join(FIT_PRESETS)}")
    out = dict(FIT_PRESETS[name])
    if name == "cpu" and image_side and image_side > CPU_IMAGE_SIDE:
        out["image_scale"] = CPU_IMAGE_SIDE / image_side
    return name, out


@dataclass
class FitConfig:
    """Settings of one MPI fit (saved resolved as ``config.json``)."""

    planes: int = 32
    """Number of planes."""
    layout: str = "fronto"
    """Plane layout: ``fronto`` (ImMPI, parallel to a reference camera) or ``geo`` (horizontal, map grid)."""
    model: str = "direct"
    """Generator: ``direct`` (per-plane pyramid), ``conv`` (latent + decoder), ``mlp`` (implicit)."""
    steps: int = 1500
    """Optimisation steps."""
    views_per_step: int = 2
    """Train views rendered per step."""
    lr: float | None = None
    """Adam learning rate of the generator (decays to 10 % with a cosine); default 0.03 direct, 0.003 others."""
    l1_weight: float = 1.0
    ssim_weight: float = 0.2
    smooth_weight: float = 0.01
    """Edge-aware smoothness of depth (normalised by the plane depth range)."""
    image_scale: float = 1.0
    """Fit on images resized by this factor (cameras scaled alike)."""
    margin: float = 0.1
    """Fronto layout: texture margin around the reference image, as a fraction of its size."""
    texture_scale: float = 1.0
    """Geo layout: texture pixel = ground sample distance / texture_scale."""
    max_texture: int = 1024
    """Geo layout: largest texture side in pixels."""
    extent: str = "nadir"
    """Geo layout: what the texture covers: ``nadir`` (the most nadir train view's footprint between the lowest
    and highest plane, plus ``margin`` on every side) or ``union`` (the footprints of all train views at both
    heights, no margin), so that views off nadir find texture wherever some train view saw the ground."""
    height_range: tuple[float, float] | None = None
    """Geo layout: (min, max) world heights of the planes; default from the cameras' depth ranges."""
    texture_bounds: tuple[float, float, float, float] | None = None
    """Geo layout: (left, bottom, right, top) world bounds the texture covers besides its ``extent`` (a tiled
    fit passes its tile's bounds, so that its MPI covers the tile even where the nadir view does not see it)."""
    init_from_views: bool = True
    """Start plane colours from the plane-sweep mean of the train views."""
    init_density: bool = True
    """Start plane densities from plane-sweep stereo: along each texel's line of planes, the plane where the
    train views agree best (lowest colour variance, box-filtered) starts nearly opaque, the others nearly empty."""
    empty_alpha: float = 0.02
    """Alpha of every plane of the start away from its surface (plane sweep or prior), so that each still gets
    gradients. The planes above a surface add up: with ``n`` of them it is seen through a haze of opacity
    ``1 - (1 - empty_alpha) ** n`` (0.62 for 48 planes at 0.02)."""
    colour_share: float = 0.0
    """``direct`` generator: 0 = free colour per plane (ImMPI); 1 = one colour per texel shared by all planes
    (a 2.5D prior: views cannot be explained by per-plane colours over wrong geometry); baked in at the end."""
    sweep_window: int = 5
    """Box filter (texels) of the plane-sweep colour variance."""
    plane_placement: str = "adaptive"
    """Geo layout: ``adaptive`` (planes where the surfaces are: a plane sweep of the train views over
    ``2 * planes`` uniform heights gives each texel's best height; the plane heights are ``adaptive_mix`` of the
    quantiles of those heights plus the rest of the uniform spacing, so ground and roof levels get dense planes
    and the whole range stays covered) or ``uniform`` (evenly spaced between the lowest and highest height, the
    only choice of the fronto layout, whose planes are uniform in disparity; tiled fits use it too, so that all
    tiles share their plane heights). Generated city, 512x512, 32 planes: +0.8 dB held out (with ``tv_weight``)."""
    adaptive_mix: float = 0.5
    """``plane_placement adaptive``: weight of the height quantiles (0 = uniform, 1 = quantiles only; < 1 keeps
    the planes strictly apart)."""
    tv_weight: float = 0.2
    """Total variation of each plane's opacity (alpha per plane spacing) across texels: > 0 favours compact,
    piecewise constant surfaces over speckle that only fits the train views."""
    entropy_weight: float = 0.0
    """Entropy of each rendered ray's compositing weights (normalised by log D): > 0 pushes every ray towards
    one nearly opaque plane."""
    prior: str = "none"
    """Start from the across-scene prior (:mod:`geoimplicit.mpi.prior`) instead of the plane sweep: ``none``,
    ``default`` (the shipped weights) or a weights path. Geo layout and ``direct`` generator; with
    ``plane_placement adaptive`` the planes go to the quantiles of the prior's surface heights."""
    prior_colour: str = "views"
    """With ``prior``: where the start's colours come from: ``views`` (the train views' mean colour at the
    prior's surface on the fit's planes, grey where none sees it) or ``network`` (the prior's own colour, untrained
    where no view sees the texel: -2 dB held out at the start on validation scenes 900000-1, 64 px, 3 views)."""
    refine_cameras: bool = False
    """Learn a pose correction per train view (``pose``) with the MPI; the corrected cameras go to
    ``MODEL_DIR/cameras/``."""
    pose: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="SO3xR3", gauge="mean",
                                                                                     rot_weight=0.01))
    """Pose corrections of ``refine_cameras`` (mode, learning rate in pixels per step, regularisation, gauge:
    :mod:`geoimplicit.geometry.pose`). ``rot_weight`` holds the turns about the scene point that the images
    barely see (parallax only) near the given cameras: without it Adam's steps let them drift (CPU, 96 px)."""
    coarse_to_fine: float | None = None
    """Share of the steps whose photometric loss compares renders and views averaged over blocks of 2^k pixels,
    k falling from ``coarse_levels`` to 0 (coarse to fine, as in BARF): pose errors of several pixels first meet
    blurred images, whose gradient still points to the right pose. 0: full resolution throughout; None: 0.5
    with ``refine_cameras``, else 0 (chosen on validation seed 7390, H200: reprojection error after refinement
    1.47 px against 3.59 px without; ``bench/RESULTS.md``)."""
    coarse_levels: int = 4
    """``coarse_to_fine``: the coarsest level (blocks of 2^coarse_levels pixels)."""
    refine_rounds: int = 4
    """With ``refine_cameras``: fits in a row, each from a fresh start (plane sweep or prior) with the cameras
    the one before refined; the last is the result. A fresh MPI no longer holds what it learned to explain the
    wrong poses, so the next round's poses move further (validation seed 7390, H200, reprojection error of the
    refined cameras after 1 / 2 / 4 rounds: 1.46 / 1.32 / 1.32 px at 0.1 deg / 1 m; 8.78 / 6.37 / 2.82 px at
    0.3 deg / 3 m; ``bench/RESULTS.md``). Each round costs a whole fit."""
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0
    """Steps between checkpoints for ``resume``; 0 = one every ``checkpoint_seconds`` of fitting instead."""
    checkpoint_seconds: float = 120.0
    """With ``checkpoint_every`` 0: seconds of fitting between checkpoints (0 = none). A large MPI's checkpoint
    with its optimiser state takes seconds to write (96 planes over 1000 x 1000 texels: 4.6 GB)."""
    progress_every: int = 10

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown MPI fit settings: {', '.join(bad)}", hint=f"known: {', '.join(sorted(known))}")
        d = dict(d)
        if isinstance(d.get("pose"), dict):
            pose_known = set(CameraOptimizerConfig.__dataclass_fields__)
            bad = sorted(set(d["pose"]) - pose_known)
            if bad:
                raise ConfigError(f"unknown pose settings: {', '.join(bad)}", hint=f"known: {', '.join(sorted(pose_known))}")
            d["pose"] = CameraOptimizerConfig(**d["pose"])
        return cls(**d)

    def validate(self) -> None:
        if self.layout not in ("fronto", "geo"):
            raise ConfigError(f"layout must be 'fronto' or 'geo', not {self.layout!r}")
        if self.planes < 2:
            raise ConfigError("need at least 2 planes")
        if self.steps < 0:
            raise ConfigError("steps must be >= 0")
        if self.plane_placement not in ("uniform", "adaptive"):
            raise ConfigError(f"plane_placement must be 'uniform' or 'adaptive', not {self.plane_placement!r}")
        if self.extent not in ("nadir", "union"):
            raise ConfigError(f"extent must be 'nadir' or 'union', not {self.extent!r}")
        if not 0.0 <= self.adaptive_mix <= 1.0:
            raise ConfigError("adaptive_mix must be in [0, 1]")
        if not 0.0 <= (self.coarse_to_fine or 0.0) <= 1.0 or not 0 <= self.coarse_levels <= 6:
            raise ConfigError("coarse_to_fine must be in [0, 1] and coarse_levels in 0..6")
        if self.refine_rounds < 1:
            raise ConfigError(f"refine_rounds must be >= 1, not {self.refine_rounds!r}")
        if not 0.0 < self.empty_alpha < 0.5:
            raise ConfigError(f"empty_alpha must be in (0, 0.5), not {self.empty_alpha!r}")
        if self.prior_colour not in ("views", "network"):
            raise ConfigError(f"prior_colour must be 'views' or 'network', not {self.prior_colour!r}")
        if self.prior != "none" and (self.layout != "geo" or self.model != "direct"):
            raise ConfigError("the MPI prior needs the geo layout and the direct generator",
                              hint="pass --layout geo --model direct, or --prior none")
        self.pose.validate()
        if self.refine_cameras and self.pose.mode == "off":
            raise ConfigError("refine_cameras needs a pose mode (SO3xR3 or SE3), not 'off'")


@dataclass
class FitResult:
    model_dir: Path
    steps: int
    seconds: float
    final_loss: float
    train_psnr: float
    outputs: dict = field(default_factory=dict)


def _look_points(cams: list[PinholeCamera], depth_of) -> np.ndarray:
    pts = []
    for c in cams:
        centre = np.array([[(c.width - 1) / 2, (c.height - 1) / 2]])
        pts.append(c.unproject(centre, np.array([depth_of(c)]))[0])
    return np.array(pts)


def scene_geometry(views: ViewSet, cfg: FitConfig, ids: list[str]) -> PlaneSet:
    """Local origin and plane set for the train views ``ids`` (cameras scaled by ``cfg.image_scale``)."""
    cams = [views.cameras[i].scaled(cfg.image_scale) if cfg.image_scale != 1 else views.cameras[i] for i in ids]
    mid = _look_points(cams, lambda c: 0.5 * (c.depth_min + c.depth_max))
    origin = mid.mean(axis=0)
    crs = None if views.crs is None else (views.crs.to_string() if hasattr(views.crs, "to_string") else str(views.crs))
    if cfg.layout == "fronto":
        centres = np.array([c.center for c in cams])
        ref = int(np.argmin(np.linalg.norm(centres - centres.mean(0), axis=1)))
        return fronto_planes(cams[ref].with_origin(origin), cfg.planes, margin=cfg.margin, origin=origin, crs=crs)
    # heights and extent from the most nadir train camera (oblique views have loose depth ranges)
    axis_z = [abs(c.R[2, 2]) for c in cams]
    nadir = cams[int(np.argmax(axis_z))]
    top_pt = _look_points([nadir], lambda c: c.depth_min)[0] - origin
    bot_pt = _look_points([nadir], lambda c: c.depth_max)[0] - origin
    if cfg.height_range is not None:
        h_lo, h_hi = (float(v) - origin[2] for v in cfg.height_range)
    else:
        h_hi, h_lo = float(top_pt[2]), float(bot_pt[2])
    if not h_hi > h_lo:
        raise CameraFileError(
            "cannot derive a height range from the cameras' depth ranges",
            path=views.root,
            hint="pass height_range (min, max) in world units",
        )
    corners = []
    union = cfg.extent == "union"
    for c in cams if union else [nadir]:
        lc = c.with_origin(origin)
        lo, w1, h1 = (-0.5, c.width - 0.5, c.height - 0.5) if union else (0, c.width - 1, c.height - 1)
        uv = np.array([[lo, lo], [w1, lo], [lo, h1], [w1, h1]], float)
        origins, dirs = lc.rays(uv)
        for hz in (h_lo, h_hi):  # intersect the corner rays with the plane z = hz
            s = (hz - origins[:, 2]) / dirs[:, 2]
            corners.append(origins + s[:, None] * dirs)
    corners = np.concatenate(corners)
    res = 0.5 * (nadir.depth_min + nadir.depth_max) / nadir.K[0, 0] / cfg.texture_scale
    left, right = corners[:, 0].min(), corners[:, 0].max()
    bottom, top = corners[:, 1].min(), corners[:, 1].max()
    m = 0.0 if union else cfg.margin
    mx, my = m * (right - left), m * (top - bottom)
    left, right, bottom, top = left - mx, right + mx, bottom - my, top + my
    if cfg.texture_bounds is not None:
        tl, tb, tr, tt = np.asarray(cfg.texture_bounds, float) - np.r_[origin[:2], origin[:2]]
        left, bottom, right, top = min(left, tl), min(bottom, tb), max(right, tr), max(top, tt)
    side = max(right - left, top - bottom)
    if side / res > cfg.max_texture:
        res = side / cfg.max_texture
    return geo_planes((left, bottom, right, top), res, h_lo, h_hi, cfg.planes, origin=origin, crs=crs)


def _load_images(views: ViewSet, ids, scale: float, device) -> dict[str, torch.Tensor]:
    out = {}
    for vid in ids:
        img = torch.from_numpy(views.read_image(vid)).permute(2, 0, 1)
        if scale != 1:
            cam = views.cameras[vid].scaled(scale)
            img = F.interpolate(img[None], size=(cam.height, cam.width), mode="area")[0]
        out[vid] = img.to(device)
    return out


@torch.no_grad()
def plane_sweep_mean(planes: PlaneSet, cams: list, images: list[torch.Tensor], device,
                     return_variance: bool = False):
    """Mean colour (D, 3, h, w) of the views projected onto each plane (grey where no view sees it); with
    ``return_variance`` also the colour variance across views (D, h, w) and the view count (D, h, w)."""
    D, h, w = planes.num_planes, planes.height, planes.width
    acc = torch.zeros(D, 3, h, w, device=device)
    acc2 = torch.zeros(D, 1, h, w, device=device)
    cnt = torch.zeros(D, 1, h, w, device=device)
    v, u = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    tex = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(h * w, device=device)]).double()
    for rc, img in zip(cams, images):
        warp = plane_homographies(planes.A, rc)
        Hf = torch.linalg.inv(warp.Hinv)  # texture -> target
        q = Hf @ tex  # (D, 3, N)
        x = q[:, 0] / q[:, 2]
        y = q[:, 1] / q[:, 2]
        H_, W_ = img.shape[-2:]
        valid = (q[:, 2] > 0) & (x > -0.5) & (x < W_ - 0.5) & (y > -0.5) & (y < H_ - 0.5)
        grid = torch.stack([(2 * x + 1) / W_ - 1, (2 * y + 1) / H_ - 1], -1).float().reshape(D, h, w, 2)
        s = F.grid_sample(img[None].expand(D, -1, -1, -1), grid, align_corners=False)
        m = valid.reshape(D, 1, h, w).float()
        acc += s * m
        acc2 += (s * s).sum(1, keepdim=True) * m
        cnt += m
    mean = acc / cnt.clamp_min(1)
    out = torch.where(cnt > 0, mean, torch.full_like(mean, 0.5))
    if not return_variance:
        return out
    var = (acc2 / cnt.clamp_min(1) - (mean * mean).sum(1, keepdim=True)).clamp_min(0)[:, 0]
    return out, var, cnt[:, 0]


@torch.no_grad()
def sweep_density(var: torch.Tensor, cnt: torch.Tensor, window: int = 5, opaque: float = 3.0,
                  empty: float = 0.02, spacing_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Plane-sweep stereo as a density start (D, h, w), in units of 1 / plane spacing: along each texel's line
    of planes the plane of least box-filtered colour variance (seen by at least two views) gets ``opaque``
    (alpha 1 - exp(-3) = 0.95), the others ``empty``. Where no plane is seen twice, the last plane wins."""
    D = var.shape[0]
    best, ok = sweep_best_plane(var, cnt, window)
    best = torch.where(ok, best, torch.full_like(best, D - 1))
    dens = torch.full_like(var, empty)
    dens.scatter_(0, best[None], opaque)
    if spacing_ratio is not None:  # uneven planes: the same alpha whatever a plane's own spacing
        dens = dens / spacing_ratio.to(dens)[:, None, None]
    return dens


def sweep_best_plane(var: torch.Tensor, cnt: torch.Tensor, window: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Plane-sweep stereo winner per texel: (index of the plane of least box-filtered colour variance (h, w),
    mask (h, w) of texels where some plane is seen by at least two views)."""
    k = max(1, int(window)) | 1
    v = F.avg_pool2d(var[:, None], k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]
    seen = F.avg_pool2d((cnt >= 2).float()[:, None], k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]
    cost = torch.where(seen > 0.99, v, torch.full_like(v, float("inf")))
    best = cost.argmin(0)
    return best, torch.isfinite(cost.min(0).values)


def opacity_tv(density: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the per-plane opacity ``1 - exp(-density * gap)`` (density (D, h, w), gap
    (D,) world units) between neighbouring texels (anisotropic total variation)."""
    a = 1.0 - torch.exp(-density * gaps[:, None, None])
    return (a[:, 1:] - a[:, :-1]).abs().mean() + (a[:, :, 1:] - a[:, :, :-1]).abs().mean()


def quantile_heights(samples: np.ndarray, h_lo: float, h_hi: float, num: int, mix: float) -> np.ndarray:
    """``num`` plane heights from ``h_hi`` down to ``h_lo``: ``mix`` times the quantiles of the height
    ``samples`` (at probabilities evenly spaced from 1 to 0) plus ``1 - mix`` times uniform heights. The top and
    bottom planes stay at ``h_hi`` / ``h_lo`` (the bottom plane is the backdrop); with ``mix < 1`` the heights
    are strictly decreasing."""
    uniform = np.linspace(h_hi, h_lo, num)
    samples = np.asarray(samples, dtype=np.float64).ravel()
    if samples.size == 0 or num < 3 or mix <= 0:
        return uniform
    q = np.quantile(np.clip(samples, h_lo, h_hi), np.linspace(1.0, 0.0, num))
    out = mix * q + (1.0 - mix) * uniform
    out[0], out[-1] = h_hi, h_lo
    return out


def adaptive_geo_planes(planes: PlaneSet, rcs: list, images: list[torch.Tensor], device, mix: float = 0.5,
                        window: int = 5, sweep_planes: int | None = None, max_side: int = 512) -> PlaneSet:
    """The geo plane set ``planes`` with its heights moved to where the train views' surfaces are: a plane
    sweep over ``sweep_planes`` (default 2 D) uniform heights between its lowest and highest plane (texture at
    most ``max_side`` texels a side) gives each texel's best height, and :func:`quantile_heights` places the
    planes. ``rcs``: render cameras in the plane set's local coordinates."""
    D = planes.num_planes
    h_hi, h_lo = float(planes.values.max()), float(planes.values.min())
    n = int(sweep_planes or 2 * D)
    res = planes.resolution
    right, bottom = planes.left + planes.width * res, planes.top - planes.height * res
    sres = res * max(1.0, max(planes.width, planes.height) / max_side)
    dense = geo_planes((planes.left, bottom, right, planes.top), sres, h_lo, h_hi, n, origin=planes.origin,
                       crs=planes.crs)
    _, var, cnt = plane_sweep_mean(dense, rcs, images, device, return_variance=True)
    best, ok = sweep_best_plane(var, cnt, window)
    est = dense.values[best[ok].cpu().numpy()]
    heights = quantile_heights(est, h_lo, h_hi, D, mix)
    return geo_planes((planes.left, bottom, right, planes.top), res, h_lo, h_hi, origin=planes.origin,
                      crs=planes.crs, heights=heights)


def _render_cameras(cams_local: list[PinholeCamera], device) -> list[CameraTensors]:
    """The train cameras as tensors (local coordinates), before any pose correction."""
    return [camera_tensors(c, None, device=device) for c in cams_local]


def camera_optimizer(cfg: FitConfig, cams_local: list[PinholeCamera]) -> CameraOptimizer:
    """The pose corrections of the train cameras (:func:`geoimplicit.geometry.pose.camera_optimizer`: learned
    in pixels, pivots at the middle of each camera's depth range on its axis)."""
    return shared_camera_optimizer(cfg.pose, cams_local, enabled=cfg.refine_cameras)


def fit_mpi(
    views_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    config: FitConfig | dict | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress=None,
    cancel=None,
    train_ids: list[str] | None = None,
) -> FitResult:
    """Fit an MPI to the train views of ``views_dir`` and save it in ``model_dir``.

    With ``refine_cameras``, ``refine_rounds`` fits in a row: round ``r`` (in ``MODEL_DIR/rounds/round_<r>/``,
    its corrected cameras kept, its MPI dropped) starts from the cameras round ``r - 1`` refined; a resumed fit
    skips the finished rounds.
    """
    cfg = config if isinstance(config, FitConfig) else FitConfig.from_dict(dict(config or {}))
    cfg.validate()
    model_dir = Path(model_dir)
    if (model_dir / "model.pt").exists() and not overwrite and not resume:
        raise OutputExistsError("a fitted MPI is already here", path=model_dir,
                                hint="pass --overwrite to refit or --resume to continue")
    views = ViewSet.load(views_dir)
    ids = list(train_ids or views.train_ids)
    if not ids:
        raise CameraFileError("no train views", path=views.root, hint="list train ids in view_split.txt")
    rounds = cfg.refine_rounds if cfg.refine_cameras else 1
    if resume and (model_dir / "model.pt").exists() and not (model_dir / "checkpoint.pt").exists():
        log.info("%s is already fitted; nothing to resume", model_dir)
        return FitResult(model_dir, 0, 0.0, float("nan"), float("nan"), {"model": model_dir / "model.pt"})
    for r in range(1, rounds):
        views = _camera_round(views, ids, model_dir / "rounds" / f"round_{r}", cfg, resume,
                              _round_progress(progress, r - 1, rounds), cancel, (r - 1, rounds))
    return _fit_once(views, ids, model_dir, cfg, resume=resume, progress=_round_progress(progress, rounds - 1, rounds),
                     cancel=cancel, round_of=(rounds - 1, rounds))


def _camera_round(views: ViewSet, ids: list[str], round_dir: Path, cfg: FitConfig, resume: bool, progress,
                  cancel, round_of: tuple[int, int]) -> ViewSet:
    """One round of camera refinement: ``views`` with its train cameras replaced by the ones the round refined
    (read back when a resumed fit finds the round finished, ``round.json``)."""
    from geoimplicit.io.cameras import read_cameras_dir

    done = round_dir / "round.json"
    if not (resume and done.exists()):
        res = _fit_once(views, ids, round_dir, cfg, resume=resume, progress=progress, cancel=cancel,
                        round_of=round_of)
        (round_dir / "model.pt").unlink()  # only its cameras are needed
        tmp = round_dir / ".round.json.partial"
        tmp.write_text(json.dumps({"steps": res.steps, "seconds": res.seconds, "train_psnr": res.train_psnr}))
        os.replace(tmp, done)
    refined = read_cameras_dir(round_dir / "cameras")
    cams = dict(views.cameras)
    for vid in ids:  # written at the input images' scale
        cams[vid] = refined[vid]
        cams[vid].width, cams[vid].height = views.cameras[vid].width, views.cameras[vid].height
    return replace(views, cameras=cams)


def _round_progress(progress, r: int, rounds: int):
    """``progress`` of round ``r`` of ``rounds`` as a share of the whole fit."""
    if progress is None or rounds == 1:
        return progress
    return lambda done, total, stage, msg="": progress(r * total + done, rounds * total, stage,
                                                       f"round {r + 1}/{rounds}, {msg}")


def _fit_once(views: ViewSet, ids: list[str], model_dir: Path, cfg: FitConfig, *, resume: bool, progress,
              cancel, round_of: tuple[int, int] = (0, 1)) -> FitResult:
    """One fit of an MPI (and of the pose corrections) to the train views ``ids`` of ``views``."""
    ckpt_path = model_dir / "checkpoint.pt"
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    planes = scene_geometry(views, cfg, ids)
    cams = [views.cameras[i].scaled(cfg.image_scale) if cfg.image_scale != 1 else views.cameras[i] for i in ids]
    cams_local = [c.with_origin(planes.origin) for c in cams]
    base_cams = _render_cameras(cams_local, device)
    images = _load_images(views, ids, cfg.image_scale, device)
    img_list = [images[i] for i in ids]
    surface = None
    if cfg.prior != "none":  # the across-scene prior's surface: where the fit starts and the planes go
        from geoimplicit.mpi.prior import predict_surface

        surface = predict_surface(cfg.prior, planes, base_cams, img_list, device)
    if cfg.plane_placement == "adaptive" and planes.layout == "geo":  # deterministic: a resume gets the same planes
        if surface is not None:
            from geoimplicit.mpi.prior.surface import planes_at_surface

            planes = planes_at_surface(planes, surface["height"], cfg.adaptive_mix, surface["seen"])
        else:
            planes = adaptive_geo_planes(planes, base_cams, img_list, device, cfg.adaptive_mix, cfg.sweep_window)
        log.info("adaptive plane heights: %s", np.round(planes.values + planes.origin[2], 2).tolist())
    density_scale = 1.0 / planes.spacing
    model = build_model(cfg.model, planes.num_planes, planes.height, planes.width, density_scale).to(device)
    if cfg.colour_share:
        if not hasattr(model, "bake_colour_share"):
            raise ConfigError(f"colour_share needs the direct generator, not {cfg.model!r}")
        model.colour_share = float(cfg.colour_share)
    poses = camera_optimizer(cfg, cams_local).to(device)
    if cfg.lr is None:
        cfg.lr = 0.03 if cfg.model == "direct" else 0.003
    params = [{"params": list(model.parameters()), "lr": cfg.lr}]
    if poses.enabled:
        params.append({"params": [poses.pose_adjustment], "lr": cfg.pose.lr})
    # one fused kernel for all parameters on CUDA (float32 only: the pose corrections are float64)
    fused = device.type == "cuda" and all(p.dtype == torch.float32 for g in params for p in g["params"])
    opt = torch.optim.Adam(params, fused=fused or None)

    start = 0
    model_dir.mkdir(parents=True, exist_ok=True)
    if resume and ckpt_path.exists():
        start = _load_checkpoint(ckpt_path, model, opt, poses, device)
        log.info("resuming from step %d", start)
    elif surface is not None:
        from geoimplicit.mpi.prior.surface import init_from_surface, views_colour_at_surface

        colour = surface["colour"]
        if cfg.prior_colour == "views":  # grey where no view sees the texel, like the plane-sweep start
            colour = views_colour_at_surface(planes, base_cams, img_list, surface["height"])
        init_from_surface(model, planes, surface["height"], colour, alpha_min=cfg.empty_alpha)
    elif cfg.init_from_views and cfg.model == "direct":
        _init_from_views(model, planes, base_cams, img_list, cfg, device)

    cfg_dict = asdict(cfg)
    (model_dir / "config.json").write_text(json.dumps(cfg_dict, indent=2))
    t0 = time.perf_counter()
    loss_val = _optimise(model, poses, opt, planes, base_cams, img_list, cfg, rng, device, start, ckpt_path,
                         progress, cancel, round_of)
    seconds = time.perf_counter() - t0

    if cfg.colour_share:
        model.bake_colour_share()
    scene = MPIScene(model, planes, (cams[0].width, cams[0].height), cfg_dict)
    train_psnr = _train_psnr(model, poses, planes, base_cams, img_list)
    outputs = {"model": scene.save(model_dir / "model.pt", {"train_ids": ids, "fit_seconds": seconds,
                                                             "steps": cfg.steps}),
               "config": model_dir / "config.json"}
    if poses.enabled:
        outputs["cameras"] = write_cameras_dir(model_dir / "cameras",
                                               corrected_cameras(poses, cams_local, planes.origin, ids, cfg.image_scale),
                                               overwrite=True)
    if ckpt_path.exists():
        ckpt_path.unlink()
    log.info("fitted %s MPI: %d steps in %.1f s, train PSNR %.2f dB", cfg.model, cfg.steps, seconds, train_psnr)
    return FitResult(model_dir, cfg.steps, seconds, loss_val, train_psnr, outputs)


def _init_from_views(model, planes: PlaneSet, base_cams, img_list, cfg: FitConfig, device) -> None:
    """Plane colours from the plane-sweep mean of the train views, densities from plane-sweep stereo."""
    mean, var, cnt = plane_sweep_mean(planes, base_cams, img_list, device, return_variance=True)
    gaps = np.abs(np.diff(planes.values))
    ratio = torch.as_tensor(np.append(gaps, planes.spacing) / planes.spacing, dtype=torch.float32)
    empty = -math.log1p(-cfg.empty_alpha)  # density per plane spacing of that alpha
    dens = sweep_density(var, cnt, cfg.sweep_window, empty=empty, spacing_ratio=ratio) if cfg.init_density else None
    if cfg.colour_share > 0 and dens is not None:
        # start every plane from the colour of its texel's plane-sweep winner
        best = dens.argmax(0)[None, None].expand(1, 3, -1, -1)
        mean = torch.gather(mean, 0, best).expand_as(mean).contiguous()
    model.init_colour(mean)
    if dens is not None:
        model.init_density(dens)


def coarse_level(cfg: FitConfig, frac: float) -> int:
    """Pyramid level of the photometric loss at fraction ``frac`` of the fit (see ``coarse_to_fine``)."""
    share = cfg.coarse_to_fine if cfg.coarse_to_fine is not None else (0.5 if cfg.refine_cameras else 0.0)
    return pyramid_level(frac, share, cfg.coarse_levels)


def pyramid_level(frac: float, share: float, levels: int) -> int:
    """Coarse to fine: ``levels`` at the start, falling to 0 at fraction ``share`` of the steps (0 after)."""
    if frac >= share:
        return 0
    return int(math.ceil(levels * (1.0 - frac / share)))


def block_average(images, level: int):
    """``images`` (each (C, H, W)) averaged over blocks of 2^level pixels (as they are for level 0)."""
    if not level:
        return tuple(images)
    return tuple(F.avg_pool2d(x, 2**level, ceil_mode=True) for x in images)


def _view_loss(out: dict, target: torch.Tensor, cfg: FitConfig, depth_span: float, level: int = 0) -> torch.Tensor:
    rgb, ref = block_average((out["rgb"], target), level)  # the same block average of render and view
    loss = cfg.l1_weight * (rgb - ref).abs().mean()
    if cfg.ssim_weight:
        loss = loss + cfg.ssim_weight * (1 - ssim(rgb, ref))
    if cfg.smooth_weight:
        loss = loss + cfg.smooth_weight * edge_aware_smoothness(out["depth"] / depth_span, target)
    if cfg.entropy_weight:
        loss = loss + cfg.entropy_weight * ray_entropy(out["weights"], out["opacity"])
    return loss


def _optimise(model, poses: CameraOptimizer, opt, planes: PlaneSet, base_cams, img_list, cfg: FitConfig, rng,
              device, start: int, ckpt_path: Path, progress, cancel, round_of=(0, 1)) -> float:
    """The optimisation loop from step ``start``; returns the last loss (``round_of``: this fit's round and the
    number of rounds, for the estimate of the time left)."""
    plane_gaps = torch.as_tensor(np.append(np.abs(np.diff(planes.values)), planes.spacing), dtype=torch.float32,
                                 device=device)
    depth_span = float(np.ptp(planes.values)) or 1.0
    use_amp = cfg.amp and device.type == "cuda"
    last_checkpoint = time.perf_counter()
    loss_val = float("nan")
    n_views = len(base_cams)
    timer = _StepTimer(start, cfg.steps, device, round_of)
    for step in range(start, cfg.steps):
        check_cancel(cancel)
        frac = step / max(1, cfg.steps)
        decay = cosine_decay(frac)
        opt.param_groups[0]["lr"] = cfg.lr * decay
        if poses.enabled:
            opt.param_groups[1]["lr"] = poses.lr_at(step, decay)
        pick = rng.choice(n_views, size=min(cfg.views_per_step, n_views), replace=False)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            mpi = model()
        loss = 0.0
        if cfg.tv_weight:
            loss = cfg.tv_weight * opacity_tv(mpi[:, 3].float(), plane_gaps)
        for k in pick:
            out = render_mpi(mpi.float(), planes.A, poses.apply(base_cams[k], int(k)))
            loss = loss + _view_loss(out, img_list[k], cfg, depth_span, coarse_level(cfg, frac)) / len(pick)
        if poses.enabled:
            loss = loss + poses.regularisation()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        poses.project_gauge_()
        loss_val = float(loss.detach())
        done = step + 1
        timer.step_done(done)
        if progress is not None and (done % cfg.progress_every == 0 or done == cfg.steps):
            progress(done, cfg.steps, "fit", f"loss {loss_val:.4f}")
        if cfg.checkpoint_every:
            due = done % cfg.checkpoint_every == 0
        else:
            due = bool(cfg.checkpoint_seconds) and time.perf_counter() - last_checkpoint >= cfg.checkpoint_seconds
        if due and done < cfg.steps:
            _save_checkpoint(ckpt_path, model, opt, poses, done)
            last_checkpoint = time.perf_counter()
    return loss_val


LONG_FIT_SECONDS = 300.0
"""A fit estimated longer than this (after its first timed steps) is announced with a warning."""


class _StepTimer:
    """Times the steps after the first (which pays for warm-up) and, after ``probe`` of them, logs the fit's
    estimated duration: a warning, with what makes it shorter, when it exceeds :data:`LONG_FIT_SECONDS`."""

    def __init__(self, start: int, steps: int, device, round_of=(0, 1), probe: int = 5):
        self.first, self.steps, self.device, self.probe = start + 1, steps, device, probe
        self.rounds_after = round_of[1] - round_of[0] - 1
        self.warn = round_of[0] == 0  # a long fit is announced once, in its first round
        self.t0 = None

    def step_done(self, done: int) -> None:
        if done == self.first:
            self.t0 = time.perf_counter()
        elif self.t0 is not None and done == self.first + self.probe:
            per_step = (time.perf_counter() - self.t0) / self.probe
            steps_left = self.steps - done + self.rounds_after * self.steps
            left = per_step * steps_left
            msg = "MPI fit: %.2f s a step on %s, about %.1f min for the %d steps left"
            if self.rounds_after:
                msg += f" (this round and {self.rounds_after} more)"
            if left > LONG_FIT_SECONDS and self.warn:
                log.warning(msg + "; fewer --steps or --planes, a smaller --image-scale, --preset cpu/fast"
                            + (" or fewer --refine-rounds" if self.rounds_after else "") + " are faster",
                            per_step, self.device, left / 60, steps_left)
            else:
                log.info(msg, per_step, self.device, left / 60, steps_left)


@torch.no_grad()
def _train_psnr(model, poses: CameraOptimizer, planes: PlaneSet, base_cams, img_list) -> float:
    """Mean PSNR of the final model on the train views, through their corrected cameras."""
    mpi = model().float()
    ps = [psnr(render_mpi(mpi, planes.A, poses.apply(rc, k))["rgb"].clamp(0, 1), img)
          for k, (rc, img) in enumerate(zip(base_cams, img_list))]
    return float(np.mean(ps))


def corrected_cameras(poses: CameraOptimizer, cams_local: list[PinholeCamera], origin, ids: list[str],
                      image_scale: float = 1.0) -> dict[str, PinholeCamera]:
    """The train cameras with their learned corrections, in world coordinates and at the input images' scale
    (id -> camera), ready for :func:`geoimplicit.io.cameras.write_cameras_dir`."""
    m_inv = poses.motion_inverses_numpy()
    out = {}
    for k, vid in enumerate(ids):
        cam = cams_local[k].moved(m_inv[k]).with_origin(-np.asarray(origin))
        out[vid] = cam.scaled(1.0 / image_scale) if image_scale != 1 else cam
    return out


def _save_checkpoint(path: Path, model, opt, poses: CameraOptimizer, step: int) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "poses": poses.state_dict(),
                "step": step}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model, opt, poses: CameraOptimizer, device) -> int:
    blob = torch.load(path, map_location=device, weights_only=True)  # plain data: no pickled code
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optim"])
    if blob.get("poses") is not None:
        poses.load_state_dict(blob["poses"])
    return int(blob["step"])
