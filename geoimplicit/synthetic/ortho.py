"""RGB true-ortho of a synthetic scene: material colours, sun shading from surface normals, cast shadows."""

from __future__ import annotations

import math

import numpy as np

from geoimplicit.synthetic.terrain import fine_noise, smooth_noise

# material palettes (sRGB, 0-255)
PITCHED_ROOFS = np.array([[176, 92, 62], [152, 72, 55], [82, 84, 92], [120, 92, 72], [112, 106, 100],
                          [190, 110, 75]], float)
FLAT_ROOFS = np.array([[178, 175, 168], [72, 72, 75], [214, 214, 208], [150, 146, 136], [102, 120, 72],
                       [128, 128, 132]], float)
WALLS = np.array([[222, 214, 196], [205, 190, 170], [190, 190, 188], [214, 200, 170], [170, 150, 135],
                  [235, 232, 225]], float)
GRASS = np.array([88, 118, 58], float)
DRY_GRASS = np.array([150, 145, 96], float)
SOIL = np.array([150, 128, 104], float)
PAVING = np.array([168, 163, 153], float)
ROAD = np.array([80, 80, 84], float)
SIDEWALK = np.array([172, 167, 160], float)
TREE = np.array([52, 88, 40], float)


def sun_vector(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector towards the sun in (east, north, up); azimuth clockwise from north."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])


def surface_normals(dsm: np.ndarray, resolution: float) -> np.ndarray:
    """(3, rows, cols) unit normals (east, north, up) of a height field.

    Slopes are the minmod of forward and backward differences, so a step (a wall) does not tilt the flat
    pixels on either side of it, and a roof ridge reads as a ridge.
    """
    def minmod_diff(arr, axis):
        fwd = np.diff(arr, axis=axis, append=np.take(arr, [-1], axis=axis))
        bwd = np.diff(arr, axis=axis, prepend=np.take(arr, [0], axis=axis))
        same = np.sign(fwd) == np.sign(bwd)
        return np.where(same, np.where(np.abs(fwd) < np.abs(bwd), fwd, bwd), 0.0) / resolution

    dzdx = minmod_diff(dsm, 1)
    dzdy = -minmod_diff(dsm, 0)  # rows go south
    n = np.stack([-dzdx, -dzdy, np.ones_like(dsm)])
    return n / np.linalg.norm(n, axis=0, keepdims=True)


def cast_shadows(dsm: np.ndarray, resolution: float, azimuth_deg: float, elevation_deg: float,
                 max_steps: int = 600) -> np.ndarray:
    """True where the sun is hidden by the height field (walk towards the sun one pixel at a time)."""
    rows, cols = dsm.shape
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    tan_el = math.tan(el)
    relief = float(np.nanmax(dsm) - np.nanmin(dsm))
    steps = min(int(math.ceil(relief / (resolution * tan_el))) + 1, max_steps)
    shadow = np.zeros(dsm.shape, bool)
    seen = set()
    eps = 1e-6 * max(1.0, relief)
    for k in range(1, steps + 1):
        dr, dc = int(round(-k * math.cos(az))), int(round(k * math.sin(az)))
        if (dr, dc) in seen or abs(dr) >= rows or abs(dc) >= cols:
            continue
        seen.add((dr, dc))
        rise = math.hypot(dr, dc) * resolution * tan_el
        r0, r1 = max(0, -dr), min(rows, rows - dr)
        c0, c1 = max(0, -dc), min(cols, cols - dc)
        shadow[r0:r1, c0:c1] |= dsm[r0 + dr:r1 + dr, c0 + dc:c1 + dc] > dsm[r0:r1, c0:c1] + rise + eps
    return shadow


def shading(scene) -> np.ndarray:
    """(rows, cols) light intensity: ambient plus Lambertian sun, 0 sun in cast shadows; flat lit ground = 1."""
    normals = surface_normals(scene.dsm, scene.resolution)
    sun = sun_vector(scene.sun_azimuth_deg, scene.sun_elevation_deg)
    lambert = np.tensordot(sun, normals, axes=1) / sun[2]
    ambient = 0.42
    direct = np.clip(lambert, 0.0, 1.6) * (~scene.shadow)
    return ambient + (1.0 - ambient) * direct


def albedo(scene, rng: np.random.Generator) -> np.ndarray:
    """(3, rows, cols) float material colours before lighting."""
    shape = scene.shape
    res, upm = scene.resolution, scene.units_per_m
    px_per_m = upm / res
    # ground: grass / dry grass / soil / paving patches
    g1 = smooth_noise(rng, shape, 22.0 * px_per_m)
    g2 = smooth_noise(rng, shape, 9.0 * px_per_m)
    tex = fine_noise(rng, shape, 0.8)
    w_grass = np.clip(1.5 * (g1 + 0.25), 0, 1)[None]
    dry = np.clip(g2 * 1.5, 0, 1)[None]
    grass = GRASS[:, None, None] * (1 - dry) + DRY_GRASS[:, None, None] * dry
    bare = np.where((g2 > -0.1)[None], PAVING[:, None, None], SOIL[:, None, None])
    ground = grass * w_grass + bare * (1 - w_grass)
    ground = ground * (1 + 0.07 * tex)[None]
    col = ground
    road = ROAD[:, None, None] * (1 + 0.05 * tex)[None]
    walk = SIDEWALK[:, None, None] * (1 + 0.04 * tex)[None]
    col = np.where((scene.street == 1)[None], road, col)
    col = np.where((scene.street == 2)[None], walk, col)
    # roofs: one colour per building, slight per-pixel texture
    n = len(scene.buildings)
    table = np.zeros((n + 1, 3))
    for i, bld in enumerate(scene.buildings, start=1):
        pal = FLAT_ROOFS if bld["roof"] == "flat" else PITCHED_ROOFS
        table[i] = pal[rng.integers(len(pal))] * rng.uniform(0.88, 1.1)
        bld["roof_rgb"] = [int(v) for v in np.clip(table[i], 0, 255)]
        bld["wall_rgb"] = [int(v) for v in WALLS[rng.integers(len(WALLS))] * rng.uniform(0.9, 1.05)]
    roof = np.moveaxis(table[scene.building_id], -1, 0) * (1 + 0.05 * tex)[None]
    col = np.where((scene.classes == 6)[None], roof, col)
    # trees: dark greens with a crown texture
    hue = smooth_noise(rng, shape, 6.0 * px_per_m)
    leaf = fine_noise(rng, shape, 0.7)
    tree = TREE[:, None, None] * (1 + 0.18 * hue)[None] * (1 + 0.18 * leaf)[None]
    tree[0] *= 1 + 0.12 * hue
    col = np.where((scene.classes == 5)[None], tree, col)
    return col


def render_ortho(scene, rng: np.random.Generator) -> np.ndarray:
    """(3, rows, cols) uint8 RGB ortho: albedo x shading, cooler light in the shadows."""
    col = albedo(scene, rng)
    light = shading(scene)
    img = col * light[None]
    sky_tint = np.array([0.92, 0.97, 1.10])[:, None, None]
    img = np.where(scene.shadow[None], img * sky_tint, img)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_irc(scene, rng: np.random.Generator) -> np.ndarray:
    """(3, rows, cols) uint8 false-colour infrared ortho in IGN's IRC band order (near infrared, red, green).

    Near-infrared reflectance is modelled from the material colour: between its red and its brightness (red tiles
    stay bright, asphalt dark), plus a strong term for green vegetation (chlorophyll reflects near infrared, hence
    the red trees and grass of IRC images)."""
    col = albedo(scene, rng)
    r, g = col[0], col[1]
    nir = 0.5 * (r + col.mean(0)) + 4.0 * np.clip(g - r, 0.0, None)
    light = shading(scene)
    img = np.stack([nir, r, g]) * light[None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def relief_displacement(image: np.ndarray, dsm: np.ndarray, dtm: np.ndarray, resolution: float,
                        lean: tuple[float, float]) -> np.ndarray:
    """What a (non-true) ortho-image of a central-perspective camera shows: everything above the ground is shifted
    by ``lean`` (dx, dy, CRS units per unit of height above the ground, ``dy`` northwards) times its height, the
    highest surface winning, and the footprint it leaves shows its facade (darkened). Most orthos, IGN's BD ORTHO
    included, are of this kind: roofs lean away from the nadir by up to a few metres."""
    out = image.copy()
    hag = np.clip(dsm - dtm, 0.0, None)
    dc = lean[0] * hag / resolution
    dr = -lean[1] * hag / resolution
    r, c = np.nonzero(np.hypot(dc, dr) >= 0.5)
    if not len(r):
        return out
    h, w = hag.shape
    tr = np.rint(r + dr[r, c]).astype(np.int64)
    tc = np.rint(c + dc[r, c]).astype(np.int64)
    inside = (tr >= 0) & (tr < h) & (tc >= 0) & (tc < w)
    r, c, tr, tc = r[inside], c[inside], tr[inside], tc[inside]
    facade = image[:, r, c].astype(np.float64) * 0.55 + 30.0
    out[:, r, c] = np.clip(facade, 0, 255).astype(image.dtype)
    target = tr * w + tc
    top = np.full(h * w, -np.inf)
    np.maximum.at(top, target, hag[r, c])
    wins = hag[r, c] >= top[target]
    out[:, tr[wins], tc[wins]] = image[:, r[wins], c[wins]]
    return out
