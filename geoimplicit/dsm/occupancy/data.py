"""Training patches: (degraded input cloud, ortho images, 3D queries with occupancy labels) from scenes that
have a ground-truth DSM.

Two kinds of scenes:
- generated cities (:func:`geoimplicit.synthetic.city.generate_city`, any number of seeds): the input is a
  LiDAR-like sampling of the scene's surface (points on the top surface, some through tree crowns down to the
  ground) with random density, noise, holes and outliers; two orthos of the same city under two sun
  directions (the stereo pair);
- real dense LiDAR (``data.real``; ign_vienne_rgb and autzen, never ign_montpellier): the input is a thinned,
  noisier, holed copy of the dense cloud, the ortho the colour of the top point of each cell.

The truth DSM (``data.truth``) is either ``surface`` (generated: the scene's own DSM, the top of everything;
real: the cell maximum of the dense cloud) or ``lidar_tin``: the DSM a dense LiDAR survey gives when it is
made the way national mapping agencies make theirs (IGN LiDAR HD: linear interpolation on the triangulation
of all points at each cell centre, ``rasterize`` statistic ``tin``). The two differ in trees, where a
survey's returns reach down through the crown, and at walls, where the TIN ramps between the last roof
point and the first ground point. For generated scenes the TIN is that of a dense simulated survey
(``data.truth_density_m2``); ``lidar_tin_trees`` takes it in tree cells only and the surface elsewhere.

Queries go through each sampled column, concentrated near the truth surface; a query is occupied (label 1)
when it lies below the truth surface. Everything a patch holds is in its local frame (:mod:`.normalize`).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoimplicit.dsm.occupancy.config import TRUTHS, VARIANT_IMAGES, Config
from geoimplicit.dsm.occupancy.normalize import PatchFrame, resample_image_to_frame
from geoimplicit.errors import InputFileNotFoundError

log = logging.getLogger(__name__)


@dataclass
class TrainScene:
    """A scene with a truth DSM (NaN = unknown), its grid, orthos and (real scenes) the dense points."""

    name: str
    truth: np.ndarray
    transform: object
    metres_per_unit: float
    images: list = field(default_factory=list)  # [(array (bands, h, w), affine transform)]
    points: dict | None = None  # real scenes: dense x, y, z (float64)
    dtm: np.ndarray | None = None  # generated scenes: bare earth (for points through tree crowns)
    vegetation: np.ndarray | None = None  # generated scenes: bool mask of tree cells
    clouds: list = field(default_factory=list)  # generated scenes: photogrammetric clouds from the generator
    buildings: np.ndarray | None = None  # bool mask of building cells of the truth grid (evaluation)
    crs: object = None
    surface: np.ndarray | None = None  # generated scenes: the scene's own DSM (points are sampled on it)
    field_images: dict = field(default_factory=dict)  # generated scenes: orthos as they come in the field
    # ({"rgb": [...], "sun": [...], "irc": [...]}, each a list of (array, transform): true and leaning)

    @property
    def bounds(self):
        t = self.transform
        rows, cols = self.truth.shape
        return (t.c, t.f + rows * t.e, t.c + cols * t.a, t.f)

    def truth_at(self, x, y) -> np.ndarray:
        """The truth DSM at (x, y) (cell lookup; NaN outside)."""
        return self._lookup(self.truth, x, y)

    def surface_at(self, x, y) -> np.ndarray:
        """The surface points are sampled on: the scene's own DSM (generated), else the truth."""
        return self._lookup(self.truth if self.surface is None else self.surface, x, y)

    def _lookup(self, raster, x, y) -> np.ndarray:
        inv = ~self.transform
        col = np.floor(inv.a * x + inv.b * y + inv.c).astype(np.int64)
        row = np.floor(inv.d * x + inv.e * y + inv.f).astype(np.int64)
        rows, cols = raster.shape
        ok = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        out = np.full(np.shape(x), np.nan)
        out[ok] = raster[row[ok], col[ok]]
        return out


# ------------------------------------------------------------------------------------------ scene makers
def second_sun_ortho(scene, seed: int) -> np.ndarray:
    """The generated city's ortho rendered again under another sun (same materials): the stereo partner."""
    from geoimplicit.synthetic.ortho import cast_shadows, render_ortho

    rng = np.random.default_rng([seed, 77])
    other = copy.copy(scene)
    other.sun_azimuth_deg = float((scene.sun_azimuth_deg + rng.uniform(70, 150)) % 360)
    other.sun_elevation_deg = float(rng.uniform(30, 65))
    other.shadow = cast_shadows(scene.dsm, scene.resolution, other.sun_azimuth_deg, other.sun_elevation_deg)
    return render_ortho(other, np.random.default_rng([seed, 1]))


def synthetic_scene(seed: int, size_m: float = 128.0, crs: str = "EPSG:2154", resolution_m: float = 0.5,
                    stereo: bool = True, n_clouds: int = 2, truth: str = "surface",
                    truth_density_m2: float = 25.0, second_images: tuple = ("sun",),
                    image_lean: tuple = (0.0, 0.0)) -> TrainScene:
    """A generated city as a training scene (truth DSM, both orthos, DTM and tree mask). ``truth``: the scene's
    own DSM (``surface``), the TIN DSM of a simulated dense survey of ``truth_density_m2`` (``lidar_tin``), or
    that TIN in tree cells and the surface elsewhere (``lidar_tin_trees``).

    ``images`` are the true-ortho RGB and its second-sun partner (what evaluation feeds). With an IRC second
    image or a ``image_lean`` range above 0, ``field_images`` also holds the orthos a user has in the field
    (:func:`field_orthos`)."""
    from geoimplicit.synthetic.city import VEGETATION, generate_city, scene_bounds
    from geoimplicit.io.crs import linear_units, parse_crs

    mpu = linear_units(parse_crs(crs))[1]
    res = resolution_m / mpu
    scene = generate_city(seed, bounds=scene_bounds(size_m / mpu, crs=crs, resolution=res), resolution=res, crs=crs)
    from geoimplicit.synthetic.city import BUILDING
    from geoimplicit.synthetic.points import sample_points

    images = [(scene.ortho, scene.transform)]
    if stereo:
        images.append((second_sun_ortho(scene, seed), scene.transform))
    rng = np.random.default_rng([seed, 99])
    clouds = []
    for k in range(n_clouds):  # the generator's own photogrammetric defects (edge noise, shadow holes, outliers)
        pts = sample_points(scene, seed * 10 + k, density=rng.uniform(4, 20), noise=rng.uniform(0.03, 0.3),
                            holes=rng.uniform(0.0, 0.15), outliers=rng.uniform(0.0, 0.01))
        clouds.append({key: pts[key] for key in ("x", "y", "z")})
    out = TrainScene(f"city{seed}", scene.dsm.astype(np.float64), scene.transform, mpu, images, None,
                     scene.dtm.astype(np.float64), scene.classes == VEGETATION, clouds,
                     scene.classes == BUILDING, scene.crs, surface=scene.dsm.astype(np.float64))
    if (stereo and tuple(second_images) != ("sun",)) or max(image_lean) > 0:
        out.field_images = field_orthos(scene, images, second_images, image_lean, np.random.default_rng([seed, 5]))
    if truth in ("lidar_tin", "lidar_tin_trees"):
        tin = survey_tin_truth(out, np.random.default_rng([seed, 123]), truth_density_m2)  # NaN outside the hull
        out.truth = np.where(out.vegetation & np.isfinite(tin), tin, out.surface) if truth == "lidar_tin_trees" else tin
    elif truth != "surface":
        raise ValueError(f"unknown truth {truth!r}; one of {TRUTHS}")
    return out


def survey_tin_truth(scene: TrainScene, rng, density_m2: float) -> np.ndarray:
    """The TIN DSM (float64, NaN outside the points' hull) of a dense simulated survey of a generated scene, on
    the scene's grid."""
    from geoimplicit.dsm.rasterize import grid_statistic
    from geoimplicit.tiling.grid import GridSpec

    x, y, z = sample_scene_points(scene, scene.bounds, rng, density_m2)
    grid = GridSpec(scene.bounds, abs(scene.transform.a))
    return grid_statistic(x, y, z, grid, "tin")[0].astype(np.float64)


def truth_from_dense(points: dict, metres_per_unit: float, min_cell_m: float = 0.5, per_cell: float = 4.0,
                     truth: str = "surface"):
    """Truth DSM of a dense cloud on a grid with about ``per_cell`` points a cell (at least ``min_cell_m``):
    ``surface`` = cell max, NaN where a cell has none; ``lidar_tin`` = linear on the points' triangulation at
    the cell centres (NaN outside their hull). Plus a colour image of each cell's top point when the cloud has
    colour. Returns (truth, transform, image or None)."""
    from affine import Affine

    x, y, z = points["x"], points["y"], points["z"]
    area_m2 = (x.max() - x.min()) * (y.max() - y.min()) * metres_per_unit**2
    density = len(x) / max(area_m2, 1e-6)
    cell_m = max(min_cell_m, math.sqrt(per_cell / density))
    cell = cell_m / metres_per_unit
    left, top = math.floor(x.min() / cell) * cell, math.ceil(y.max() / cell) * cell
    cols = int(math.ceil((x.max() - left) / cell)) + 1
    rows = int(math.ceil((top - y.min()) / cell)) + 1
    col = np.clip(((x - left) / cell).astype(np.int64), 0, cols - 1)
    row = np.clip(((top - y) / cell).astype(np.int64), 0, rows - 1)
    flat = row * cols + col
    order = np.lexsort((z, flat))  # per cell, highest last
    last = np.r_[flat[order][1:] != flat[order][:-1], True]
    top_idx = order[last]
    if truth == "surface":
        dsm = np.full(rows * cols, np.nan)
        dsm[flat[top_idx]] = z[top_idx]
        dsm = dsm.reshape(rows, cols)
    elif truth in TRUTHS:  # lidar_tin(_trees): a real survey, walls and trees are the survey's too
        from geoimplicit.dsm.rasterize import grid_statistic
        from geoimplicit.tiling.grid import GridSpec

        grid = GridSpec((left, top - rows * cell, left + cols * cell, top), cell)
        dsm = grid_statistic(x, y, z, grid, "tin")[0].astype(np.float64)
    else:
        raise ValueError(f"unknown truth {truth!r}; one of {TRUTHS}")
    image = None
    if all(k in points for k in ("red", "green", "blue")):
        rgb = np.stack([points[k] for k in ("red", "green", "blue")]).astype(np.float64)
        if rgb.max() > 255:
            rgb = rgb / 256.0
        image = np.zeros((3, rows * cols), np.uint8)
        image[:, flat[top_idx]] = np.clip(rgb[:, top_idx], 0, 255).astype(np.uint8)
        image = image.reshape(3, rows, cols)
    return dsm, Affine(cell, 0, left, 0, -cell, top), image


def field_orthos(city, images: list, second_images, image_lean, rng) -> dict:
    """The orthos of a generated city as they come in the field: the RGB, the second-sun RGB and the IRC
    (near infrared, red, green: IGN's BD ORTHO IRC) ortho, each as a true ortho and as a leaning one
    (:func:`~geoimplicit.synthetic.ortho.relief_displacement`, lean drawn from ``image_lean`` in a random
    direction: most orthos are not true orthos, and their roofs are off their footprints by up to a few metres)."""
    from geoimplicit.synthetic.ortho import relief_displacement, render_irc

    tr = city.transform
    true = {"rgb": images[0][0]}
    if len(images) > 1:  # stereo
        true["sun"] = images[1][0]
    if len(images) > 1 and "irc" in second_images:
        # the random stream generate_city renders its ortho with: the same materials, seen in near infrared
        true["irc"] = render_irc(city, np.random.default_rng([city.seed, 1]))
    out = {}
    for kind, img in true.items():
        out[kind] = [(img, tr)]
        if max(image_lean) > 0:
            k, a = rng.uniform(*image_lean), rng.uniform(0, 2 * math.pi)
            lean = (k * math.cos(a), k * math.sin(a))
            out[kind].append((relief_displacement(img, city.dsm, city.dtm, city.resolution, lean), tr))
    return out


def read_dense(path) -> tuple[dict, float]:
    """Read a LAS/LAZ file (x, y, z and colour when present; noise classes 7 and 18 dropped) with laspy;
    returns the points and metres per CRS unit."""
    import laspy

    path = Path(path)
    if not path.exists():
        raise InputFileNotFoundError(
            "training LiDAR file not found", path=path,
            hint="copy ../shared/data/ign_vienne_rgb and ../shared/data/autzen into .traindata/ (docs/occupancy.md)",
        )
    las = laspy.read(str(path))
    keep = ~np.isin(np.asarray(las.classification), [7, 18])
    pts = {"x": np.asarray(las.x, np.float64)[keep], "y": np.asarray(las.y, np.float64)[keep],
           "z": np.asarray(las.z, np.float64)[keep]}
    names = set(las.point_format.dimension_names)
    if {"red", "green", "blue"} <= names and np.asarray(las.red).max() > 0:
        for k in ("red", "green", "blue"):
            pts[k] = np.asarray(las[k])[keep]
    mpu = 1.0
    try:
        from geoimplicit.io.crs import linear_units

        crs = las.header.parse_crs()
        if crs is None and (path.parent / "autzen-srs.wkt").exists():
            import pyproj

            crs = pyproj.CRS.from_wkt((path.parent / "autzen-srs.wkt").read_text())
        if crs is not None:
            mpu = linear_units(crs)[1]
    except Exception as exc:  # a CRS we cannot parse: assume metres, say so
        log.warning("%s: CRS not understood (%s); assuming metres", path, exc)
    return pts, mpu


def real_scene(path, truth: str = "surface") -> TrainScene:
    pts, mpu = read_dense(path)
    truth, transform, image = truth_from_dense(pts, mpu, truth=truth)
    pts = {k: pts[k] for k in ("x", "y", "z")}
    images = [(image, transform)] if image is not None else []
    return TrainScene(Path(path).stem, truth, transform, mpu, images, pts)


# ------------------------------------------------------------------------------------------ degradation
def degrade(x, y, z, rng, *, keep_fraction, noise, hole_fraction, outlier_fraction, bounds, upm=1.0):
    """Thin, add height noise (``noise`` in metres), cut round holes and add gross outliers (CRS units out)."""
    n = len(x)
    keep = rng.random(n) < keep_fraction
    x, y, z = x[keep], y[keep], z[keep] + rng.normal(0, noise * upm, keep.sum())
    left, bottom, right, top = bounds
    if hole_fraction > 0 and len(x):
        area = (right - left) * (top - bottom)
        r = rng.uniform(2.0, 8.0) * upm
        n_holes = max(1, int(round(hole_fraction * area / (math.pi * r * r))))
        cx = rng.uniform(left, right, n_holes)
        cy = rng.uniform(bottom, top, n_holes)
        inside = np.zeros(len(x), bool)
        for a, b in zip(cx, cy):
            inside |= (x - a) ** 2 + (y - b) ** 2 < r * r
        x, y, z = x[~inside], y[~inside], z[~inside]
    n_out = rng.binomial(len(x), outlier_fraction) if len(x) else 0
    if n_out:
        i = rng.integers(0, len(x), n_out)
        x = np.r_[x, x[i]]
        y = np.r_[y, y[i]]
        z = np.r_[z, z[i] + rng.choice([-1, 1], n_out) * rng.uniform(3, 25, n_out) * upm]
    return x, y, z


def real_input(kind: str, x, y, z, rng, d, upm: float = 1.0):
    """A real dense patch made into a ``photogrammetric`` or ``sparse_lidar`` input (``data.real_degradations``)."""
    from geoimplicit.synthetic.points import photogrammetric_points, sparse_lidar_points

    pts = {"x": x, "y": y, "z": z}
    seed = int(rng.integers(2**31))
    if kind == "photogrammetric":
        out = photogrammetric_points(pts, seed, density_m2=rng.uniform(*d.photo_density_m2),
                                     noise_m=rng.uniform(*d.photo_noise_m), hole_fraction=rng.uniform(*d.hole_fraction),
                                     outlier_fraction=rng.uniform(*d.outlier_fraction), units_per_m=upm)
    elif kind == "sparse_lidar":
        out = sparse_lidar_points(pts, seed, density_m2=rng.uniform(*d.sparse_density_m2),
                                  noise_m=rng.uniform(0.02, 0.1), units_per_m=upm)
    else:
        raise ValueError(f"unknown real degradation {kind!r}")
    return out["x"], out["y"], out["z"]


def wall_columns(scene: TrainScene, qx, qy, h, step: float, offset: float) -> np.ndarray:
    """True for query columns whose truth differs by more than ``step`` from a column ``offset`` away (walls)."""
    out = np.zeros(len(qx), bool)
    for dx, dy in ((offset, 0), (-offset, 0), (0, offset), (0, -offset)):
        hn = scene.truth_at(qx + dx, qy + dy)
        out |= np.isfinite(hn) & (np.abs(hn - h) > step)
    return out


def sample_scene_points(scene: TrainScene, bounds, rng, density_m2: float):
    """LiDAR-like points of a generated scene within bounds: top surface, and through tree crowns."""
    left, bottom, right, top = bounds
    upm = 1.0 / scene.metres_per_unit
    n = rng.poisson(density_m2 * (right - left) * (top - bottom) / upm**2)
    x = rng.uniform(left, right, n)
    y = rng.uniform(bottom, top, n)
    z = scene.surface_at(x, y)
    if scene.dtm is not None and scene.vegetation is not None:
        inv = ~scene.transform
        col = np.clip(np.floor(inv.a * x + inv.c).astype(np.int64), 0, scene.truth.shape[1] - 1)
        row = np.clip(np.floor(inv.e * y + inv.f).astype(np.int64), 0, scene.truth.shape[0] - 1)
        veg = scene.vegetation[row, col] & (rng.random(n) < 0.35)
        g = scene.dtm[row, col]
        z = np.where(veg, g + (z - g) * rng.random(n) ** 2, z)
    ok = np.isfinite(z)
    return x[ok], y[ok], z[ok]


# ------------------------------------------------------------------------------------------ patches
class PatchSampler:
    """Random training patches (or fixed ones: the same ``seed`` gives the same patch)."""

    def __init__(self, scenes: list, real_scenes: list, cfg: Config, grid_multiple: int = 4):
        self.scenes, self.real, self.cfg, self.multiple = scenes, real_scenes, cfg, grid_multiple
        self.n_images = VARIANT_IMAGES[cfg.model.variant]

    def sample(self, rng: np.random.Generator, training: bool = True) -> dict:
        d = self.cfg.data
        use_real = self.real and (not self.scenes or rng.random() < d.real_weight)
        scene = self.real[rng.integers(len(self.real))] if use_real else self.scenes[rng.integers(len(self.scenes))]
        upm = 1.0 / scene.metres_per_unit
        size = d.patch_size_m * upm
        L, B, R, T = scene.bounds
        left = rng.uniform(L, max(L, R - size))
        bottom = rng.uniform(B, max(B, T - size))
        bounds = (left, bottom, left + size, bottom + size)
        kw = dict(
            keep_fraction=rng.uniform(*d.keep_fraction), noise=rng.uniform(*d.noise_m),
            hole_fraction=rng.uniform(*d.hole_fraction), outlier_fraction=rng.uniform(*d.outlier_fraction),
            bounds=bounds, upm=upm,
        )
        if scene.points is not None:
            p = scene.points
            m = (p["x"] >= bounds[0]) & (p["x"] < bounds[2]) & (p["y"] >= bounds[1]) & (p["y"] < bounds[3])
            x, y, z = p["x"][m], p["y"][m], p["z"][m]
            kind = d.real_degradations[rng.integers(len(d.real_degradations))]
            if kind != "simple" and len(x) >= 10:
                x, y, z = real_input(kind, x, y, z, rng, d, upm)
                if len(x) < 10:
                    return self.sample(rng, training)
                return self.make_patch(scene, bounds, x, y, z, rng, training)
        elif scene.clouds and rng.random() < 0.5:  # a generator cloud, mildly thinned further
            p = scene.clouds[rng.integers(len(scene.clouds))]
            m = (p["x"] >= bounds[0]) & (p["x"] < bounds[2]) & (p["y"] >= bounds[1]) & (p["y"] < bounds[3])
            x, y, z = p["x"][m], p["y"][m], p["z"][m]
            kw.update(keep_fraction=rng.uniform(0.5, 1.0), noise=rng.uniform(0.0, 0.1))
        else:
            x, y, z = sample_scene_points(scene, bounds, rng, rng.uniform(2.0, 20.0))
        x, y, z = degrade(x, y, z, rng, **kw)
        if len(x) < 10:
            return self.sample(rng, training)
        return self.make_patch(scene, bounds, x, y, z, rng, training)

    def choose_images(self, scene: TrainScene, rng: np.random.Generator) -> list:
        """The orthos of one training patch as (array, transform, is_true_ortho): the scene's own (true orthos:
        generated true orthos, or a real cloud's top-point colours), or (generated scenes with ``field_images``)
        the RGB and a second image of a kind from ``data.second_images``, each true or leaning at random."""
        if not scene.field_images:
            return [(a, t, True) for a, t in scene.images]
        kind = self.cfg.data.second_images[rng.integers(len(self.cfg.data.second_images))]

        def pick(versions):  # versions[0] is the true ortho, any other leans
            i = int(rng.integers(len(versions)))
            return versions[i] + (i == 0,)

        first = pick(scene.field_images["rgb"])
        return [first, pick(scene.field_images[kind])] if kind in scene.field_images else [first]  # mono: one

    def make_patch(self, scene: TrainScene, bounds, x, y, z, rng, training=True) -> dict:
        d, mc = self.cfg.data, self.cfg.model
        upm = 1.0 / scene.metres_per_unit
        frame = PatchFrame.from_bounds(bounds, PatchFrame.reference_height(z), metres_per_unit=scene.metres_per_unit,
                                       cell_m=mc.feature_cell_m, height_scale_m=mc.height_scale_m, multiple=self.multiple)
        Q = d.queries_per_patch
        qx = rng.uniform(bounds[0], bounds[2], 2 * Q)
        qy = rng.uniform(bounds[1], bounds[3], 2 * Q)
        h = scene.truth_at(qx, qy)
        ok = np.flatnonzero(np.isfinite(h))[:Q]
        weight = np.zeros(Q, np.float32)
        weight[: len(ok)] = 1.0
        ok = np.resize(ok, Q) if len(ok) else np.zeros(Q, np.int64)
        qx, qy, h = qx[ok], qy[ok], np.nan_to_num(h[ok])
        zlo, zhi = z.min() - d.column_margin_m * upm, z.max() + d.column_margin_m * upm
        near = rng.random(Q) < d.near_surface_fraction
        u = rng.random(Q)  # three scales: the surface to centimetres, decimetres and metres
        sigma = np.where(u < 0.25, d.near_surface_sigma_m / 20, np.where(u < 0.55, d.near_surface_sigma_m / 5,
                                                                          d.near_surface_sigma_m)) * upm
        centre = h
        if d.neighbour_fraction > 0:  # near the surface of a nearby column: above and below the wall tops
            r = d.neighbour_radius_m * upm
            nb = rng.random(Q) < d.neighbour_fraction
            h_nb = scene.truth_at(qx + rng.uniform(-r, r, Q), qy + rng.uniform(-r, r, Q))
            centre = np.where(nb & np.isfinite(h_nb), h_nb, h)
        qz = np.where(near, centre + rng.normal(0, 1, Q) * sigma, rng.uniform(zlo, zhi, Q))
        label = (qz < h).astype(np.float32)
        if d.wall_weight != 1.0:  # the loss concentrated beside walls, where a cell-off outline costs metres
            wall = wall_columns(scene, qx, qy, h, d.wall_step_m * upm, 0.5 * upm)
            weight = weight * np.where(wall, d.wall_weight, 1.0).astype(np.float32)
        images = np.zeros((self.n_images, 4) + frame.shape, np.float32)
        true_ortho = np.zeros(self.n_images, np.float32)
        chosen = self.choose_images(scene, rng) if training else [(a, t, True) for a, t in scene.images]
        for k in range(min(self.n_images, len(chosen))):
            if training and rng.random() < self.cfg.model.image_dropout:
                continue
            arr, tr, is_true = chosen[k]
            images[k] = resample_image_to_frame(arr, tr, frame)
            true_ortho[k] = float(is_true)
        return {
            "points": frame.points_to_local(x, y, z),
            "queries": frame.points_to_local(qx, qy, qz),
            "labels": label,
            "weights": weight,
            "images": images,
            "true_ortho": true_ortho,
            "shape": frame.shape,
        }


def collate(patches: list) -> dict:
    """Stack patches (same grid shape) into a batch; points are concatenated with a batch index."""
    import torch

    pts = [torch.from_numpy(p["points"]) for p in patches]
    return {
        "points": torch.cat(pts),
        "batch": torch.cat([torch.full((len(t),), i, dtype=torch.int64) for i, t in enumerate(pts)]),
        "n_batch": len(patches),
        "shape": tuple(patches[0]["shape"]),
        "queries": torch.from_numpy(np.stack([p["queries"] for p in patches])),
        "labels": torch.from_numpy(np.stack([p["labels"] for p in patches])),
        "weights": torch.from_numpy(np.stack([p["weights"] for p in patches])),
        "images": torch.from_numpy(np.stack([p["images"] for p in patches])),
        "true_ortho": torch.from_numpy(np.stack([p["true_ortho"] for p in patches])),
    }


def build_scenes(cfg: Config, seeds, progress=None, workers: int = 0) -> list:
    """Generated training (or validation) scenes for ``range(*seeds)``; in parallel with ``workers`` processes."""
    seeds = list(range(*seeds))
    d = cfg.data
    stereo = VARIANT_IMAGES[cfg.model.variant] >= 2
    args = [(s, d.synthetic_size_m, d.synthetic_crs, 0.5, stereo, 2, d.truth, d.truth_density_m2,
             tuple(d.second_images), tuple(d.image_lean)) for s in seeds]
    if workers > 1 and len(seeds) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            return pool.starmap(synthetic_scene, args)
    out = []
    for i, a in enumerate(args):
        out.append(synthetic_scene(*a))
        if progress:
            progress(i + 1, len(args), "scenes", f"city {a[0]}")
    return out
