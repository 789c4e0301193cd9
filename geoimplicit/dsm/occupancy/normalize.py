"""Per-patch local frame: large projected coordinates and heights in, small float32 numbers out.

Eastings of 6-7 digits, elevations of hundreds of metres and feet-based CRSs all reach the network as the
same numbers: every patch gets a local origin (its centre for x, y; a robust low height of its input points
for z), coordinates are converted to metres with the CRS's linear unit, and heights are divided by a fixed
height scale. The subtraction happens in float64 before anything becomes float32, so shifting a patch by
(770000, 6277000, 300) changes nothing the model sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z_REF_PERCENTILE = 5.0
"""The reference height of a patch is this percentile of its input points' heights."""


@dataclass(frozen=True)
class PatchFrame:
    """The local frame of one patch.

    Attributes:
        origin: (x0, y0, z0) float64 in CRS units: the patch centre and its reference height.
        metres_per_unit: metres per CRS unit (0.3048 for international feet); also applied to heights.
        cell_m: side of a feature-grid cell in metres.
        height_scale_m: heights in metres above z0 are divided by this.
        shape: (rows, cols) of the feature grid, centred on the origin, multiples of ``multiple``.
    """

    origin: tuple
    metres_per_unit: float
    cell_m: float
    height_scale_m: float
    shape: tuple

    @classmethod
    def from_bounds(cls, bounds, z_ref: float, *, metres_per_unit: float = 1.0, cell_m: float = 0.5,
                    height_scale_m: float = 16.0, multiple: int = 4) -> "PatchFrame":
        """Frame of ``bounds`` (left, bottom, right, top) in CRS units, reference height ``z_ref`` (CRS units)."""
        left, bottom, right, top = (float(b) for b in bounds)
        w_m = (right - left) * metres_per_unit
        h_m = (top - bottom) * metres_per_unit
        cols = max(multiple, int(math.ceil(w_m / cell_m / multiple - 1e-9)) * multiple)
        rows = max(multiple, int(math.ceil(h_m / cell_m / multiple - 1e-9)) * multiple)
        origin = ((left + right) / 2.0, (bottom + top) / 2.0, float(z_ref))
        return cls(origin, float(metres_per_unit), float(cell_m), float(height_scale_m), (rows, cols))

    @staticmethod
    def reference_height(z: np.ndarray) -> float:
        """Robust reference height of a patch's points (float64, CRS units)."""
        z = np.asarray(z, dtype=np.float64)
        return float(low_percentile(z, Z_REF_PERCENTILE)) if z.size else 0.0

    @property
    def half_extent_m(self) -> tuple:
        """(half width, half height) of the feature grid in metres."""
        return (self.shape[1] * self.cell_m / 2.0, self.shape[0] * self.cell_m / 2.0)

    def xy_to_local(self, x, y) -> np.ndarray:
        """(N, 2) float32 metres east/north of the origin (subtraction in float64)."""
        return np.stack([self.x_to_local(x), self.y_to_local(y)], axis=-1)

    def x_to_local(self, x) -> np.ndarray:
        """Eastings (CRS units) -> float32 metres east of the origin (subtraction in float64)."""
        return ((np.asarray(x, dtype=np.float64) - self.origin[0]) * self.metres_per_unit).astype(np.float32)

    def y_to_local(self, y) -> np.ndarray:
        """Northings (CRS units) -> float32 metres north of the origin (subtraction in float64)."""
        return ((np.asarray(y, dtype=np.float64) - self.origin[1]) * self.metres_per_unit).astype(np.float32)

    def z_to_local(self, z) -> np.ndarray:
        """Heights (CRS units) -> float32 normalised heights ((z - z0) metres / height_scale_m)."""
        return ((np.asarray(z, dtype=np.float64) - self.origin[2]) * (self.metres_per_unit / self.height_scale_m)).astype(np.float32)

    def z_from_local(self, zn) -> np.ndarray:
        """Normalised heights -> float64 heights in CRS units."""
        return self.origin[2] + np.asarray(zn, dtype=np.float64) * (self.height_scale_m / self.metres_per_unit)

    def metres_to_local_z(self, d_m: float) -> float:
        """A height difference in metres as a normalised height difference."""
        return d_m / self.height_scale_m

    def points_to_local(self, x, y, z) -> np.ndarray:
        """(N, 3) float32: local metres x, y and normalised z (as the methods above, bit for bit, each column
        through one float64 scratch array straight into the output: no (N, 2) float64 or concatenated copies)."""
        x0, y0, z0 = self.origin
        mpu = self.metres_per_unit
        out = np.empty((len(x), 3), np.float32)
        scratch = np.empty(len(x), np.float64)
        for k, (v, v0, scale) in enumerate(((x, x0, mpu), (y, y0, mpu), (z, z0, mpu / self.height_scale_m))):
            np.subtract(np.asarray(v, dtype=np.float64), v0, out=scratch)
            scratch *= scale
            out[:, k] = scratch
        return out

    def grid_cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """CRS coordinates (float64) of the feature-grid cell centres: x (cols,), y (rows,) north to south."""
        hx, hy = self.half_extent_m
        rows, cols = self.shape
        c = (np.arange(cols) + 0.5) * self.cell_m - hx
        r = hy - (np.arange(rows) + 0.5) * self.cell_m
        return self.origin[0] + c / self.metres_per_unit, self.origin[1] + r / self.metres_per_unit

    def to_dict(self) -> dict:
        return {"origin": list(self.origin), "metres_per_unit": self.metres_per_unit, "cell_m": self.cell_m,
                "height_scale_m": self.height_scale_m, "shape": list(self.shape)}


def low_percentile(a: np.ndarray, q: float) -> float:
    """``np.percentile(a, q)`` (linear) of a float64 array for a low ``q``, bit for bit, without partitioning
    all of ``a``: the two order statistics it needs lie under a threshold read off a strided sample, and only
    the values under it are partitioned (a tile's reference height: a fifth of the framing time otherwise)."""
    n = a.size
    if n < 8192 or not 0 <= q <= 25:
        return np.percentile(a, q)
    pos = (n - 1) * (q / 100)  # numpy's virtual index for the linear method
    lo = int(math.floor(pos))
    sample = a[::64]
    rank = min(sample.size - 1, int(sample.size * q / 100 * 1.5) + 16)  # safely above q in the sample
    below = a[a <= np.partition(sample, rank)[rank]]
    if below.size < lo + 2 or np.isnan(sample[rank]) or np.isnan(a.min()):
        return np.percentile(a, q)  # too few under the threshold (an unlucky sample), or NaNs: numpy's way
    v_lo, v_hi = np.partition(below, [lo, lo + 1])[[lo, lo + 1]]
    gamma, diff = pos - lo, v_hi - v_lo
    return v_hi - diff * (1 - gamma) if gamma >= 0.5 else v_lo + diff * gamma  # numpy's _lerp


def resample_image_to_frame(image: np.ndarray, transform, frame: PatchFrame, out=None) -> np.ndarray:
    """Bilinearly sample an image (bands, rows, cols) with an affine ``transform`` at the frame's cell centres.

    Returns (bands + 1, rows, cols) float32 (written into ``out`` when given): the bands scaled to [0, 1]
    (uint8 / 255, uint16 / 65535, floats divided by their 99th percentile when above 1) and a last channel that
    is 1 where the image covers the cell.
    """
    import torch
    import torch.nn.functional as F

    imgf = _unit_bands(np.asarray(image))
    h, w = imgf.shape[1:]
    col, row = _pixel_coords(~transform, frame)
    grid = np.empty((1,) + frame.shape + (2,), np.float32)
    grid[0, ..., 0] = (col / w) * 2 - 1
    grid[0, ..., 1] = (row / h) * 2 - 1
    t = torch.from_numpy(np.ascontiguousarray(imgf))[None]
    sampled = F.grid_sample(t, torch.from_numpy(grid), mode="bilinear", padding_mode="border",
                            align_corners=False)[0].numpy()
    if out is None:
        out = np.empty((len(imgf) + 1,) + frame.shape, np.float32)
    out[-1] = (col >= 0) & (col <= w) & (row >= 0) & (row <= h)
    np.multiply(sampled, out[-1], out=out[:-1])
    return out


def _unit_bands(img: np.ndarray) -> np.ndarray:
    """(bands, rows, cols) float32 in [0, 1] (see :func:`resample_image_to_frame`), NaN as 0."""
    if img.ndim == 2:
        img = img[None]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / (255.0 if img.max() <= 255 else 65535.0)
    imgf = img.astype(np.float32)
    top = np.nanpercentile(imgf, 99) if imgf.size else 1.0
    if top > 1.0:
        imgf = imgf / top
    return np.nan_to_num(imgf)


def _pixel_coords(inv, frame: PatchFrame) -> tuple[np.ndarray, np.ndarray]:
    """Image (col, row) of the frame's cell centres under the inverse transform ``inv``, broadcastable to the
    frame's shape: north-up, the column depends on x only and the row on y only (the same numbers: the other
    term is a zero), so the affine map runs once per grid column and row."""
    xs, ys = frame.grid_cell_centres()
    if inv.b == 0 and inv.d == 0:
        return (inv.a * xs + inv.c)[None, :], (inv.e * ys + inv.f)[:, None]
    return (inv.a * xs[None, :] + inv.b * ys[:, None] + inv.c), (inv.d * xs[None, :] + inv.e * ys[:, None] + inv.f)
