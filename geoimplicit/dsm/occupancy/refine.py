"""The height refiner: each cell's occupancy height moved towards the squared-error optimum (issue 17).

The surface search reads the field's 0.5 crossing: the *median* height of a column. Where the field cannot tell
roof from ground (a wall whose position is uncertain by a cell, porous canopy whose dense-LiDAR truth alternates
between leaves and ground), the median is a confident answer that is often a wall height off, and the RMSE
punishes it; the conditional *mean* is what minimises the squared error. The refiner learns that mean: a small
per-cell MLP over a (2R+1)^2 window of the occupancy heights and of the input points' cell statistics (max,
mean, min, count), trained with a squared loss against the truth (``geoimplicit train-refiner``,
:mod:`.refine_train`). Every height it sees is a difference to the cell's own occupancy height, in metres
(asinh-compressed, so that a 20 m wall and a 2 m one stay in range): it does not depend on the CRS, the datum or
the absolute height. It outputs a correction in metres, starting at zero (the untrained refiner is the
identity).

A tile refines an output grid grown by R cells on each side (the field is searched there too), so that a cell
at a tile edge sees the same window as in the middle of a tile: no seams.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FORMAT = "geoimplicit-height-refiner/1"
HEIGHT_CHANNELS = 4  # occupancy height, point max, mean, min
CHANNELS = HEIGHT_CHANNELS + 2  # + log(1 + count), occupancy found
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "weights" / "occupancy_refiner_default.pt"


class HeightRefiner(nn.Module):
    """Correction (metres) of each cell's occupancy height from its window (:func:`window_features`)."""

    def __init__(self, radius: int = 3, width: int = 96, deadband_m: float = 0.0, resolution_m: float = 0.5):
        super().__init__()
        self.radius, self.width = int(radius), int(width)
        self.resolution_m = float(resolution_m)  # the cell size it was trained at (it applies there only)
        self.deadband_m = float(deadband_m)  # corrections shrink by this much (metres): flat cells stay as read
        k = 2 * self.radius + 1
        self.net = nn.Sequential(nn.Linear(CHANNELS * k * k, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The raw correction (metres); :meth:`correction` applies the deadband."""
        return self.net(features)[:, 0]

    def correction(self, features: torch.Tensor) -> torch.Tensor:
        delta = self(features).float()
        return torch.sign(delta) * torch.clamp(delta.abs() - self.deadband_m, min=0.0)


def cell_stats(x, y, z, left: float, top: float, rows: int, cols: int, resolution: float) -> np.ndarray:
    """(4, rows, cols) float32: max, mean, min of the points' z per cell (NaN where none) and their count.

    The points' cells are :func:`.support.cell_index` (the floored cells in range); the count > 0 is
    :func:`.support.point_cells` of the same grid, so a tile's framing bins its points once.
    """
    from geoimplicit.dsm.occupancy.support import cell_index

    flat, idx = cell_index(x, y, left, top, resolution, rows, cols)
    zz = np.asarray(z, np.float64)
    if idx is not None:
        zz = zz.take(idx)
    n = rows * cols
    count = np.bincount(flat, minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(flat, zz, minlength=n) / count  # sums in point order, as before: the same means
    zmax = np.full(n, -np.inf)
    zmin = np.full(n, np.inf)
    np.maximum.at(zmax, flat, zz)
    np.minimum.at(zmin, flat, zz)
    none = count == 0
    out = np.empty((4, n), np.float32)
    for k, a in enumerate((zmax, mean, zmin, count)):
        out[k] = a  # float32 straight into the output (no float64 stack)
        if k < 3:
            out[k][none] = np.nan
    return out.reshape(4, rows, cols)


def window_features(height: torch.Tensor, found: torch.Tensor, stats: torch.Tensor, radius: int) -> torch.Tensor:
    """Features of the inner cells of a grid: ((H - 2R) * (W - 2R), CHANNELS * (2R + 1)^2) float32.

    Args:
        height: (H, W) occupancy heights in metres (any value where not ``found``).
        found: (H, W) bool, the surface search found a height.
        stats: (4, H, W) :func:`cell_stats` in metres (max, mean, min NaN where a cell has no point; count).
        radius: R, the window's half size in cells.
    """
    k = 2 * radius + 1
    h = torch.where(found, height, torch.full_like(height, float("nan")))
    maps = torch.stack([h, stats[0], stats[1], stats[2]])[None]
    H, W = height.shape
    centre = h[radius:H - radius, radius:W - radius].reshape(1, 1, -1)
    win = F.unfold(maps, k).view(HEIGHT_CHANNELS, k * k, -1) - centre
    win = torch.asinh(win).nan_to_num(0.0)
    extra = torch.stack([torch.log1p(stats[3]), found.float()])[None]
    rest = F.unfold(extra, k).view(2, k * k, -1)
    return torch.cat([win, rest]).reshape(CHANNELS * k * k, -1).T.contiguous()


@torch.inference_mode()
def refine_heights(refiner: HeightRefiner, height: np.ndarray, found: np.ndarray, stats: np.ndarray, *,
                   metres_per_unit: float = 1.0, device="cpu", block_rows: int = 64) -> np.ndarray:
    """The refined heights of the inner cells of a grid grown by ``refiner.radius`` cells on each side.

    ``height``/``stats`` are in CRS units (``metres_per_unit`` converts them); ``found`` is the search's mask.
    Cells not found keep their height. Rows go in blocks, so memory stays bounded by ``block_rows``.
    Returns (H - 2R, W - 2R) float32 in CRS units.
    """
    r = refiner.radius
    H, W = height.shape
    base = np.asarray(height[r:H - r, r:W - r], np.float32).copy()
    hm = torch.from_numpy(np.nan_to_num(np.asarray(height, np.float32)) * np.float32(metres_per_unit))
    fm = torch.from_numpy(np.asarray(found, bool))
    sm = torch.from_numpy(np.asarray(stats, np.float32).copy())
    sm[:3] *= metres_per_unit
    dev = torch.device(device)
    for r0 in range(0, H - 2 * r, block_rows):
        r1 = min(H - 2 * r, r0 + block_rows)
        sl = slice(r0, r1 + 2 * r)
        feats = window_features(hm[sl].to(dev), fm[sl].to(dev), sm[:, sl].to(dev), r)
        delta = refiner.correction(feats).cpu().numpy().reshape(r1 - r0, W - 2 * r)
        base[r0:r1] += delta / np.float32(metres_per_unit)
    inner = np.asarray(found[r:H - r, r:W - r], bool)
    return np.where(inner, base, np.asarray(height[r:H - r, r:W - r], np.float32))


# ----------------------------------------------------------------------------------------------- files
def save_refiner(refiner: HeightRefiner, path, *, base_weights_sha256: str, recipe: dict) -> None:
    """Write a refiner checkpoint atomically (tensors and plain data only: loads with ``weights_only=True``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    torch.save({"format": FORMAT, "radius": refiner.radius, "width": refiner.width, "deadband_m": refiner.deadband_m,
                "resolution_m": refiner.resolution_m, "state_dict": refiner.state_dict(), "base_weights_sha256": base_weights_sha256,
                "recipe": recipe}, tmp)
    tmp.replace(path)


def load_refiner(path) -> tuple[HeightRefiner, dict]:
    """(refiner in eval mode, checkpoint metadata); a clear ValueError for a file that is not one."""
    from geoimplicit.errors import WeightsError

    path = Path(path)
    if not path.exists():
        raise WeightsError("height refiner weights not found", path=path,
                          hint="train them with `geoimplicit train-refiner` or set extract.refiner: none")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ValueError("not a height refiner checkpoint")
        model = HeightRefiner(ckpt["radius"], ckpt["width"], ckpt.get("deadband_m", 0.0), ckpt.get("resolution_m", 0.5))
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:
        raise WeightsError(f"cannot read height refiner weights ({exc})", path=path,
                          hint="use a file written by `geoimplicit train-refiner`") from None
    return model.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
