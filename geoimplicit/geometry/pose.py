"""Pose corrections for camera refinement: exponential maps and a small module shared by every fit that renders.

Like nerfstudio's camera optimizer: a :class:`CameraOptimizerConfig` (``mode: off | SO3xR3 | SE3``, learning
rate, regularisation, gauge) and a :class:`CameraOptimizer` holding one 6-vector per camera, turned into rigid
world motions ``M_i`` that are applied to the cameras before rays or homographies are made
(``P_i' = P_i @ M_i^-1``, :meth:`CameraTensors.moved`).

Parametrisation: each correction is a small rotation ``omega`` (world axes) about the camera's **pivot** and a
displacement of the pivot ``delta`` (world axes): ``M X = exp(omega) (X - p) + p + delta`` (``SO3xR3``), or the
twist ``(omega, delta)`` about the pivot (``SE3``: ``M = T(p) exp([omega, delta]^) T(-p)``). The pivot
(``pivot``) is ``scene`` (default): the point at the camera's mid depth on its optical axis, i.e. what it looks
at; or ``camera``: its centre. The learned 6-vectors are in **pixels**: ``omega = rotation_scale * p[:3]`` and
``delta = translation_scale * p[3:]`` with ``rotation_scale = 1 / f`` (radians per pixel) and
``translation_scale = depth / f`` (world units per pixel of image motion at the scene's depth), so one learning
rate moves rotations and translations alike, in metres or feet.

Why the scene pivot: a narrow aerial view sees a turn about its centre and a sideways shift of it almost alike
(both slide the footprint; at 114 m a 0.5 degree turn looks like a 1 m shift), so about the centre the two
corrections are strongly coupled and a first-order optimiser trades one for the other: measured, rotations got
worse while centres barely improved. About the scene point the two separate: ``delta`` slides the footprint
(what the images see most), ``omega`` changes the viewing direction with the footprint held (seen through
parallax and perspective), and Adam's per-parameter steps move each on its own scale.

Gauge: photometric losses cannot see a motion of the whole scene with all its cameras (a similarity: 7 degrees
of freedom). ``gauge="mean"`` (default) removes, after each optimiser step, the part of the corrections that is
such a motion to first order (a common rotation ``theta`` about the centroid ``m`` of the pivots, a common
translation ``tau`` and, with ``gauge_scale``, a scaling ``s`` about ``m``: ``omega_i = theta``,
``delta_i = theta x (p_i - m) + tau + s (c_i - m)`` (a scaling moves each camera centre ``c_i`` away from ``m``;
its rotation and its distance to its pivot stay), fitted by least squares, rotations weighted by the RMS spread
``L`` of the centres, and subtracted). The refined cameras keep the input cameras' mean position, orientation
and spread: with independent errors the scene stays where the input cameras put it on average.
``gauge="first"``: camera 0 is held fixed (the others move relative to it; its own error stays in the
solution). ``gauge="none"``: nothing is constrained but the regularisation. ``warmup``: steps before the
corrections learn (the scene first takes a rough shape); :meth:`CameraOptimizer.lr_at` gives the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from geoimplicit.errors import ConfigError
from geoimplicit.geometry.checks import check_shape

__all__ = [
    "POSE_MODES",
    "GAUGES",
    "CameraOptimizerConfig",
    "CameraOptimizer",
    "skew",
    "so3_exp",
    "so3_log",
    "se3_exp",
    "invert_rigid",
    "rigid_motion",
    "PIVOTS",
    "camera_optimizer",
]

POSE_MODES = ("off", "SO3xR3", "SE3")
GAUGES = ("mean", "first", "none")
PIVOTS = ("scene", "camera")


@dataclass
class CameraOptimizerConfig:
    """Settings of the pose corrections (a fit's config nests one)."""

    mode: str = "off"
    """``off`` (cameras as given), ``SO3xR3`` (rotation and centre displacement apart) or ``SE3`` (a twist)."""
    lr: float = 0.05
    """Adam learning rate of the corrections, in pixels of image motion per step."""
    rot_weight: float = 0.0
    """L2 penalty on the rotation corrections (per camera, squared pixels)."""
    trans_weight: float = 0.0
    """L2 penalty on the translation corrections (per camera, squared pixels)."""
    gauge: str = "mean"
    """``mean``: the corrections' common similarity is removed after each step; ``first``: camera 0 is fixed;
    ``none``: only the regularisation holds the scene in place."""
    gauge_scale: bool = True
    """``gauge mean``: also remove a common scaling about the centroid of the cameras."""
    pivot: str = "scene"
    """What the rotations turn about: ``scene`` (the point at mid depth on the optical axis) or ``camera``
    (the centre; strongly coupled with the translations for narrow aerial views)."""
    warmup: int = 0
    """Steps before the corrections learn (learning rate 0 until then)."""

    def validate(self) -> None:
        if self.mode not in POSE_MODES:
            raise ConfigError(f"pose mode must be one of {', '.join(POSE_MODES)}, not {self.mode!r}")
        if self.pivot not in PIVOTS:
            raise ConfigError(f"pose pivot must be one of {', '.join(PIVOTS)}, not {self.pivot!r}")
        if self.warmup < 0:
            raise ConfigError("pose warmup must be >= 0 steps")
        if self.gauge not in GAUGES:
            raise ConfigError(f"pose gauge must be one of {', '.join(GAUGES)}, not {self.gauge!r}")
        if self.lr < 0 or self.rot_weight < 0 or self.trans_weight < 0:
            raise ConfigError("pose lr and regularisation weights must be >= 0")


def skew(w: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices (*, 3, 3) of vectors (*, 3): ``skew(w) @ x = w x x``."""
    check_shape(w, ["*", 3], "w")
    z = torch.zeros_like(w[..., 0])
    rows = [torch.stack([z, -w[..., 2], w[..., 1]], -1), torch.stack([w[..., 2], z, -w[..., 0]], -1),
            torch.stack([-w[..., 1], w[..., 0], z], -1)]
    return torch.stack(rows, -2)


def _sinc_terms(theta2: torch.Tensor):
    """``sin(t)/t``, ``(1 - cos t)/t^2``, ``(t - sin t)/t^3`` of ``t = sqrt(theta2)``, with Taylor series near 0."""
    small = theta2 < 1e-8
    safe = torch.where(small, torch.ones_like(theta2), theta2)
    t = torch.sqrt(safe)
    a = torch.where(small, 1 - theta2 / 6, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(t)) / safe)
    c = torch.where(small, 1.0 / 6 - theta2 / 120, (t - torch.sin(t)) / (safe * t))
    return a, b, c


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (*, 3, 3) of axis-angle vectors (*, 3) (Rodrigues; smooth and differentiable at 0).

    >>> R = so3_exp(torch.tensor([0.0, 0.0, torch.pi / 2], dtype=torch.float64))
    >>> torch.round(R, decimals=12).tolist()
    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    Kx = skew(w)
    a, b, _ = _sinc_terms((w * w).sum(-1))
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a[..., None, None] * Kx + b[..., None, None] * (Kx @ Kx)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors (*, 3) of rotation matrices (*, 3, 3) (angles below pi)."""
    check_shape(R, ["*", 3, 3], "R")
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    v = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = torch.sin(theta)
    scale = torch.where(theta < 1e-6, 0.5 + theta**2 / 12, theta / (2 * torch.where(theta < 1e-6, 1.0, sin)))
    return v * scale[..., None]


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Rigid motions (*, 4, 4) of twists ``xi = (omega, v)`` (*, 6): rotation ``exp(omega)``, translation
    ``V(omega) v`` with ``V = I + b [omega]x + c [omega]x^2`` (differentiable at 0)."""
    check_shape(xi, ["*", 6], "xi")
    w, v = xi[..., :3], xi[..., 3:]
    Kx = skew(w)
    a, b, c = _sinc_terms((w * w).sum(-1))
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    K2 = Kx @ Kx
    R = eye + a[..., None, None] * Kx + b[..., None, None] * K2
    V = eye + b[..., None, None] * Kx + c[..., None, None] * K2
    t = (V @ v[..., None])[..., 0]
    return rigid_motion(R, t)


def rigid_motion(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """4x4 matrices (*, 4, 4) of ``X -> R X + t`` (R (*, 3, 3), t (*, 3))."""
    top = torch.cat([R, t[..., None]], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], -2)


def invert_rigid(M: torch.Tensor) -> torch.Tensor:
    """Inverse (*, 4, 4) of rigid motions (*, 4, 4): ``[R^T | -R^T t]``."""
    check_shape(M, ["*", 4, 4], "M")
    Rt = M[..., :3, :3].transpose(-1, -2)
    return rigid_motion(Rt, -(Rt @ M[..., :3, 3:])[..., 0])


def _per_camera(value, n: int) -> torch.Tensor:
    out = torch.as_tensor(np.asarray(value, dtype=np.float64)).reshape(-1)
    if out.numel() == 1:
        out = out.expand(n)
    check_shape(out, [n], "scale")
    return out.clone()


class CameraOptimizer(nn.Module):
    """Per-camera pose corrections (see the module docstring).

    Args:
        config: the settings; ``mode off`` gives identity motions and no parameters.
        pivots: (N, 3) the cameras' pivots in local coordinates (see :func:`camera_optimizer`).
        rotation_scale: radians per learned unit (scalar or (N,)), typically ``1 / focal_px``.
        translation_scale: world units per learned unit (scalar or (N,)), typically ``depth / focal_px``.
        centres: (N, 3) the camera centres (default: the pivots), for the gauge's scaling.

    >>> opt = CameraOptimizer(CameraOptimizerConfig(mode="SO3xR3"), np.zeros((2, 3)), 0.01, 0.5)
    >>> opt.motions().shape, bool((opt.motions() == torch.eye(4, dtype=torch.float64)).all())
    (torch.Size([2, 4, 4]), True)
    """

    def __init__(self, config: CameraOptimizerConfig, pivots, rotation_scale=1.0, translation_scale=1.0,
                 centres=None):
        super().__init__()
        config.validate()
        self.config = config
        piv = torch.as_tensor(np.asarray(pivots, dtype=np.float64))
        check_shape(piv, ["N", 3], "pivots")
        n = piv.shape[0]
        cen = piv if centres is None else torch.as_tensor(np.asarray(centres, dtype=np.float64))
        check_shape(cen, [n, 3], "centres")
        self.register_buffer("pivots", piv.clone())
        self.register_buffer("centres", cen.clone())
        self.register_buffer("rotation_scale", _per_camera(rotation_scale, n))
        self.register_buffer("translation_scale", _per_camera(translation_scale, n))
        mask = torch.ones(n, 1, dtype=torch.float64)
        if config.gauge == "first":
            mask[0] = 0.0
        self.register_buffer("mask", mask)
        self.pose_adjustment = nn.Parameter(torch.zeros(n, 6, dtype=torch.float64), requires_grad=config.mode != "off")

    @property
    def num_cameras(self) -> int:
        return int(self.pivots.shape[0])

    @property
    def enabled(self) -> bool:
        return self.config.mode != "off"

    def corrections(self, indices=None) -> torch.Tensor:
        """The corrections in natural units (n, 6): ``omega`` (radians), ``delta`` (world units)."""
        idx = slice(None) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        p = self.pose_adjustment[idx] * self.mask[idx]
        return torch.cat([p[:, :3] * self.rotation_scale[idx, None], p[:, 3:] * self.translation_scale[idx, None]], 1)

    def motions(self, indices=None) -> torch.Tensor:
        """Rigid world motions M (n, 4, 4) of the cameras ``indices`` (all when None)."""
        c = self.pivots if indices is None else self.pivots[torch.as_tensor(indices, dtype=torch.long)]
        xi = self.corrections(indices)
        if self.config.mode == "SE3":
            return _about(se3_exp(xi), c)
        if self.config.mode == "SO3xR3":
            R = so3_exp(xi[:, :3])
            return rigid_motion(R, c - (R @ c[..., None])[..., 0] + xi[:, 3:])
        return rigid_motion(torch.eye(3, dtype=xi.dtype).expand(len(c), 3, 3), torch.zeros_like(c))

    def motion_inverses(self, indices=None) -> torch.Tensor:
        """``M^-1`` (n, 4, 4): what :meth:`CameraTensors.moved` and :func:`camera_tensors` take."""
        return invert_rigid(self.motions(indices))

    def apply(self, cam, index: int):
        """The :class:`CameraTensors` ``cam`` (camera ``index``) with its correction applied (differentiable)."""
        if not self.enabled:
            return cam
        return cam.moved(self.motion_inverses([index])[0].to(cam.P.device))

    def regularisation(self) -> torch.Tensor:
        """``rot_weight * mean |p_rot|^2 + trans_weight * mean |p_trans|^2`` (learned units: pixels)."""
        p = self.pose_adjustment * self.mask
        return (self.config.rot_weight * (p[:, :3] ** 2).sum(1).mean()
                + self.config.trans_weight * (p[:, 3:] ** 2).sum(1).mean())

    @torch.no_grad()
    def project_gauge_(self) -> None:
        """``gauge mean``: remove the corrections' common similarity (call after each optimiser step)."""
        if self.config.gauge != "mean" or not self.enabled or self.num_cameras < 2:
            return
        xi = self.corrections()
        fit = _similarity_component(xi, self.pivots, self.centres, self.config.gauge_scale)
        p = self.pose_adjustment
        p[:, :3] -= fit[:, :3] / self.rotation_scale[:, None]
        p[:, 3:] -= fit[:, 3:] / self.translation_scale[:, None]

    def lr_at(self, step: int, decay: float = 1.0) -> float:
        """The corrections' learning rate at ``step``: 0 during ``warmup``, then ``lr * decay`` (pass the
        scene's schedule factor: Adam's steps on noisy pose gradients would otherwise keep them jittering)."""
        return 0.0 if step < self.config.warmup else self.config.lr * decay

    @torch.no_grad()
    def motion_inverses_numpy(self) -> np.ndarray:
        """``M^-1`` (N, 4, 4) as float64 numpy, for writing corrected cameras."""
        return self.motion_inverses().cpu().numpy()


def _about(M: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``T(c) M T(-c)``: the motions M (n, 4, 4) about the points c (n, 3)."""
    R, t = M[:, :3, :3], M[:, :3, 3]
    return rigid_motion(R, t + c - (R @ c[..., None])[..., 0])


def _similarity_component(xi: torch.Tensor, pivots: torch.Tensor, centres: torch.Tensor,
                          with_scale: bool) -> torch.Tensor:
    """Least-squares fit (n, 6) of corrections ``xi`` (n, 6) by a common first-order similarity about the
    centroid ``m`` of ``pivots``: ``omega_i = theta``, ``delta_i = theta x (p_i - m) + tau + s (c_i - m)``.
    Rotations are weighted by the centres' RMS spread so that both parts count in world units."""
    n = xi.shape[0]
    m = pivots.mean(0)
    r = pivots - m
    rc = centres - m
    L = float(torch.sqrt(((centres - centres.mean(0)) ** 2).sum(1).mean())) or 1.0
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    cols = 7 if with_scale else 6
    A = torch.zeros(n, 6, cols, dtype=xi.dtype, device=xi.device)
    A[:, :3, :3] = L * eye
    A[:, 3:, :3] = -skew(r)  # theta x r = -r x theta
    A[:, 3:, 3:6] = eye
    if with_scale:
        A[:, 3:, 6] = rc
    b = torch.cat([L * xi[:, :3], xi[:, 3:]], 1)
    sol = torch.linalg.lstsq(A.reshape(-1, cols), b.reshape(-1, 1)).solution
    fit = (A.reshape(-1, cols) @ sol).reshape(n, 6)
    fit[:, :3] /= L
    return fit


def camera_optimizer(config: CameraOptimizerConfig, cameras, depths=None, enabled: bool = True) -> CameraOptimizer:
    """The pose corrections of pinhole ``cameras`` (local coordinates), learned in pixels: rotation ``1 / f``
    radians and translation ``depth / f`` world units per unit, pivots at ``depth`` on each optical axis
    (``pivot scene``) or at the centres. ``depths`` (N,): default the middle of each camera's depth range.
    ``enabled`` False: mode ``off`` (identity motions, no parameters). Every fit that refines cameras uses it."""
    from dataclasses import asdict

    cfg = CameraOptimizerConfig(**{**asdict(config), "mode": config.mode if enabled else "off"})
    f = np.array([c.K[0, 0] for c in cameras], dtype=np.float64)
    if depths is None:
        depths = [0.5 * (c.depth_min + c.depth_max) for c in cameras]
    depth = np.asarray(depths, dtype=np.float64).reshape(-1)
    centres = np.array([c.center for c in cameras], dtype=np.float64)
    axes = np.array([c.R[2] for c in cameras], dtype=np.float64)
    pivots = centres + depth[:, None] * axes if cfg.pivot == "scene" else centres
    return CameraOptimizer(cfg, pivots, 1.0 / f, depth / f, centres=centres)
