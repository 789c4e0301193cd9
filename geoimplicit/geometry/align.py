"""Compare camera sets: a similarity (Umeyama / Procrustes) between camera centres, and pose errors.

A refined solution lives in a gauge (the whole scene with its cameras may be moved, turned or scaled without
changing a single image), so estimated cameras are compared with the truth after aligning their centres with
the best similarity (or rigid motion), the usual protocol of camera-refinement papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoimplicit.geometry.cameras import PinholeCamera
from geoimplicit.geometry.checks import check_shape

__all__ = ["Similarity", "align_points", "transform_camera", "pose_errors", "rotation_angle_deg", "align_cameras",
           "camera_errors", "perturb_camera"]


@dataclass
class Similarity:
    """``X -> scale * R @ X + t`` (float64)."""

    scale: float
    R: np.ndarray
    t: np.ndarray

    def apply(self, xyz: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(xyz, np.float64) @ self.R.T + self.t

    def inverse(self) -> "Similarity":
        Rt = self.R.T
        return Similarity(1.0 / self.scale, Rt, -(Rt @ self.t) / self.scale)


def align_points(src: np.ndarray, dst: np.ndarray, *, with_scale: bool = True) -> Similarity:
    """The similarity (or rigid motion) taking points ``src`` (N, 3) closest to ``dst`` (N, 3) in least squares
    (Umeyama 1991).

    >>> src = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    >>> s = align_points(src, 2 * src + [5.0, 0, 0])
    >>> round(s.scale, 12), np.round(s.t, 12).tolist()
    (2.0, [5.0, 0.0, 0.0])
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    check_shape(src, ["N", 3], "src")
    check_shape(dst, [src.shape[0], 3], "dst")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    var = (a**2).sum() / len(src)
    scale = float(np.trace(np.diag(S) @ D) / var) if with_scale and var > 0 else 1.0
    return Similarity(scale, R, mu_d - scale * R @ mu_s)


def transform_camera(cam: PinholeCamera, sim: Similarity) -> PinholeCamera:
    """``cam`` moved with the world by ``sim`` (same images): ``R' = R sim.R^T``, ``c' = sim(c)``; the depth
    range scales with ``sim.scale``."""
    from dataclasses import replace

    R = cam.R @ sim.R.T
    c = sim.apply(cam.center[None])[0]
    ext = np.eye(4)
    ext[:3, :3], ext[:3, 3] = R, -R @ c
    return replace(cam, extrinsic=ext, depth_min=cam.depth_min * sim.scale, depth_max=cam.depth_max * sim.scale)


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Angle in degrees of the rotation between ``Ra`` and ``Rb`` (3, 3)."""
    M = np.asarray(Ra).T @ np.asarray(Rb)
    sin = np.linalg.norm([M[2, 1] - M[1, 2], M[0, 2] - M[2, 0], M[1, 0] - M[0, 1]]) / 2
    return float(np.degrees(np.arctan2(sin, (np.trace(M) - 1) / 2)))  # precise at small angles too


def pose_errors(estimated: list[PinholeCamera], truth: list[PinholeCamera], *, align: str = "similarity") -> dict:
    """Rotation (degrees) and centre (world units) errors of ``estimated`` against ``truth`` (same order).

    ``align``: ``"similarity"`` or ``"rigid"`` (estimated centres aligned onto the true ones first; needs 3 or
    more cameras), or ``"none"``. Returns ``rotation_deg`` and ``centre`` (lists per camera), their means, and
    the alignment used (``similarity``: a :class:`Similarity`, None without alignment).
    """
    if len(estimated) != len(truth):
        raise ValueError("pose_errors: need as many estimated as true cameras")
    sim = None
    if align != "none":
        src = np.array([c.center for c in estimated])
        dst = np.array([c.center for c in truth])
        sim = align_points(src, dst, with_scale=align == "similarity")
        estimated = [transform_camera(c, sim) for c in estimated]
    rot = [rotation_angle_deg(e.R, t.R) for e, t in zip(estimated, truth)]
    cen = [float(np.linalg.norm(e.center - t.center)) for e, t in zip(estimated, truth)]
    return {"rotation_deg": rot, "centre": cen, "mean_rotation_deg": float(np.mean(rot)),
            "mean_centre": float(np.mean(cen)), "similarity": sim}


def align_cameras(estimated: list[PinholeCamera], truth: list[PinholeCamera], *,
                  with_scale: bool = True) -> Similarity:
    """The similarity (or rigid motion) taking the ``estimated`` cameras closest to ``truth``: their centres and
    the points at mid depth on their axes, aligned in least squares (removes the gauge)."""
    if len(estimated) != len(truth) or len(truth) < 2:
        raise ValueError("align_cameras: need as many estimated as true cameras, at least 2")
    src, dst = [], []
    for e, t in zip(estimated, truth):  # each at its own mid depth: a scaled set has scaled depth ranges
        de, dt = 0.5 * (e.depth_min + e.depth_max), 0.5 * (t.depth_min + t.depth_max)
        src.append([e.center, e.center + de * e.R[2]])
        dst.append([t.center, t.center + dt * t.R[2]])
    return align_points(np.reshape(src, (-1, 3)), np.reshape(dst, (-1, 3)), with_scale=with_scale)


def camera_errors(estimated: list[PinholeCamera], truth: list[PinholeCamera], sim: Similarity | None = None) -> dict:
    """Mean and max rotation (degrees) and centre (world units) errors of ``estimated`` against ``truth`` after
    moving them by ``sim`` (e.g. :func:`align_cameras`; None: as they are), and the mean reprojection error
    (pixels) of the points each true camera sees at mid depth on a 5 x 5 grid of its image (what the images
    show of a pose error: a turn and a shift that slide the footprint alike are told apart only by parallax)."""
    cams = estimated if sim is None else [transform_camera(c, sim) for c in estimated]
    rot = [rotation_angle_deg(e.R, t.R) for e, t in zip(cams, truth)]
    cen = [float(np.linalg.norm(e.center - t.center)) for e, t in zip(cams, truth)]
    rep = [_reprojection_px(e, t) for e, t in zip(cams, truth)]
    return {"mean_rotation_deg": float(np.mean(rot)), "max_rotation_deg": float(np.max(rot)),
            "mean_centre": float(np.mean(cen)), "max_centre": float(np.max(cen)),
            "mean_reprojection_px": float(np.mean(rep))}


def _reprojection_px(est: PinholeCamera, truth: PinholeCamera) -> float:
    u, v = np.meshgrid(np.linspace(0, truth.width - 1, 5), np.linspace(0, truth.height - 1, 5))
    uv = np.c_[u.ravel(), v.ravel()]
    xyz = truth.unproject(uv, np.full(len(uv), 0.5 * (truth.depth_min + truth.depth_max)))
    return float(np.linalg.norm(est.project(xyz)[0] - uv, axis=1).mean())


def perturb_camera(cam: PinholeCamera, rng: np.random.Generator, angle_deg: float, shift: float) -> PinholeCamera:
    """``cam`` turned by exactly ``angle_deg`` about a random axis through its centre and its centre moved by
    exactly ``shift`` (world units) in a random direction (a known error for refinement benchmarks)."""
    from dataclasses import replace

    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.radians(angle_deg)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R_err = np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K
    step = rng.normal(size=3)
    c = cam.center + shift * step / np.linalg.norm(step)
    R = cam.R @ R_err.T
    ext = np.eye(4)
    ext[:3, :3], ext[:3, 3] = R, -R @ c
    return replace(cam, extrinsic=ext)
