"""Synthetic city scenes: terrain, streets, buildings with flat, gabled and hipped roofs, trees.

:func:`generate_city` returns a :class:`CityScene` holding the ground truth on one pixel-is-area grid in a real
projected CRS: the DSM (top surface), the DTM (bare earth), a class raster with LAS codes (2 ground,
5 vegetation, 6 building), a building-id raster, a cast-shadow mask and an RGB ortho-image.

Geometry is computed in float64 about the scene's centre (a local origin), so eastings of 6-7 digits cost no
precision. Heights and lengths follow the CRS's linear unit: in a feet-based CRS a 10 m building is 32.8 ft.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from affine import Affine
from scipy import ndimage

from geoimplicit.errors import GeographicCRSError, InputError
from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel
from geoimplicit.synthetic.terrain import fine_noise, make_terrain

log = logging.getLogger(__name__)

GROUND, VEGETATION, BUILDING = 2, 5, 6
ROOF_TYPES = ("flat", "gabled", "hipped")


@dataclass
class CityScene:
    """Ground truth of a synthetic city on one grid.

    Attributes:
        dsm: (rows, cols) float64 top-surface heights (CRS height units).
        dtm: (rows, cols) float64 bare-earth heights.
        classes: (rows, cols) uint8 LAS codes of the top surface: 2 ground, 5 vegetation, 6 building.
        ortho: (3, rows, cols) uint8 RGB true-ortho with sun shading and cast shadows.
        building_id: (rows, cols) int32, 0 where no building, else ``buildings[i]["id"]``.
        shadow: (rows, cols) bool, True where the sun is hidden by the scene (cast shadow).
        street: (rows, cols) uint8, 0 land, 1 road, 2 sidewalk.
        transform: affine transform of the grid (pixel-is-area, outer corner of pixel (0, 0)).
        crs: the scene's projected CRS (pyproj.CRS).
        resolution: pixel size in CRS units.
        units_per_m: CRS units per metre (1 for metre CRSs, 1/0.3048 for international feet).
        buildings: one dict per building (id, roof, shape, base, eave_height, ridge_height, parts, ...).
        trees: one dict per tree (x, y, radius, height, ground).
        sun_azimuth_deg, sun_elevation_deg: the sun used for shading (azimuth clockwise from north).
        seed: the seed that made the scene.
        params: the generation parameters (for ``scene.json``).
    """

    dsm: np.ndarray
    dtm: np.ndarray
    classes: np.ndarray
    ortho: Optional[np.ndarray]
    building_id: np.ndarray
    shadow: np.ndarray
    street: np.ndarray
    transform: Affine
    crs: Any
    resolution: float
    units_per_m: float
    buildings: list = field(default_factory=list)
    trees: list = field(default_factory=list)
    sun_azimuth_deg: float = 180.0
    sun_elevation_deg: float = 45.0
    seed: int = 0
    params: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.dsm.shape

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the CRS."""
        rows, cols = self.shape
        left, top = self.transform.c, self.transform.f
        return (left, top - rows * self.resolution, left + cols * self.resolution, top)

    @property
    def center(self) -> tuple[float, float]:
        left, bottom, right, top = self.bounds
        return ((left + right) / 2.0, (bottom + top) / 2.0)

    @property
    def grid(self) -> dict:
        """Grid information: transform, crs, shape, resolution, bounds."""
        return {"transform": self.transform, "crs": self.crs, "shape": self.shape,
                "resolution": self.resolution, "bounds": self.bounds}

    def pixel_of(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) integer indices of the pixels that contain world points (x, y); may fall outside."""
        left, _, _, top = self.bounds
        col = np.floor((np.asarray(x, dtype=np.float64) - left) / self.resolution).astype(np.int64)
        row = np.floor((top - np.asarray(y, dtype=np.float64)) / self.resolution).astype(np.int64)
        return row, col

    def xy_of(self, row, col) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates of pixel centres."""
        left, _, _, top = self.bounds
        x = left + (np.asarray(col, dtype=np.float64) + 0.5) * self.resolution
        y = top - (np.asarray(row, dtype=np.float64) + 0.5) * self.resolution
        return x, y


# --------------------------------------------------------------------------------------------- CRS helpers
def _resolve_crs(crs):
    """A pyproj CRS and its metres per unit; geographic CRSs are refused."""
    try:
        from geoimplicit.io.crs import parse_crs  # the IO area's parser when present
    except ImportError:  # pragma: no cover - fallback while io/crs.py is being written
        parse_crs = None
    import pyproj

    if parse_crs is not None:
        crs_obj = parse_crs(crs, source="--crs")
    else:
        try:
            crs_obj = pyproj.CRS.from_user_input(crs)
        except pyproj.exceptions.CRSError as exc:
            raise InputError(f"cannot parse CRS {crs!r}: {exc}", hint="pass e.g. --crs EPSG:2154") from exc
    if not crs_obj.is_projected:
        raise GeographicCRSError(
            f"CRS {crs_obj.name} is geographic (degrees); synthetic scenes need metres or feet",
            hint="pass a projected CRS such as EPSG:2154 or a UTM zone (EPSG:326xx)",
        )
    factor = float(crs_obj.axis_info[0].unit_conversion_factor or 1.0)
    return crs_obj, factor


def default_origin(crs) -> tuple[float, float]:
    """A realistic lower-left corner for a scene in ``crs``: Montpellier for Lambert-93, else the centre of
    the CRS's area of use, rounded to 1000 CRS units."""
    crs_obj, _ = _resolve_crs(crs)
    if crs_obj.to_epsg() == 2154:
        return (770000.0, 6277000.0)
    import pyproj

    area = crs_obj.area_of_use
    if area is None:
        return (500000.0, 5000000.0)
    lon, lat = (area.west + area.east) / 2.0, (area.south + area.north) / 2.0
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs_obj, always_xy=True)
    x, y = tr.transform(lon, lat)
    return (math.floor(x / 1000.0) * 1000.0, math.floor(y / 1000.0) * 1000.0)


def scene_bounds(size: float, *, crs="EPSG:2154", origin=None, resolution: float = 0.5):
    """Bounds (left, bottom, right, top) of a square scene of ``size`` CRS units whose lower-left corner is
    ``origin`` (default :func:`default_origin`), snapped to ``resolution``."""
    if origin is None:
        origin = default_origin(crs)
    left = math.floor(origin[0] / resolution) * resolution
    bottom = math.floor(origin[1] / resolution) * resolution
    n = int(round(size / resolution))
    return (left, bottom, left + n * resolution, bottom + n * resolution)


# --------------------------------------------------------------------------------------------- geometry
def _window(cx, cy, radius, x0, y0, res, shape):
    """Row/col slices of the grid covering a disc of ``radius`` around local (cx, cy); None if outside.

    Local coordinates: x0, y0 = local coordinates of the outer top-left corner.
    """
    rows, cols = shape
    c0 = int(math.floor((cx - radius - x0) / res))
    c1 = int(math.ceil((cx + radius - x0) / res)) + 1
    r0 = int(math.floor((y0 - (cy + radius)) / res))
    r1 = int(math.ceil((y0 - (cy - radius)) / res)) + 1
    c0, c1, r0, r1 = max(c0, 0), min(c1, cols), max(r0, 0), min(r1, rows)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _centres(win, x0, y0, res):
    rs, cs = win
    x = x0 + (np.arange(cs.start, cs.stop) + 0.5) * res
    y = y0 - (np.arange(rs.start, rs.stop) + 0.5) * res
    return x[None, :], y[:, None]


def _local_uv(x, y, part):
    dx, dy = x - part["cx"], y - part["cy"]
    c, s = math.cos(part["angle"]), math.sin(part["angle"])
    return dx * c + dy * s, -dx * s + dy * c


def _roof_rel(u, v, part, roof, slope):
    """Height of the roof above the eave at local (u, v) of one rectangular part."""
    a, b = part["a"], part["b"]
    if roof == "flat":
        return np.zeros(np.broadcast(u, v).shape)
    if roof == "gabled":
        return np.maximum(b - np.abs(v), 0.0) * slope
    # hipped: four slopes, a ridge of length 2(a-b) along the long axis (a pyramid when square)
    return np.maximum(np.minimum(b - np.abs(v), a - np.abs(u)), 0.0) * slope


def _inside(u, v, part, grow=0.0):
    return (np.abs(u) <= part["a"] + grow) & (np.abs(v) <= part["b"] + grow)


# --------------------------------------------------------------------------------------------- the city
def generate_city(
    seed: int,
    *,
    bounds,
    resolution: float = 0.5,
    crs="EPSG:2154",
    ground_height: Optional[float] = None,
    building_density: Optional[float] = None,
    tree_density: Optional[float] = None,
    roof_mix: Optional[tuple[float, float, float]] = None,
    sun_azimuth_deg: Optional[float] = None,
    sun_elevation_deg: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> CityScene:
    """Generate a deterministic synthetic city.

    Args:
        seed: random seed; the same seed and arguments give the same scene, bit for bit.
        bounds: (left, bottom, right, top) in ``crs``; snapped outward to ``resolution``.
        resolution: pixel size in CRS units.
        crs: a projected CRS (anything :func:`geoimplicit.io.crs.parse_crs` takes).
        ground_height: mean terrain height in CRS height units (default: random 20-150 m).
        building_density: fraction of the area covered by building footprints (default: random 0.15-0.40).
        tree_density: trees per hectare (default: random 10-60).
        roof_mix: probabilities of (flat, gabled, hipped) roofs (default: random per scene).
        sun_azimuth_deg, sun_elevation_deg: sun direction (default: random, 120-240 deg, 30-65 deg).
        progress, cancel: callbacks (see :mod:`geoimplicit.progress`).

    Returns:
        a :class:`CityScene` with its ortho rendered.
    """
    from geoimplicit.synthetic.ortho import cast_shadows, render_ortho

    crs_obj, m_per_unit = _resolve_crs(crs)
    upm = 1.0 / m_per_unit  # CRS units per metre
    res = float(resolution)
    if res <= 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    left, bottom, right, top = (float(b) for b in bounds)
    left, bottom = math.floor(left / res) * res, math.floor(bottom / res) * res
    cols, rows = int(math.ceil((right - left) / res - 1e-9)), int(math.ceil((top - bottom) / res - 1e-9))
    top = bottom + rows * res
    if rows < 8 or cols < 8:
        raise InputError(f"scene of {rows}x{cols} pixels is too small", hint="pass a larger --size")
    shape = (rows, cols)
    rng = np.random.default_rng(seed)
    progress = progress or (lambda *a, **k: None)

    if ground_height is None:
        ground_height = rng.uniform(20.0, 150.0) * upm
    if building_density is None:
        building_density = rng.uniform(0.15, 0.40)
    if tree_density is None:
        tree_density = rng.uniform(10.0, 60.0)
    if roof_mix is None:
        roof_mix = rng.dirichlet((2.0, 2.0, 1.5))
    roof_mix = np.asarray(roof_mix, dtype=np.float64)
    roof_mix = roof_mix / roof_mix.sum()
    if sun_azimuth_deg is None:
        sun_azimuth_deg = rng.uniform(120.0, 240.0)
    if sun_elevation_deg is None:
        sun_elevation_deg = rng.uniform(30.0, 65.0)

    # local frame: origin at the scene centre; (x0, y0) = local coordinates of the outer top-left corner
    half_w, half_h = cols * res / 2.0, rows * res / 2.0
    x0, y0 = -half_w, half_h
    xs = x0 + (np.arange(cols) + 0.5) * res
    ys = y0 - (np.arange(rows) + 0.5) * res

    progress(0, 4, "scene", "terrain")
    dtm = make_terrain(rng, shape, res, ground_height=ground_height, units_per_m=upm)

    # ---- streets: a rotated grid of roads with sidewalks
    street_angle = rng.uniform(0, np.pi / 2)
    spacing = rng.uniform(45.0, 110.0, size=2) * upm
    road_hw = rng.uniform(3.0, 6.0) * upm
    walk_w = rng.uniform(1.5, 3.0) * upm
    phase = rng.uniform(0, 1, size=2) * spacing
    ca, sa = math.cos(street_angle), math.sin(street_angle)
    P = xs[None, :] * ca + ys[:, None] * sa
    Q = -xs[None, :] * sa + ys[:, None] * ca
    dp = np.abs(np.mod(P - phase[0] + spacing[0] / 2, spacing[0]) - spacing[0] / 2)
    dq = np.abs(np.mod(Q - phase[1] + spacing[1] / 2, spacing[1]) - spacing[1] / 2)
    dmin = np.minimum(dp, dq)
    street = np.zeros(shape, np.uint8)
    street[dmin < road_hw + walk_w] = 2
    street[dmin < road_hw] = 1
    del P, Q, dp, dq, dmin

    # ---- buildings
    progress(1, 4, "scene", "buildings")
    check_cancel(cancel)
    building_z = np.full(shape, -np.inf)
    building_id = np.zeros(shape, np.int32)
    taken = street > 0
    buildings: list[dict] = []
    area = rows * cols * res * res
    target = building_density * area
    covered = 0.0
    expected = max(target / (180.0 * upm * upm), 1.0)
    max_attempts = int(60 * expected) + 200
    attempts = 0
    m = upm  # shorthand: metres -> CRS units
    while covered < target and attempts < max_attempts:
        attempts += 1
        if attempts % 256 == 0:
            check_cancel(cancel)
        roof = ROOF_TYPES[rng.choice(3, p=roof_mix)]
        big = roof == "flat" and rng.random() < 0.35
        a = rng.uniform(10.0, 30.0) * m if big else rng.uniform(4.5, 14.0) * m
        b = min(a, (rng.uniform(8.0, 18.0) if big else rng.uniform(3.5, 7.5)) * m)
        l_shape = rng.random() < 0.3
        # position: along a street frontage (70 %) or anywhere
        if rng.random() < 0.7:
            fam = rng.integers(2)
            along = rng.uniform(-1, 1) * (half_w + half_h)
            k = np.round((rng.uniform(-1, 1) * (half_w + half_h)) / spacing[fam])
            side = rng.choice((-1.0, 1.0))
            parallel = rng.random() < 0.75
            setback = rng.uniform(1.0, 7.0) * m
            depth = b if parallel else a
            off = phase[fam] + k * spacing[fam] + side * (road_hw + walk_w + setback + depth)
            local_angle = 0.0 if parallel else np.pi / 2
            if fam == 0:  # street lines at P = const, run along Q
                p, q = off, along
                angle = street_angle + np.pi / 2 + local_angle
            else:
                p, q = along, off
                angle = street_angle + local_angle
            cx, cy = p * ca - q * sa, p * sa + q * ca
        else:
            cx, cy = rng.uniform(-half_w, half_w), rng.uniform(-half_h, half_h)
            angle = street_angle + rng.integers(4) * np.pi / 2 if rng.random() < 0.8 else rng.uniform(0, np.pi)
        angle += rng.normal(0, math.radians(2.0))
        if not (-half_w <= cx <= half_w and -half_h <= cy <= half_h):
            continue
        parts = [{"cx": cx, "cy": cy, "a": a, "b": b, "angle": angle}]
        if l_shape:
            b2 = rng.uniform(0.6, 1.0) * b
            ext = rng.uniform(3.0, 10.0) * m
            a2 = (b + ext) / 2.0
            s1, s2 = rng.choice((-1.0, 1.0)), rng.choice((-1.0, 1.0))
            uw, vw = s1 * (a - b2), s2 * a2
            c, s = math.cos(angle), math.sin(angle)
            parts.append({"cx": cx + uw * c - vw * s, "cy": cy + uw * s + vw * c, "a": a2, "b": b2,
                          "angle": angle + np.pi / 2})
        gap = rng.uniform(0.75, 3.0) * m
        radius = max(math.hypot(p_["a"], p_["b"]) + abs(p_["cx"] - cx) + abs(p_["cy"] - cy) for p_ in parts) + gap
        win = _window(cx, cy, radius, x0, y0, res, shape)
        if win is None:
            continue
        X, Y = _centres(win, x0, y0, res)
        grown = np.zeros((win[0].stop - win[0].start, win[1].stop - win[1].start), bool)
        inside = np.zeros_like(grown)
        uvs = []
        for part in parts:
            u, v = _local_uv(X, Y, part)
            uvs.append((u, v))
            grown |= _inside(u, v, part, gap)
            inside |= _inside(u, v, part)
        if not inside.any() or (taken[win] & grown).any():
            continue
        # accepted: roof heights
        row_c, col_c = int((y0 - cy) // res), int((cx - x0) // res)
        row_c, col_c = min(max(row_c, 0), rows - 1), min(max(col_c, 0), cols - 1)
        base = float(dtm[row_c, col_c])
        if roof == "flat":
            eave = (rng.uniform(6.0, 30.0) if big else rng.uniform(3.0, 18.0)) * m
            slope = 0.0
        else:
            eave = rng.uniform(2.8, 10.0) * m
            slope = math.tan(math.radians(rng.uniform(22.0, 45.0)))
        z = np.full(grown.shape, -np.inf)
        for part, (u, v) in zip(parts, uvs):
            zin = base + eave + _roof_rel(u, v, part, roof, slope)
            z = np.where(_inside(u, v, part), np.maximum(z, zin), z)
        structure = None
        if roof == "flat" and rng.random() < 0.35 and a > 4 * m and b > 3 * m:
            sa_, sb_ = rng.uniform(1.0, min(3.0 * m, a / 3)), rng.uniform(1.0, min(2.5 * m, b / 3))
            su, sv = rng.uniform(-1, 1) * (a - sa_ - 0.5 * m), rng.uniform(-1, 1) * (b - sb_ - 0.5 * m)
            c, s = math.cos(angle), math.sin(angle)
            structure = {"cx": cx + su * c - sv * s, "cy": cy + su * s + sv * c, "a": sa_, "b": sb_,
                         "angle": angle, "height": rng.uniform(1.2, 3.5) * m}
            u, v = _local_uv(X, Y, structure)
            z = np.where(_inside(u, v, structure), base + eave + structure["height"], z)
        bid = len(buildings) + 1
        sub_z = building_z[win]
        better = inside & (z > sub_z)
        sub_z[better] = z[better]
        building_id[win][better] = bid
        taken[win] |= grown if gap < 1.0 * m else _shrink(grown, inside, X, Y, parts, 0.75 * m)
        ridge = eave + (max(p_["b"] for p_ in parts) * slope if roof == "gabled" else
                        max(min(p_["a"], p_["b"]) for p_ in parts) * slope)
        covered += float(inside.sum()) * res * res
        buildings.append({
            "id": bid, "roof": roof, "shape": "L" if l_shape else "rect", "base": base,
            "eave_height": eave, "ridge_height": ridge, "roof_slope": slope,
            "cx": cx, "cy": cy,
            "parts": parts, "structure": structure,
        })

    # ---- trees: noisy domes
    progress(2, 4, "scene", "trees")
    check_cancel(cancel)
    tree_z = np.full(shape, -np.inf)
    n_trees = int(rng.poisson(tree_density * area / (10000.0 * upm * upm)))
    dist_bld = ndimage.distance_transform_edt(building_id == 0) * res
    canopy_tex = fine_noise(rng, shape, 1.2)
    trees = []
    street_rows = rng.random() < 0.6
    for _ in range(n_trees * 3):
        if len(trees) >= n_trees:
            break
        r = rng.uniform(1.8, 6.0) * m
        h = rng.uniform(max(5.0, 1.5 * r / m), 18.0) * m
        if street_rows and rng.random() < 0.35:  # a tree on a sidewalk
            fam = rng.integers(2)
            k = np.round(rng.uniform(-1, 1) * (half_w + half_h) / spacing[fam])
            off = phase[fam] + k * spacing[fam] + rng.choice((-1.0, 1.0)) * (road_hw + walk_w / 2)
            along = rng.uniform(-1, 1) * (half_w + half_h)
            p, q = (off, along) if fam == 0 else (along, off)
            tx, ty = p * ca - q * sa, p * sa + q * ca
            r = min(r, 4.0 * m)
        else:
            tx, ty = rng.uniform(-half_w, half_w), rng.uniform(-half_h, half_h)
        if not (-half_w <= tx < half_w and -half_h <= ty < half_h):
            continue
        tr_, tc_ = int((y0 - ty) // res), int((tx - x0) // res)
        tr_, tc_ = min(max(tr_, 0), rows - 1), min(max(tc_, 0), cols - 1)
        if dist_bld[tr_, tc_] < 0.6 * r or street[tr_, tc_] == 1:
            continue
        win = _window(tx, ty, r * 1.3, x0, y0, res, shape)
        if win is None:
            continue
        X, Y = _centres(win, x0, y0, res)
        dx, dy = X - tx, Y - ty
        phi = np.arctan2(dy, dx)
        rad = r * (1.0 + rng.uniform(0.02, 0.08) * np.sin(rng.integers(2, 4) * phi + rng.uniform(0, 2 * np.pi))
                   + rng.uniform(0.02, 0.06) * np.sin(rng.integers(5, 8) * phi + rng.uniform(0, 2 * np.pi)))
        dn2 = (dx * dx + dy * dy) / (rad * rad)
        inside = dn2 < 1.0
        ground = float(dtm[tr_, tc_])
        trunk = rng.uniform(1.5, min(4.0, 0.45 * h / m)) * m
        dome = ground + trunk + (h - trunk) * np.sqrt(np.clip(1.0 - dn2, 0.0, 1.0)) ** rng.uniform(0.6, 1.0)
        dome = dome + canopy_tex[win] * rng.uniform(0.15, 0.45) * m
        dome = np.maximum(dome, dtm[win] + 1.0 * m)
        sub = tree_z[win]
        sub[inside] = np.maximum(sub[inside], dome[inside])
        trees.append({"x": tx, "y": ty, "radius": r, "height": h, "ground": ground})

    # ---- truth rasters
    progress(3, 4, "scene", "truth rasters")
    is_bld = (building_z > dtm) & (building_z >= tree_z)
    is_tree = (tree_z > dtm) & ~is_bld
    dsm = dtm.copy()
    dsm[is_bld] = building_z[is_bld]
    dsm[is_tree] = tree_z[is_tree]
    classes = np.full(shape, GROUND, np.uint8)
    classes[is_bld] = BUILDING
    classes[is_tree] = VEGETATION
    building_id[~is_bld] = 0

    cx_world, cy_world = (left + left + cols * res) / 2.0, (top + bottom) / 2.0
    for bld in buildings:  # store world coordinates
        bld["cx"], bld["cy"] = bld["cx"] + cx_world, bld["cy"] + cy_world
        for part in bld["parts"] + ([bld["structure"]] if bld["structure"] else []):
            part["cx"], part["cy"] = part["cx"] + cx_world, part["cy"] + cy_world
    for tree in trees:
        tree["x"], tree["y"] = tree["x"] + cx_world, tree["y"] + cy_world

    scene = CityScene(
        dsm=dsm, dtm=dtm, classes=classes, ortho=None, building_id=building_id,
        shadow=np.zeros(shape, bool), street=street,
        transform=Affine(res, 0.0, left, 0.0, -res, top), crs=crs_obj, resolution=res, units_per_m=upm,
        buildings=buildings, trees=trees, sun_azimuth_deg=float(sun_azimuth_deg),
        sun_elevation_deg=float(sun_elevation_deg), seed=int(seed),
        params={"ground_height": float(ground_height), "building_density": float(building_density),
                "tree_density": float(tree_density), "roof_mix": [float(v) for v in roof_mix],
                "street_angle_deg": math.degrees(street_angle), "street_spacing": [float(s) for s in spacing]},
    )
    scene.shadow = cast_shadows(dsm, res, scene.sun_azimuth_deg, scene.sun_elevation_deg)
    scene.ortho = render_ortho(scene, np.random.default_rng([seed, 1]))
    log.info("scene %dx%d px: %d buildings (%.0f%% cover), %d trees", rows, cols, len(buildings),
             100 * covered / area, len(trees))
    progress(4, 4, "scene", "done")
    return scene


def _shrink(grown, inside, X, Y, parts, gap):
    """The footprint grown by ``gap`` (what later buildings must keep clear of)."""
    out = np.zeros_like(grown)
    for part in parts:
        u, v = _local_uv(X, Y, part)
        out |= _inside(u, v, part, gap)
    return out
