"""Oblique pinhole views of a synthetic scene, rendered by ray casting its 2.5D height field.

:func:`render_view_set` writes the LEVIR-NVS layout that ImMPI reads::

    views/Images/000.png ...      RGB views
    views/Cams/000.txt ...        world-to-camera extrinsic (real projected CRS), intrinsic, depth range
    views/Depths/000.tiff ...     float32 depth = z_cam (OpenCV axes) of the surface seen by each pixel
    views/Track/000.txt ...       a smooth orbit of novel cameras (no images)
    views/view_split.txt          train count, train ids, test count, test ids
    views/crs.txt                 the CRS of the world coordinates

Rays are cast in float64 about a local origin (the scene centre, its median height), so eastings of 6-7 digits
cost no precision. Colours come from the scene's shaded ortho (roofs, ground, trees: Lambertian, so every view
agrees) and, on facades, from each building's wall colour with windows, shaded by the wall's normal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from geoimplicit.io.cameras import PinholeCamera, write_camera
from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel
from geoimplicit.synthetic.ortho import sun_vector


# --------------------------------------------------------------------------------------------- cameras
def look_at(center, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera rotation (3, 3) of a camera at ``center`` looking at ``target`` (OpenCV axes: x right,
    y down, z forward), image "up" towards ``up`` (north when looking straight down)."""
    f = np.asarray(target, np.float64) - np.asarray(center, np.float64)
    f /= np.linalg.norm(f)
    up = np.asarray(up, np.float64)
    if abs(np.dot(f, up)) > 0.999:
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(f, up)
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    return np.stack([right, down, f])


def make_camera(center, target, *, size: int, fov_deg: float, depth_range=(1.0, 1000.0)) -> PinholeCamera:
    """A square pinhole camera (pixel centres, OpenCV) at world ``center`` looking at ``target``."""
    R = look_at(center, target)
    t = -R @ np.asarray(center, np.float64)
    ext = np.eye(4)
    ext[:3, :3], ext[:3, 3] = R, t
    f = (size / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    c = (size - 1) / 2.0
    K = np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])
    return PinholeCamera(ext, K, depth_range[0], depth_range[1], size, size)


def _orbit_camera(scene, azimuth_deg, elevation_deg, *, size, fov_deg, target, coverage=0.65):
    left, bottom, right, top = scene.bounds
    half = min(right - left, top - bottom) / 2.0
    dist = coverage * half / math.tan(math.radians(fov_deg) / 2.0)
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    # the camera sits on the side the azimuth points to and looks back at the target
    offset = np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)]) * dist
    return make_camera(np.asarray(target) + offset, target, size=size, fov_deg=fov_deg)


VIEW_CONFIGS = ("aerial", "oblique")
"""View configurations: ``aerial`` (default; near-nadir, like aerial/satellite NVS sets) or ``oblique``."""


def _check_config(config: str) -> None:
    if config not in VIEW_CONFIGS:
        raise ValueError(f"unknown view configuration {config!r}; choose one of {', '.join(VIEW_CONFIGS)}")


def view_cameras(scene, *, n_views: int = 20, size: int = 512, fov_deg: float = 40.0, seed: int = 0,
                 config: str = "aerial", max_off_nadir_deg: float = 25.0):
    """``n_views`` cameras over the scene, all looking near the scene centre; the first looks straight down.

    ``config="aerial"`` (default): like aerial / satellite NVS sets (LEVIR-NVS is near-nadir with modest
    baselines): the other views lie on a golden-angle (Vogel) spiral around nadir, off-nadir angles growing as
    ``max_off_nadir_deg * sqrt(i / (n - 1))`` (elevations 65-90 degrees by default), with a small random jitter.
    ``config="oblique"``: rings at 75, 60 and 45 degrees of elevation (facades and deep occlusions that a plane
    stack cannot represent), azimuths spread evenly with a small random jitter.
    """
    _check_config(config)
    rng = np.random.default_rng([seed, 21])
    cx, cy = scene.center
    z0 = float(np.median(scene.dsm))
    half = min(scene.shape) * scene.resolution / 2.0
    cams = [_orbit_camera(scene, 0.0, 90.0, size=size, fov_deg=fov_deg, target=(cx, cy, z0))]
    rest = n_views - 1
    if config == "aerial":
        start = rng.uniform(0, 360)
        golden = 180.0 * (3.0 - math.sqrt(5.0))  # 137.5 degrees
        for i in range(1, n_views):
            off = max_off_nadir_deg * math.sqrt(i / max(1, n_views - 1)) + rng.uniform(-1, 1)
            az = start + golden * i + rng.uniform(-5, 5)
            target = (cx + rng.uniform(-0.03, 0.03) * half, cy + rng.uniform(-0.03, 0.03) * half, z0)
            cams.append(_orbit_camera(scene, az, 90.0 - min(abs(off), 89.0), size=size, fov_deg=fov_deg,
                                      target=target))
        return [_with_depth_range(scene, c) for c in cams[:n_views]]
    rings = [(75.0, 0.2), (60.0, 0.35), (45.0, 0.45)]
    counts = [int(round(rest * w)) for _, w in rings]
    counts[-1] = rest - sum(counts[:-1])
    for (elev, _), count in zip(rings, counts):
        start = rng.uniform(0, 360)
        for i in range(count):
            az = start + 360.0 * i / count + rng.uniform(-6, 6)
            target = (cx + rng.uniform(-0.05, 0.05) * half, cy + rng.uniform(-0.05, 0.05) * half, z0)
            cams.append(_orbit_camera(scene, az, elev + rng.uniform(-4, 4), size=size, fov_deg=fov_deg,
                                      target=target))
    return [_with_depth_range(scene, c) for c in cams[:n_views]]


def track_cameras(scene, *, n: int = 60, size: int = 512, fov_deg: float = 40.0, config: str = "aerial"):
    """A smooth orbit of novel views, one turn around the scene. ``aerial``: inside the train views' cone,
    elevation swinging between 70 and 80 degrees (10-20 degrees off nadir); ``oblique``: between 47 and 63."""
    _check_config(config)
    cx, cy = scene.center
    z0 = float(np.median(scene.dsm))
    mid, swing = (75.0, 5.0) if config == "aerial" else (55.0, 8.0)
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        cams.append(_orbit_camera(scene, math.degrees(a) + 10.0, mid + swing * math.sin(2 * a), size=size,
                                  fov_deg=fov_deg, target=(cx, cy, z0)))
    return [_with_depth_range(scene, c) for c in cams]


def held_out_view_ids(n_views: int, n_test: int, config: str = "aerial") -> list[int]:
    """Indices of the held-out views. ``aerial``: spread over the inner part of the spiral (never the nadir
    view, never the outermost views), so each lies between train views; ``oblique``: every k-th from the end."""
    _check_config(config)
    n_test = max(0, min(int(n_test), n_views - 1))
    if n_test == 0:
        return []
    if config == "aerial":
        hi = max(1.0, 0.8 * (n_views - 1))
        picks = np.round(np.linspace(min(2.0, hi), hi, n_test)).astype(int) if n_test > 1 else [min(2, n_views - 1)]
        out = []
        for p in picks:
            p = int(min(max(p, 1), n_views - 1))
            while p in out and p < n_views - 1:
                p += 1
            if p not in out:
                out.append(p)
        return sorted(out)
    step = max(1, (n_views - 1) // n_test)
    return sorted([i for i in range(n_views - 1, 0, -step)][:n_test])


def _with_depth_range(scene, cam: PinholeCamera) -> PinholeCamera:
    """Set the camera's depth range to bound every ray of its image: the z_cam of the four corner rays where
    they cross the scene's highest and lowest heights (z_cam is linear over the image, so corners bound it)."""
    W, H = cam.width, cam.height
    corners = np.array([[-0.5, -0.5, 1.0], [W - 0.5, -0.5, 1.0], [-0.5, H - 0.5, 1.0], [W - 0.5, H - 0.5, 1.0]])
    d = (cam.R.T @ (np.linalg.inv(cam.K) @ corners.T))[2]  # world dz per unit z_cam
    cz = cam.center[2]
    zmax, zmin = float(scene.dsm.max()), float(scene.dsm.min())
    with np.errstate(divide="ignore"):
        near = np.where(d < 0, (zmax - cz) / d, np.inf)
        far = np.where(d < 0, (zmin - cz) / d, np.inf)
    cam.depth_min = float(max(near.min(), 1e-3) * 0.98)
    cam.depth_max = float(far.max() * 1.02) if np.isfinite(far.max()) else cam.depth_min * 100.0
    return cam


# --------------------------------------------------------------------------------------------- ray casting
def _reflect(f, top):
    """Mirror continuous pixel coordinates into [0, top]: beyond its borders the scene continues as its own
    mirror image (a valid height field, so every view of it stays consistent)."""
    if top <= 0:
        return np.zeros_like(f)
    f = np.mod(f, 2.0 * top)
    return np.where(f > top, 2.0 * top - f, f)


class _HeightField:
    """Bilinear lookups of the DSM (and colours) in local coordinates, mirrored at the borders."""

    def __init__(self, scene, origin):
        self.scene = scene
        self.res = scene.resolution
        left, _, _, top = scene.bounds
        self.x0, self.y0 = left - origin[0], top - origin[1]  # local outer top-left corner
        self.h = scene.dsm - origin[2]
        self.rows, self.cols = scene.shape

    def coords(self, x, y):
        fc = _reflect((x - self.x0) / self.res - 0.5, self.cols - 1.0)
        fr = _reflect((self.y0 - y) / self.res - 0.5, self.rows - 1.0)
        c0 = np.minimum(fc.astype(np.int64), self.cols - 2) if self.cols > 1 else np.zeros_like(fc, np.int64)
        r0 = np.minimum(fr.astype(np.int64), self.rows - 2) if self.rows > 1 else np.zeros_like(fr, np.int64)
        return r0, c0, fr - r0, fc - c0

    def sample(self, arr, x, y):
        r0, c0, wr, wc = self.coords(x, y)
        a = arr[..., r0, c0] * (1 - wc) + arr[..., r0, c0 + 1] * wc
        b = arr[..., r0 + 1, c0] * (1 - wc) + arr[..., r0 + 1, c0 + 1] * wc
        return a * (1 - wr) + b * wr

    def height(self, x, y):
        return self.sample(self.h, x, y)


def cast_rays(scene, cam: PinholeCamera, *, step: Optional[float] = None, refine: int = 20):
    """Intersect every pixel's ray with the height field.

    Returns:
        (depth (H, W) float64 z_cam, 0 where the ray misses; hit points (H, W, 3) world coordinates).
    """
    cx, cy = scene.center
    origin = np.array([cx, cy, float(np.median(scene.dsm))])
    hf = _HeightField(scene, origin)
    W, H = int(cam.width), int(cam.height)
    local = cam.with_origin(origin)
    C = local.center
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=0)
    d = local.R.T @ (np.linalg.inv(local.K) @ pix)  # (3, N), z_cam component 1: t is the depth
    dx, dy, dz = d
    n = dx.size
    depth = np.zeros(n)
    zmax, zmin = float(hf.h.max()) + 1e-6, float(hf.h.min()) - 1e-6
    down = dz < -1e-12
    t_in = np.where(down, (zmax - C[2]) / np.where(down, dz, -1), np.inf)
    t_out = np.where(down, (zmin - C[2]) / np.where(down, dz, -1), np.inf)
    t_in = np.maximum(t_in, 1e-6)
    horiz = np.hypot(dx, dy)
    step = (0.5 * scene.resolution) if step is None else step
    dt = step / np.maximum(horiz, 1e-9)
    dt = np.minimum(dt, (t_out - t_in) / 2.0 + 1e-9)  # near-vertical rays: at least two samples
    idx = np.nonzero(down & (t_out > t_in))[0]
    t_prev = t_in[idx]
    lo = np.empty(n)
    hi = np.empty(n)
    hit = np.zeros(n, bool)
    while idx.size:
        t = np.minimum(t_prev + dt[idx], t_out[idx])
        x, y, z = C[0] + t * dx[idx], C[1] + t * dy[idx], C[2] + t * dz[idx]
        below = hf.height(x, y) >= z
        done = below | (t >= t_out[idx])
        ids = idx[done]
        lo[ids], hi[ids] = t_prev[done], t[done]
        hit[ids] = True
        idx, t_prev = idx[~done], t[~done]
    ids = np.nonzero(hit)[0]
    a, b = lo[ids], hi[ids]
    for _ in range(refine):
        m = 0.5 * (a + b)
        x, y, z = C[0] + m * dx[ids], C[1] + m * dy[ids], C[2] + m * dz[ids]
        below = hf.height(x, y) >= z
        b = np.where(below, m, b)
        a = np.where(below, a, m)
    depth[ids] = b
    pts = np.stack([C[0] + depth * dx, C[1] + depth * dy, C[2] + depth * dz], axis=-1) + origin
    return depth.reshape(H, W), pts.reshape(H, W, 3), hf, origin


def render_view(scene, cam: PinholeCamera, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: (RGB uint8 (H, W, 3), depth float32 (H, W) = z_cam, 0 where nothing is hit).

    ``supersample`` (odd): ``s x s`` rays per pixel, box-filtered, as a real sensor integrates over its pixel
    (point-sampled views alias differently in every view, which no 3D model can reproduce); the depth stays
    that of the pixel-centre ray (the middle sub-ray).
    """
    s = int(supersample)
    if s < 1 or s % 2 == 0:
        raise ValueError(f"supersample must be an odd number >= 1, not {supersample}")
    if s == 1:
        rgb, depth = _render_rays(scene, cam)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8), depth
    H, W = int(cam.height), int(cam.width)
    rgb, depth = _render_rays(scene, cam.scaled(s))
    rgb = rgb.reshape(H, s, W, s, 3).mean(axis=(1, 3))
    depth = depth.reshape(H, s, W, s)[:, s // 2, :, s // 2]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), np.ascontiguousarray(depth)


def _render_rays(scene, cam: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
    """One ray per pixel: (RGB float64 (H, W, 3), depth float32 (H, W))."""
    depth, pts, hf, origin = cast_rays(scene, cam)
    H, W = depth.shape
    ok = depth.ravel() > 0
    x, y, z = (pts.reshape(-1, 3)[ok, i] for i in range(3))
    xl, yl = x - origin[0], y - origin[1]
    rgb = np.zeros((H * W, 3))
    rgb[:] = (170, 190, 215)  # sky, for rays that never come down
    col = hf.sample(scene.ortho.astype(np.float64), xl, yl).T
    # facades: steep bilinear slope between a building pixel and a lower one
    r0, c0, _, _ = hf.coords(xl, yl)
    quad = np.stack([scene.building_id[r0, c0], scene.building_id[r0, c0 + 1],
                     scene.building_id[r0 + 1, c0], scene.building_id[r0 + 1, c0 + 1]])
    bid = quad.max(axis=0)
    e = 1e-3 * scene.resolution
    gx = (hf.height(xl + e, yl) - hf.height(xl - e, yl)) / (2 * e)
    gy = (hf.height(xl, yl + e) - hf.height(xl, yl - e)) / (2 * e)
    gmag = np.hypot(gx, gy)
    steep = gmag > 2.5
    wall = (bid > 0) & steep
    flank = steep & ~wall  # crown edges: colour of the pixel uphill, a little darker
    if flank.any():
        k = scene.resolution / gmag[flank]
        col[flank] = hf.sample(scene.ortho.astype(np.float64), xl[flank] + gx[flank] * k,
                               yl[flank] + gy[flank] * k).T * 0.7
    if wall.any() and scene.buildings:
        bw = bid[wall] - 1
        walls = np.array([b.get("wall_rgb", [210, 200, 185]) for b in scene.buildings], float)[bw]
        base = np.array([b["base"] for b in scene.buildings])[bw]
        nx, ny = -gx[wall] / gmag[wall], -gy[wall] / gmag[wall]  # outward normal (downhill)
        # along-wall coordinate on the building's own axes, so windows line up
        theta = np.array([b["parts"][0]["angle"] for b in scene.buildings])[bw]
        ux, uy = np.cos(theta), np.sin(theta)
        u_coord = (x[wall] - np.array([b["cx"] for b in scene.buildings])[bw]) * ux \
            + (y[wall] - np.array([b["cy"] for b in scene.buildings])[bw]) * uy
        v_coord = -(x[wall] - np.array([b["cx"] for b in scene.buildings])[bw]) * uy \
            + (y[wall] - np.array([b["cy"] for b in scene.buildings])[bw]) * ux
        s_along = np.where(np.abs(nx * ux + ny * uy) > 0.7071, v_coord, u_coord)
        upm = scene.units_per_m
        floor = np.mod((z[wall] - base) / (3.0 * upm), 1.0)
        bay = np.mod(s_along / (2.6 * upm), 1.0)
        window = (floor > 0.35) & (floor < 0.8) & (bay > 0.25) & (bay < 0.75) & (z[wall] - base > 1.0 * upm)
        walls[window] = (62, 72, 88)
        sun = sun_vector(scene.sun_azimuth_deg, scene.sun_elevation_deg)
        lam = np.clip((nx * sun[0] + ny * sun[1]) / max(sun[2], 0.3), 0.0, 1.3)
        col[wall] = walls * (0.45 + 0.55 * lam)[:, None]
    rgb[ok] = col
    return rgb.reshape(H, W, 3), depth.astype(np.float32)


# --------------------------------------------------------------------------------------------- view sets
def render_view_set(
    scene,
    out_dir,
    *,
    seed: int = 0,
    n_views: int = 20,
    size: int = 512,
    n_track: int = 60,
    n_test: Optional[int] = None,
    fov_deg: float = 40.0,
    config: str = "aerial",
    max_off_nadir_deg: float = 25.0,
    supersample: int = 3,
    workers: int = 1,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Path:
    """Render ``n_views`` views of ``scene`` into ``out_dir`` in the LEVIR-NVS layout (see the module doc).

    One view in five (at least one) is held out for testing in ``view_split.txt`` (see :func:`held_out_view_ids`);
    the nadir view is always a train view. ``config``: ``aerial`` (default) or ``oblique`` camera layout, see
    :func:`view_cameras`. ``supersample``: rays per pixel side (see :func:`render_view`); ``workers`` > 1
    renders the views in that many processes (same files).
    """
    _check_config(config)
    from PIL import Image

    out = Path(out_dir)
    for sub in ("Images", "Cams", "Depths", "Track"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cams = view_cameras(scene, n_views=n_views, size=size, fov_deg=fov_deg, seed=seed, config=config,
                        max_off_nadir_deg=max_off_nadir_deg)
    pool = None
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=int(workers))
        futures = [pool.submit(render_view, scene, cam, supersample) for cam in cams]
    for i, cam in enumerate(cams):
        check_cancel(cancel)
        img, depth = futures[i].result() if pool is not None else render_view(scene, cam, supersample)
        Image.fromarray(img).save(out / "Images" / f"{i:03d}.png", optimize=True)
        _write_depth(out / "Depths" / f"{i:03d}.tiff", depth)
        write_camera(out / "Cams" / f"{i:03d}.txt", cam)
        if progress is not None:
            progress(i + 1, len(cams), "views", f"view {i:03d}")
    if pool is not None:
        pool.shutdown()
    for i, cam in enumerate(track_cameras(scene, n=n_track, size=size, fov_deg=fov_deg, config=config)):
        write_camera(out / "Track" / f"{i:03d}.txt", cam)
    n_test = max(1, len(cams) // 5) if n_test is None else n_test
    test = held_out_view_ids(len(cams), n_test, config)
    train = [i for i in range(len(cams)) if i not in test]
    lines = [str(len(train)), " ".join(f"{i:03d}" for i in train), str(len(test)),
             " ".join(f"{i:03d}" for i in sorted(test))]
    (out / "view_split.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    epsg = scene.crs.to_epsg()
    (out / "crs.txt").write_text((f"EPSG:{epsg}" if epsg else scene.crs.to_wkt()) + "\n", encoding="utf-8")
    return out


def _write_depth(path: Path, depth: np.ndarray) -> None:
    """A float32 TIFF (DEFLATE, floating-point predictor), no georeferencing: it is an image."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=depth.shape[1], height=depth.shape[0], count=1,
                           dtype="float32", compress="deflate", predictor=3, tiled=False) as ds:
            ds.write(depth.astype(np.float32), 1)


def perturbed_view_set(views: Path, out: Path, angle_deg: float, shift: float, seed: int) -> Path:
    """A copy of the view set ``views`` in ``out`` whose train cameras are each turned by exactly ``angle_deg``
    (random axis through the centre) and moved by exactly ``shift`` CRS units (random direction); the test
    cameras stay true (a known error for camera-refinement benchmarks; reused when ``out`` is complete)."""
    import shutil

    from geoimplicit.geometry.align import perturb_camera
    from geoimplicit.io.cameras import ViewSet

    out = Path(out)
    if (out / "view_split.txt").exists():
        return out
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(views, tmp)
    vs = ViewSet.load(tmp)
    rng = np.random.default_rng([seed, round(angle_deg * 1000), round(shift * 1000)])
    for vid in vs.train_ids:
        write_camera(tmp / "Cams" / f"{vid}.txt", perturb_camera(vs.cameras[vid], rng, angle_deg, shift))
    tmp.rename(out)
    return out
