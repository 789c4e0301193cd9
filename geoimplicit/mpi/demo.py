"""A small analytic view set (LEVIR-NVS layout) for tests, benchmarks and the docs.

The scene is a textured ground plane with raised textured roofs, at Lambert-93 coordinates around
(770000, 6277000) so that large eastings are exercised. Views are rendered with the reference renderer from a
two-plane geo-MPI (roofs 8 m above the ground), so images, depths and cameras agree exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from geoimplicit.geometry.cameras import PinholeCamera, look_at
from geoimplicit.geometry.tensors import camera_tensors
from geoimplicit.io.cameras import write_camera
from geoimplicit.mpi.composite import render_mpi
from geoimplicit.mpi.planes import geo_planes

__all__ = ["make_analytic_views", "look_at_camera", "DEMO_ORIGIN"]

DEMO_ORIGIN = np.array([770000.0, 6277000.0, 50.0])


def look_at_camera(center, target, f: float, width: int, height: int, depth_range) -> PinholeCamera:
    """OpenCV camera at ``center`` looking at ``target`` (world, float64), image-up roughly towards north."""
    center = np.asarray(center, float)
    R = look_at(center, target, up=(0.0, 1.0, 0.0))
    ext = np.eye(4)
    ext[:3, :3] = R
    ext[:3, 3] = -R @ center
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])
    return PinholeCamera(ext, K, depth_range[0], depth_range[1], width, height)


def _texture(h, w, rng, kind):
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((3, h, w))
    for c in range(3):
        for _ in range(4):
            fx, fy = rng.uniform(1, 6, 2)
            ph = rng.uniform(0, 2 * np.pi)
            img[c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    img = 0.5 + 0.12 * img
    if kind == "roof":
        img = 0.6 * img + 0.3 * ((np.floor(xx * 24) + np.floor(yy * 24)) % 2)[None]
    return np.clip(img, 0, 1)


def truth_mpi(size_m: float, resolution: float, seed: int):
    """The true two-plane MPI (roofs at +8 m, ground at 0) and its plane set, local coordinates."""
    rng = np.random.default_rng(seed)
    half = size_m / 2
    planes = geo_planes((-half, -half, half, half), resolution, 0.0, 8.0, 2, origin=DEMO_ORIGIN, crs="EPSG:2154")
    h, w = planes.height, planes.width
    mpi = np.zeros((2, 4, h, w), np.float32)
    mpi[0, :3] = _texture(h, w, rng, "roof")
    mpi[1, :3] = _texture(h, w, rng, "ground")
    mpi[1, 3] = 1e3
    roofs = np.zeros((h, w), bool)
    for _ in range(4):
        r0, c0 = rng.integers(h // 8, h - h // 3), rng.integers(w // 8, w - w // 3)
        roofs[r0 : r0 + rng.integers(h // 8, h // 4), c0 : c0 + rng.integers(w // 8, w // 4)] = True
    mpi[0, 3] = np.where(roofs, 1e3, 0.0)
    return torch.from_numpy(mpi), planes


def make_analytic_views(
    out_dir: str | os.PathLike,
    *,
    size: int = 64,
    n_views: int = 12,
    n_test: int = 3,
    seed: int = 0,
    scene_size_m: float = 64.0,
    altitude_m: float = 100.0,
    spread_m: float = 20.0,
    track_len: int = 8,
) -> Path:
    """Write a LEVIR-NVS view set of the analytic scene; returns ``out_dir``."""
    from PIL import Image

    out = Path(out_dir)
    for sub in ("Images", "Cams", "Depths", "Track"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mpi, planes = truth_mpi(scene_size_m * 1.6, scene_size_m * 1.6 / (4 * size), seed)
    f = size / 2 / (scene_size_m / 2 / altitude_m)
    drange = (altitude_m - 20.0, altitude_m * 1.25)
    target = DEMO_ORIGIN

    def cam_at(xy):
        c = DEMO_ORIGIN + np.array([xy[0], xy[1], altitude_m])
        t = target + np.array([xy[0] * 0.3, xy[1] * 0.3, 0.0])
        return look_at_camera(c, t, f, size, size, drange)

    for i in range(n_views):
        cam = cam_at(rng.uniform(-spread_m, spread_m, 2))
        out_r = render_mpi(mpi, planes.A, camera_tensors(cam, planes.origin))
        rgb = (out_r["rgb"].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(rgb).save(out / "Images" / f"{i:03d}.png")
        Image.fromarray(out_r["depth"].numpy().astype(np.float32), mode="F").save(out / "Depths" / f"{i:03d}.tiff")
        write_camera(out / "Cams" / f"{i:03d}.txt", cam)
    for k in range(track_len):
        a = 2 * np.pi * k / track_len
        write_camera(out / "Track" / f"{k:03d}.txt", cam_at(0.8 * spread_m * np.array([np.cos(a), np.sin(a)])))
    ids = list(range(n_views))
    test = ids[-n_test:] if n_test else []
    train = [i for i in ids if i not in test]
    (out / "view_split.txt").write_text(
        f"{len(train)}\n{' '.join(map(str, train))}\n{len(test)}\n{' '.join(map(str, test))}\n"
    )
    (out / "crs.txt").write_text("EPSG:2154\n")
    return out
