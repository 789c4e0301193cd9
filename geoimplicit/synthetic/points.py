"""Photogrammetric-like point clouds sampled from a synthetic scene, and degraded copies of real clouds.

Defects of a dense-matching cloud that a DSM method must cope with:

* **noise** that grows at height edges (roof outlines, tree crowns): there the points are also smeared between
  the top and the bottom of the step, as dense matching does;
* **holes**: blobs where nothing is matched, preferring cast shadows, dark surfaces and height edges;
* **outliers**: isolated points far above or below the surface.

Every point carries a ``defect`` code: 0 clean, 1 edge-affected, 2 outlier. Points are generated in strips of
grid rows with one random stream per strip, so a cloud of square kilometres is written in bounded memory and
is the same cloud whether it is written in chunks or held in memory.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from scipy import ndimage

from geoimplicit.progress import CancelCallback, ProgressCallback, check_cancel
from geoimplicit.synthetic.terrain import smooth_noise

GENERATOR_DATE = datetime.date(2026, 11, 22)
"""Creation date in the LAS headers of generated clouds (the generator's date, so that files are reproducible)."""

CLEAN, EDGE, OUTLIER = 0, 1, 2
CHUNK_ROWS = 256  # grid rows per random stream (fixed: changing it changes the cloud)


def _minmod_gradients(dsm: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """dz/dx (east) and dz/dy (north) of a height field, 0 across steps and at ridges."""
    def mm(axis):
        fwd = np.diff(dsm, axis=axis, append=np.take(dsm, [-1], axis=axis))
        bwd = np.diff(dsm, axis=axis, prepend=np.take(dsm, [0], axis=axis))
        out = np.where(np.abs(fwd) < np.abs(bwd), fwd, bwd)
        return np.where(np.sign(fwd) == np.sign(bwd), out, 0.0) / resolution

    # clamp to 50 deg: roofs are at most 45 deg; steeper minmod slopes are the flanks of crowns and steps
    return np.clip(mm(1), -1.2, 1.2), np.clip(-mm(0), -1.2, 1.2)


class _Defects:
    """Rasters that drive the defects: edge weight, smoothed DSM, hole mask, slopes."""

    def __init__(self, scene, seed: int, holes: float, hole_size_m: float):
        upm, res = scene.units_per_m, scene.resolution
        dsm = scene.dsm
        sigma_px = max(0.75 * upm / res, 0.5)
        self.smooth = ndimage.gaussian_filter(dsm, sigma_px, mode="nearest")
        self.gx, self.gy = _minmod_gradients(dsm, res)
        # edge weight: the 3x3 height range beyond what the local plane explains, 1 for a step of >= 1 m
        # (it marks a pixel either side of a step: dense matching smears about that much)
        rng_3 = ndimage.maximum_filter(dsm, size=3) - ndimage.minimum_filter(dsm, size=3)
        slope = ndimage.maximum_filter(np.abs(self.gx) + np.abs(self.gy), size=3)
        self.edge = np.clip((rng_3 - 2.0 * res * slope) / (1.0 * upm), 0.0, 1.0)
        self.edge[self.edge < 0.1] = 0.0
        self.holes = np.zeros(dsm.shape, bool)
        if holes > 0:
            rng = np.random.default_rng([seed, 5])
            blobs = smooth_noise(rng, dsm.shape, max(hole_size_m * upm / res, 2.0))
            ortho = scene.ortho.astype(np.float64) if scene.ortho is not None else None
            dark = 0.0 if ortho is None else np.clip((70.0 - ortho.mean(axis=0)) / 40.0, 0.0, 1.0)
            score = blobs + 0.8 * scene.shadow + 0.6 * self.edge + 0.5 * dark
            score = score + 1e-9 * rng.random(dsm.shape)  # break ties so the quantile is exact
            threshold = np.quantile(score, 1.0 - holes)
            self.holes = score > threshold


def iter_point_chunks(
    scene,
    seed: int,
    *,
    density: float = 10.0,
    noise: float = 0.08,
    edge_gain: float = 4.0,
    holes: float = 0.05,
    hole_size_m: float = 6.0,
    outliers: float = 0.005,
    outlier_range_m: tuple[float, float] = (1.5, 20.0),
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Iterator[dict]:
    """Yield the cloud strip by strip (dicts of arrays, see :func:`sample_points`)."""
    if density <= 0:
        raise ValueError(f"density must be positive, got {density}")
    if not 0 <= holes < 1 or not 0 <= outliers < 1:
        raise ValueError("holes and outliers are fractions in [0, 1)")
    upm, res = scene.units_per_m, scene.resolution
    rows, cols = scene.shape
    left, _, _, top = scene.bounds
    d = _Defects(scene, seed, holes, hole_size_m)
    per_unit2 = density / (upm * upm)
    sigma = noise * upm
    n_chunks = int(math.ceil(rows / CHUNK_ROWS))
    ortho = scene.ortho
    for k in range(n_chunks):
        check_cancel(cancel)
        r0, r1 = k * CHUNK_ROWS, min((k + 1) * CHUNK_ROWS, rows)
        rng = np.random.default_rng([seed, 7, k])
        n = int(rng.poisson(per_unit2 * (r1 - r0) * cols * res * res))
        col_f = rng.uniform(0.0, cols, n)
        row_f = r0 + rng.uniform(0.0, r1 - r0, n)
        r = np.minimum(row_f.astype(np.int64), rows - 1)
        c = np.minimum(col_f.astype(np.int64), cols - 1)
        keep = ~d.holes[r, c]
        col_f, row_f, r, c = col_f[keep], row_f[keep], r[keep], c[keep]
        n = len(r)
        x = left + col_f * res
        y = top - row_f * res
        # the true surface at (x, y): the pixel's height plus the local plane's slope
        z = scene.dsm[r, c] + d.gx[r, c] * ((col_f - c - 0.5) * res) + d.gy[r, c] * (-(row_f - r - 0.5) * res)
        z_true = z
        w = d.edge[r, c]
        mix = rng.random(n)
        z = z + w * mix * (d.smooth[r, c] - z) + rng.normal(0.0, 1.0, n) * sigma * (1.0 + edge_gain * w)
        defect = np.where(w > 0, EDGE, CLEAN).astype(np.uint8)
        n_out = int(round(outliers * n))
        if n_out:
            idx = rng.choice(n, n_out, replace=False)
            sign = np.where(rng.random(n_out) < 0.5, -1.0, 1.0)
            z[idx] = z_true[idx] + sign * rng.uniform(*outlier_range_m, n_out) * upm
            defect[idx] = OUTLIER
        chunk = {"x": x, "y": y, "z": z, "classification": scene.classes[r, c].copy(), "defect": defect}
        if ortho is not None:
            for i, name in enumerate(("red", "green", "blue")):
                chunk[name] = ortho[i, r, c].astype(np.uint16) * 257
        if progress is not None:
            progress(k + 1, n_chunks, "points", f"{r1}/{rows} rows")
        yield chunk


def sample_points(scene, seed: int, *, density: float = 10.0, noise: float = 0.08, holes: float = 0.05,
                  outliers: float = 0.005, **kw) -> dict:
    """A photogrammetric-like cloud of the scene's top surface.

    Args:
        scene: a :class:`~geoimplicit.synthetic.city.CityScene`.
        seed: random seed (the same seed gives the same cloud).
        density: points per square metre before holes.
        noise: standard deviation of the height noise on smooth surfaces, metres; it grows by
            ``1 + edge_gain * w`` near height edges (``edge_gain`` default 4).
        holes: fraction of the area without points (blobs of ``hole_size_m``, preferring shadows, dark
            surfaces and edges).
        outliers: fraction of the points moved ``outlier_range_m`` (default 1.5-20 m) above or below.

    Returns:
        dict of arrays: x, y, z (float64, CRS units), classification (uint8 LAS codes of the truth),
        red, green, blue (uint16 from the ortho), defect (uint8: 0 clean, 1 edge, 2 outlier).
    """
    chunks = list(iter_point_chunks(scene, seed, density=density, noise=noise, holes=holes,
                                    outliers=outliers, **kw))
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def degrade_points(
    points: dict,
    seed: int,
    *,
    keep_fraction: float = 0.5,
    noise_m: float = 0.1,
    hole_fraction: float = 0.05,
    outlier_fraction: float = 0.005,
    hole_size_m: float = 6.0,
    outlier_range_m: tuple[float, float] = (1.5, 20.0),
    units_per_m: float = 1.0,
) -> dict:
    """A thinned, noisier, holed copy of a dense (real LiDAR) cloud, to use as a DSM method's input.

    Args:
        points: dict of equal-length arrays with x, y, z (any other fields are carried along).
        seed: random seed.
        keep_fraction: fraction of the points kept (uniform thinning).
        noise_m: standard deviation of the Gaussian noise added to z, metres.
        hole_fraction: fraction of the cloud's bounding box emptied by blobs of ``hole_size_m``.
        outlier_fraction: fraction of the remaining points moved ``outlier_range_m`` up or down.
        units_per_m: CRS units per metre (1/0.3048 for a feet-based cloud).

    Returns:
        a new dict with the same fields plus ``defect`` (0 clean, 2 outlier).
    """
    rng = np.random.default_rng([seed, 11])
    x = np.asarray(points["x"], dtype=np.float64)
    n = len(x)
    keep = rng.random(n) < keep_fraction
    if hole_fraction > 0 and n:
        y = np.asarray(points["y"], dtype=np.float64)
        cell = max(hole_size_m * units_per_m / 4.0, 1e-6)
        x0, y0 = x.min(), y.min()
        shape = (int((y.max() - y0) // cell) + 1, int((x.max() - x0) // cell) + 1)
        score = smooth_noise(rng, shape, 4.0) + 1e-9 * rng.random(shape)
        hole = score > np.quantile(score, 1.0 - hole_fraction)
        keep &= ~hole[((y - y0) // cell).astype(np.int64), ((x - x0) // cell).astype(np.int64)]
    out = {k: np.asarray(v)[keep] for k, v in points.items()}
    m = len(out["x"])
    z = np.asarray(out["z"], dtype=np.float64) + rng.normal(0.0, noise_m * units_per_m, m)
    defect = np.zeros(m, np.uint8)
    n_out = int(round(outlier_fraction * m))
    if n_out:
        idx = rng.choice(m, n_out, replace=False)
        sign = np.where(rng.random(n_out) < 0.5, -1.0, 1.0)
        z[idx] += sign * rng.uniform(*outlier_range_m, n_out) * units_per_m
        defect[idx] = OUTLIER
    out["z"] = z
    out["defect"] = defect
    return out


def _cell_top(x, y, z, cell: float):
    """Cell max of a cloud on a ``cell`` grid from its bounding box: (top (rows, cols) NaN where empty, row, col)."""
    x0, y0 = x.min(), y.max()
    col = ((x - x0) // cell).astype(np.int64)
    row = ((y0 - y) // cell).astype(np.int64)
    shape = (int(row.max()) + 1, int(col.max()) + 1)
    top = np.full(shape[0] * shape[1], -np.inf)
    np.maximum.at(top, row * shape[1] + col, z)
    top = top.reshape(shape)
    return np.where(np.isfinite(top), top, np.nan), row, col


def photogrammetric_points(points: dict, seed: int, *, density_m2: float = 4.5, noise_m: float = 0.08,
                           edge_gain: float = 4.0, edge_xy_m: float = 0.3, hole_fraction: float = 0.08,
                           hole_size_m: float = 6.0, outlier_fraction: float = 0.005,
                           outlier_range_m: tuple[float, float] = (1.5, 20.0), surface_tolerance_m: float = 0.5,
                           units_per_m: float = 1.0, cell_m: float = 0.5) -> dict:
    """A photogrammetric-like cloud (what dense image matching gives) made from a dense real LiDAR cloud.

    Defects, as :func:`iter_point_chunks` makes them on generated scenes: only the top surface is seen (points
    more than ``surface_tolerance_m`` below their ``cell_m`` cell's top go: no ground under trees, no walls);
    holes (blobs of ``hole_size_m``) prefer cast shadows (a random sun) and height edges (facades); at height
    edges the heights are smeared towards the smoothed surface, the noise grows by ``1 + edge_gain * w`` and
    points shift up to ``edge_xy_m`` sideways; outliers; then thinning to ``density_m2`` points per square metre
    of the area outside holes (footprint = ``cell_m`` cells that hold a dense point).

    Returns:
        a new dict with the carried fields plus ``defect`` (0 clean, 1 edge-affected, 2 outlier).
    """
    from geoimplicit.synthetic.ortho import cast_shadows

    rng = np.random.default_rng([seed, 13])
    upm = units_per_m
    x, y, z = (np.asarray(points[k], np.float64) for k in ("x", "y", "z"))
    cell = cell_m * upm
    top, row, col = _cell_top(x, y, z, cell)
    has = np.isfinite(top)
    idx = ndimage.distance_transform_edt(~has, return_distances=False, return_indices=True)
    top_f = top[idx[0], idx[1]]
    gx, gy = _minmod_gradients(top_f, cell)
    rng_3 = ndimage.maximum_filter(top_f, size=3) - ndimage.minimum_filter(top_f, size=3)
    slope = ndimage.maximum_filter(np.abs(gx) + np.abs(gy), size=3)
    edge = np.clip((rng_3 - 2.0 * cell * slope) / upm, 0.0, 1.0)
    edge[edge < 0.1] = 0.0
    smooth = ndimage.gaussian_filter(top_f, max(0.75 / cell_m, 0.5), mode="nearest")
    hole = np.zeros(top.shape, bool)
    if hole_fraction > 0:
        shadow = cast_shadows(top_f, cell, rng.uniform(0, 360), rng.uniform(30, 60))
        score = smooth_noise(rng, top.shape, max(hole_size_m / cell_m, 2.0)) + 0.8 * shadow + 0.6 * edge
        score = score + 1e-9 * rng.random(top.shape)
        hole = has & (score > np.quantile(score[has], 1.0 - hole_fraction))
    keep = (z >= top_f[row, col] - surface_tolerance_m * upm) & ~hole[row, col]
    area_m2 = float((has & ~hole).sum()) * cell_m * cell_m
    p = min(1.0, density_m2 * area_m2 / max(int(keep.sum()), 1))
    keep &= rng.random(len(x)) < p
    out = {k: np.asarray(v)[keep] for k, v in points.items()}
    r, c = row[keep], col[keep]
    n = len(r)
    w = edge[r, c]
    zk = z[keep]
    z_new = zk + w * rng.random(n) * (smooth[r, c] - zk) + rng.normal(0.0, 1.0, n) * noise_m * upm * (1 + edge_gain * w)
    out["x"] = x[keep] + rng.normal(0.0, 1.0, n) * edge_xy_m * upm * w
    out["y"] = y[keep] + rng.normal(0.0, 1.0, n) * edge_xy_m * upm * w
    defect = np.where(w > 0, EDGE, CLEAN).astype(np.uint8)
    n_out = int(round(outlier_fraction * n))
    if n_out:
        i = rng.choice(n, n_out, replace=False)
        z_new[i] = zk[i] + np.where(rng.random(n_out) < 0.5, -1.0, 1.0) * rng.uniform(*outlier_range_m, n_out) * upm
        defect[i] = OUTLIER
    out["z"] = z_new
    out["defect"] = defect
    return out


def sparse_lidar_points(points: dict, seed: int, *, density_m2: float = 2.0, noise_m: float = 0.05,
                        units_per_m: float = 1.0, cell_m: float = 1.0) -> dict:
    """A sparse airborne LiDAR survey made from a dense one: every return kind kept (ground under trees, some
    walls), uniformly thinned to ``density_m2`` points per square metre of footprint, ``noise_m`` height noise."""
    rng = np.random.default_rng([seed, 17])
    x, y = np.asarray(points["x"], np.float64), np.asarray(points["y"], np.float64)
    top, _, _ = _cell_top(x, y, np.zeros(len(x)), cell_m * units_per_m)
    area_m2 = float(np.isfinite(top).sum()) * cell_m * cell_m
    keep = rng.random(len(x)) < min(1.0, density_m2 * area_m2 / max(len(x), 1))
    out = {k: np.asarray(v)[keep] for k, v in points.items()}
    out["z"] = np.asarray(out["z"], np.float64) + rng.normal(0.0, noise_m * units_per_m, int(keep.sum()))
    return out


# --------------------------------------------------------------------------------------------- LAS/LAZ
def write_points(path, chunks, crs, *, bounds_xyz=None, scale: float = 0.01, overwrite: bool = False,
                 progress: Optional[ProgressCallback] = None) -> tuple[Path, int]:
    """Write an iterable of point chunks to LAS/LAZ 1.4 point format 7 (RGB) with a ``defect`` extra byte,
    streaming through laspy's chunk writer (memory stays bounded by one chunk). Atomic.

    Args:
        bounds_xyz: (minx, miny, minz) used for the header offsets (default: from the first chunk).

    Returns:
        (path, number of points written).
    """
    import laspy

    from geoimplicit.outputs import atomic_output

    path = Path(path)
    header = laspy.LasHeader(point_format=7, version="1.4")
    header.creation_date = GENERATOR_DATE  # not today's: a seed gives the same file on any day
    header.scales = np.array([scale, scale, scale])
    header.add_extra_dim(laspy.ExtraBytesParams(name="defect", type=np.uint8,
                                                description="0 clean 1 edge 2 outlier"))
    header.add_crs(crs)
    it = iter(chunks)
    first = next(it, None)
    if bounds_xyz is None:
        bounds_xyz = (first["x"].min(), first["y"].min(), first["z"].min()) if first is not None else (0, 0, 0)
    header.offsets = np.floor(np.asarray(bounds_xyz, dtype=np.float64))
    compress = path.suffix.lower() == ".laz"
    total = 0
    with atomic_output(path, overwrite=overwrite) as tmp:
        kw = {"do_compress": compress}
        if compress:
            kw["laz_backend"] = laspy.LazBackend.LazrsParallel
        with laspy.open(tmp, mode="w", header=header, **kw) as writer:
            chunk = first
            while chunk is not None:
                n = len(chunk["x"])
                if n:
                    rec = laspy.ScaleAwarePointRecord.zeros(n, header=header)
                    rec.x, rec.y, rec.z = chunk["x"], chunk["y"], chunk["z"]
                    for key in ("classification", "red", "green", "blue", "defect"):
                        if key in chunk:
                            rec[key] = chunk[key]
                    writer.write_points(rec)
                    total += n
                chunk = next(it, None)
    return path, total
