"""Tiled inference: points (+ orthos) -> DSM on an exact grid, with the occupancy network.

Per tile: the points (and orthos) of the tile plus ``overlap_m`` of context are put in the tile's local frame,
encoded once, and the surface search (:mod:`.extract`) runs over every output cell of the tile's core, in
batches that fill the device. Cells farther than ``max_hole_m`` from any input point are nodata (or, with
``fill: prior``, the filled raster prior); cells where no height is occupied are nodata; nothing is invented.
With a height refiner (``extract.refiner``, :mod:`.refine`) each found height is then corrected from its window.
The CPU gives the same result as the GPU up to float rounding (bf16 decoding on CUDA: centimetres).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoimplicit.device import resolve_device
from geoimplicit.errors import EmptyTileError
from geoimplicit.dsm.occupancy.refine import cell_stats, refine_heights
from geoimplicit.progress import check_cancel

log = logging.getLogger(__name__)
NODATA = -9999.0


@dataclass
class Timings:
    """Seconds spent per stage (summed over tiles)."""

    select: float = 0.0
    frame: float = 0.0
    encode: float = 0.0
    search: float = 0.0
    columns: int = 0
    queries: int = 0
    tiles: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("select", "frame", "encode", "search", "columns", "queries", "tiles")}
        d.update(self.extra)
        return d


class OccupancyPredictor:
    """A loaded model on a device, ready to turn points into DSM tiles.

    Args:
        weights: a checkpoint path (default: the shipped ``occupancy_default.pt``), or a loaded checkpoint dict.
        device: "auto", "cpu", "cuda".
        amp: decode in bfloat16 on CUDA (default True); always float32 on the CPU.
        search_kernel: ``auto`` (torch for now: see ``AUTO_TRITON``; the environment variable
            ``GEOIMPLICIT_SEARCH_KERNEL`` overrides ``auto``), ``triton`` (the fused Triton surface search, CUDA)
            or ``torch``.
    """

    def __init__(self, weights=None, device: str = "auto", amp: bool = True, model=None, cfg=None,
                 search_kernel: str = "auto"):
        import torch

        from geoimplicit.dsm.occupancy.checkpoint import load_checkpoint, model_from_checkpoint

        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        if model is None:
            ckpt = weights if isinstance(weights, dict) else load_checkpoint(weights)
            model, cfg = model_from_checkpoint(ckpt, None if isinstance(weights, dict) else weights)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.amp_dtype = torch.bfloat16 if (amp and self.device.type == "cuda") else None
        self.timings = Timings()
        self.search_kernel = resolve_search_kernel(search_kernel, self.device, self.model.decoder)
        self.refiner = resolve_refiner(cfg.extract.refiner, weights)
        if self.refiner is not None:
            self.refiner.to(self.device)

    @property
    def n_images(self) -> int:
        return self.model.n_images

    def predict_tile(self, x, y, z, *, core_bounds, resolution: float, context_bounds=None,
                     metres_per_unit: float = 1.0, images=(),
                     true_ortho: bool = False, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """DSM of one tile: :meth:`frame_tile` (CPU) then :meth:`search_tile` (the device).

        Args:
            x, y, z: float64 points in CRS units covering ``context_bounds`` (the core plus the overlap).
            core_bounds: (left, bottom, right, top) of the output grid (multiples of ``resolution``).
            resolution: output cell size in CRS units.
            context_bounds: the area the model encodes (default: core_bounds).
            metres_per_unit: of the CRS (0.3048 for international feet).
            images: up to two (array (bands, rows, cols), affine transform) orthos.
            true_ortho: the orthos are true orthos (every roof on its footprint); read by models trained with
                ``true_ortho_input``, ignored by others.
            progress: ``progress(fraction, message)`` after the encoding and after each block of columns (on the
                CPU the columns go in about ten blocks, so that a tile shows progress); None: no calls.

        Returns:
            (rows, cols) float32 heights (NODATA where none) and a bool valid mask.
        """
        framed = self.frame_tile(x, y, z, core_bounds=core_bounds, resolution=resolution,
                                 context_bounds=context_bounds, metres_per_unit=metres_per_unit, images=images,
                                 true_ortho=true_ortho)
        return self.search_tile(framed, progress=progress)

    def _refines_at(self, resolution_m: float) -> bool:
        """The refiner applies at the cell size it was trained for (its windows and counts are per cell)."""
        if self.refiner is None:
            return False
        if abs(resolution_m - self.refiner.resolution_m) <= 1e-6 * self.refiner.resolution_m:
            return True
        if not getattr(self, "_said_resolution", False):
            self._said_resolution = True
            log.warning("height refiner off: it was trained at %g m cells, this DSM has %g m",
                        self.refiner.resolution_m, resolution_m)
        return False

    def frame_tile(self, x, y, z, *, core_bounds, resolution: float, context_bounds=None,
                   metres_per_unit: float = 1.0, images=(), true_ortho: bool = False) -> "FramedTile":
        """The CPU half of :meth:`predict_tile` (arguments there): local frame, points, orthos, output cells,
        support, search range. Thread-safe: the tiled run does it ahead of the device, in threads."""
        from geoimplicit.dsm.occupancy.extract import subcell_offsets
        from geoimplicit.dsm.occupancy.support import near_cells, point_cells

        cfg, mc, ec = self.cfg, self.cfg.model, self.cfg.extract
        t0 = time.perf_counter()
        context_bounds = core_bounds if context_bounds is None else context_bounds
        left, bottom, right, top = core_bounds
        cols = int(round((right - left) / resolution))
        rows = int(round((top - bottom) / resolution))
        if len(x) == 0:
            return FramedTile(rows, cols)
        frame, pts, imgs, flags = self._tile_inputs_host(x, y, z, context_bounds, metres_per_unit, images,
                                                         true_ortho)
        off = subcell_offsets(ec.readout_subcells, resolution)
        # the refiner sees a window around each cell: search a grid grown by its radius (no seams at tile edges)
        m = self.refiner.radius if self._refines_at(resolution * metres_per_unit) else 0
        left, top, rows, cols = left - m * resolution, top + m * resolution, rows + 2 * m, cols + 2 * m
        xy = _cell_queries(frame, left, top, rows, cols, resolution, off)
        # support: within max_hole_m of a cell holding an input point
        max_hole_px = ec.max_hole_m / metres_per_unit / resolution
        stats = cell_stats(x, y, z, left, top, rows, cols, resolution) if m else None
        has = stats[3] > 0 if m else point_cells(x, y, left, top, resolution, rows, cols)  # points binned once
        supported = near_cells(has, max(max_hole_px, 1.0))
        # the points' local height range, from the two extreme heights (the conversion is monotonic)
        margin = cfg.data.column_margin_m / mc.height_scale_m
        zn_min, zn_max = frame.z_to_local([np.min(z), np.max(z)])
        zlo, zhi = float(zn_min) - margin, float(zn_max) + margin
        self.timings.frame += time.perf_counter() - t0
        return FramedTile(rows, cols, frame, pts, imgs, flags, xy, supported, zlo, zhi, bool(true_ortho), m, stats,
                          metres_per_unit)

    def search_tile(self, t: "FramedTile", progress=None, raw: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The device half of :meth:`predict_tile`: encode, surface search, heights on the tile's grid.
        ``raw``: a dict that receives the heights before the refiner (``raw["heights"]``, NODATA where none)."""
        import torch

        from geoimplicit.dsm.occupancy.extract import reduce_subcells, search_model

        ec = self.cfg.extract
        n_sub = ec.readout_subcells ** 2
        out = np.full((t.rows, t.cols), NODATA, np.float32)
        if t.frame is None:
            return out, np.zeros((t.rows, t.cols), bool)
        t1 = time.perf_counter()
        dev = self.device
        with torch.inference_mode():
            imgs = None if t.imgs is None else _to_device(t.imgs, dev)
            flags = None if t.flags is None else torch.full(t.flags, float(t.true_ortho), device=dev)
            enc = self.encode_local(t.pts, t.frame, imgs, flags)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            self.timings.encode += t2 - t1
            q = _to_device(t.xy, dev)
            M = q.shape[0]
            lo = torch.full((M,), t.zlo, device=dev)
            hi = torch.full((M,), t.zhi, device=dev)
            batch = ec.batch_columns
            if progress is not None:
                progress(0.1, "encoded")
                if dev.type == "cpu":  # about ten blocks, so that the tile shows progress
                    batch = min(batch, max(4096, -(-M // 10)))
            zn, found = search_model(self.model, enc, q, lo, hi, coarse_steps=ec.coarse_steps,
                                     refine_steps=ec.refine_steps, batch_columns=batch, amp_dtype=self.amp_dtype,
                                     progress=None if progress is None else _column_progress(progress),
                                     readout=ec.readout, kernel=self.search_kernel)
            if ec.fill == "prior":
                _, prior = self.model.sample(enc, q[None])
                zn = torch.where(found, zn, prior[0].float())
                found = torch.ones_like(found)
            if n_sub > 1:
                zn, found = reduce_subcells(zn, found, n_sub, ec.readout_reduce)
            zn, found = zn.float().cpu().numpy(), found.cpu().numpy()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            self.timings.search += time.perf_counter() - t2
        self.timings.columns += M // n_sub
        self.timings.queries += M * (ec.coarse_steps + ec.refine_steps)
        self.timings.tiles += 1
        heights = t.frame.z_from_local(zn).reshape(t.rows, t.cols)
        valid = found.reshape(t.rows, t.cols) & (t.supported | (ec.fill == "prior"))
        if raw is not None:
            m = t.margin
            raw["heights"] = np.where(valid, heights, NODATA).astype(np.float32)[m:t.rows - m, m:t.cols - m]
        if t.margin:
            t3 = time.perf_counter()
            m = t.margin
            heights = refine_heights(self.refiner, heights, valid, t.stats, metres_per_unit=t.metres_per_unit,
                                     device=self.device)
            valid = valid[m:-m, m:-m]
            out = out[m:-m, m:-m]
            self.timings.extra["refine"] = self.timings.extra.get("refine", 0.0) + time.perf_counter() - t3
        out[valid] = heights[valid].astype(np.float32)
        return out, valid

    def tile_inputs(self, x, y, z, context_bounds, metres_per_unit: float = 1.0, images=(), true_ortho=False):
        """A tile's local frame, its points in it (N, 3) and its orthos on the feature grid (or None)."""
        import torch

        frame, pts, arr, flags = self._tile_inputs_host(x, y, z, context_bounds, metres_per_unit, images, true_ortho)
        imgs = None if arr is None else torch.from_numpy(arr).to(self.device)
        flags = None if flags is None else torch.full(flags, float(bool(true_ortho)), device=self.device)
        return frame, pts, imgs, flags

    def _tile_inputs_host(self, x, y, z, context_bounds, metres_per_unit, images, true_ortho):
        """:meth:`tile_inputs` in host memory: the orthos as a numpy array, the flags as their shape."""
        from geoimplicit.dsm.occupancy.normalize import PatchFrame, resample_image_to_frame

        mc = self.cfg.model
        frame = PatchFrame.from_bounds(context_bounds, PatchFrame.reference_height(z), metres_per_unit=metres_per_unit,
                                       cell_m=mc.feature_cell_m, height_scale_m=mc.height_scale_m,
                                       multiple=self.model.grid_multiple)
        pts = frame.points_to_local(x, y, z)
        arr = flags = None
        if self.n_images and images:
            arr = np.zeros((1, self.n_images, 4) + frame.shape, np.float32)
            for k, (a, tr) in enumerate(list(images)[: self.n_images]):
                resample_image_to_frame(a, tr, frame, out=arr[0, k])
            flags = (1, self.n_images)
        return frame, pts, arr, flags

    def encode_local(self, pts: np.ndarray, frame, imgs=None, flags=None) -> dict:
        """Encode a tile's local points (and orthos) once: the feature plane the decoder samples (float32)."""
        import torch

        dev = self.device
        p = torch.from_numpy(pts).to(dev)
        b = torch.zeros(len(pts), dtype=torch.int64, device=dev)
        with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            enc = self.model.encode(p, b, 1, frame.shape, imgs, flags)
        return {k: v.float() for k, v in enc.items()}


@dataclass
class FramedTile:
    """A tile ready for the device (:meth:`OccupancyPredictor.frame_tile`); ``frame`` None: no points."""

    rows: int
    cols: int
    frame: object = None
    pts: np.ndarray | None = None
    imgs: np.ndarray | None = None
    flags: tuple | None = None
    xy: np.ndarray | None = None
    supported: np.ndarray | None = None
    zlo: float = 0.0
    zhi: float = 0.0
    true_ortho: bool = False
    margin: int = 0  # cells the grid is grown by on each side for the refiner (rows/cols include them)
    stats: np.ndarray | None = None  # refine.cell_stats of the grown grid
    metres_per_unit: float = 1.0


def resolve_search_kernel(setting: str, device, decoder) -> str:
    """``triton`` or ``torch``: the surface search's kernel for ``setting`` (see :class:`OccupancyPredictor`) on
    ``device`` (a torch.device)."""
    from geoimplicit.dsm.occupancy import search_kernel

    if setting == "auto":
        setting = os.environ.get("GEOIMPLICIT_SEARCH_KERNEL", "auto")
    if setting not in ("auto", "triton", "torch"):
        raise ValueError(f"unknown search kernel {setting!r}; one of auto, triton, torch")
    usable = search_kernel.available(device) and search_kernel.supports(decoder)
    if setting == "triton" and not usable:
        raise ValueError(f"the fused surface search needs CUDA and Triton (device {device}, Triton "
                         f"{'installed' if search_kernel.triton_installed() else 'missing'})")
    if setting == "auto":
        return "triton" if AUTO_TRITON and usable and device.type == "cuda" else "torch"
    return setting


# ``auto`` picks the fused kernel only once it has been checked and timed on a GPU against the torch search
# (bench/search_kernel.py); until then it is opt-in (``triton``, or GEOIMPLICIT_SEARCH_KERNEL=triton).
AUTO_TRITON = False


def resolve_refiner(setting: str, weights):
    """The height refiner ``extract.refiner`` names: ``none``; a path; or ``auto`` = the shipped refiner when the
    weights are the file it was trained on (its checkpoint records their SHA-256), else none."""
    from geoimplicit.dsm.occupancy.checkpoint import DEFAULT_WEIGHTS
    from geoimplicit.dsm.occupancy.refine import DEFAULT_PATH, file_sha256, load_refiner

    if setting == "none":
        return None
    if setting != "auto":
        return load_refiner(setting)[0]
    path = DEFAULT_WEIGHTS if weights is None else weights
    if isinstance(path, dict) or not DEFAULT_PATH.exists() or not Path(path).exists():
        return None
    refiner, meta = load_refiner(DEFAULT_PATH)
    return refiner if meta.get("base_weights_sha256") == file_sha256(path) else None


def _cell_queries(frame, left: float, top: float, rows: int, cols: int, resolution: float, off) -> np.ndarray:
    """(rows * cols * n_sub, 2) float32 local metres of the output cells' sample points (cell centres plus the
    sub-cell offsets ``off``), cell-major: x depends on the column only and y on the row only, so each is
    converted once per column (row) and broadcast, the same numbers as converting every point."""
    cx = left + (np.arange(cols) + 0.5) * resolution
    cy = top - (np.arange(rows) + 0.5) * resolution
    xy = np.empty((rows, cols, len(off), 2), np.float32)
    xy[..., 0] = frame.x_to_local(cx[:, None] + off[:, 0])
    xy[..., 1] = frame.y_to_local(cy[:, None] + off[:, 1])[:, None, :]
    return xy.reshape(-1, 2)


def _to_device(array: np.ndarray, dev):
    """A host array on ``dev``: through pinned memory without waiting on CUDA (the copy overlaps), else as is."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array))
    if dev.type != "cuda":
        return t
    return t.pin_memory().to(dev, non_blocking=True)


def _column_progress(progress):
    """``progress(fraction, message)`` of a tile from the search's ``(columns done, columns)``."""

    def report(done: int, total: int) -> None:
        progress(0.1 + 0.9 * done / total, f"{done:,}/{total:,} columns")

    return report


def predict_dsm(predictor: OccupancyPredictor, points: dict, bounds, resolution: float, *,
                metres_per_unit: float = 1.0, images=(), true_ortho: bool = False, tile_size=None, overlap=None,
                progress=None, cancel=None) -> tuple[np.ndarray, np.ndarray]:
    """DSM over ``bounds`` (multiples of ``resolution``) from in-memory points, tile by tile.

    ``tile_size`` and ``overlap`` are in CRS units (default: the config's ``infer`` values in metres);
    ``true_ortho``: see :meth:`OccupancyPredictor.predict_tile`.
    Returns (rows, cols) float32 heights (NODATA = -9999 where none) and the valid mask.
    """
    ic = predictor.cfg.infer
    tile = float(tile_size) if tile_size else ic.tile_size_m / metres_per_unit
    ovl = float(overlap) if overlap is not None else ic.overlap_m / metres_per_unit
    tile = max(resolution, round(tile / resolution) * resolution)
    left, bottom, right, top = bounds
    cols = int(round((right - left) / resolution))
    rows = int(round((top - bottom) / resolution))
    dsm = np.full((rows, cols), NODATA, np.float32)
    valid = np.zeros((rows, cols), bool)
    x, y, z = (np.asarray(points[k], np.float64) for k in ("x", "y", "z"))
    t0 = time.perf_counter()
    order = np.argsort(x, kind="stable")
    x, y, z = x[order], y[order], z[order]
    predictor.timings.select += time.perf_counter() - t0
    tile_px = int(round(tile / resolution))
    n_tr, n_tc = math.ceil(rows / tile_px), math.ceil(cols / tile_px)
    total, done = n_tr * n_tc, 0
    for tc in range(n_tc):
        c0, c1 = tc * tile_px, min(cols, (tc + 1) * tile_px)
        tl, tr = left + c0 * resolution, left + c1 * resolution
        t0 = time.perf_counter()
        i0, i1 = np.searchsorted(x, [tl - ovl, tr + ovl])
        sx, sy, sz = x[i0:i1], y[i0:i1], z[i0:i1]
        predictor.timings.select += time.perf_counter() - t0
        for tr_ in range(n_tr):
            check_cancel(cancel)
            r0, r1 = tr_ * tile_px, min(rows, (tr_ + 1) * tile_px)
            tt, tb = top - r0 * resolution, top - r1 * resolution
            t0 = time.perf_counter()
            m = (sy >= tb - ovl) & (sy < tt + ovl)
            predictor.timings.select += time.perf_counter() - t0
            core = (tl, tb, tr, tt)
            ctx = (tl - ovl, tb - ovl, tr + ovl, tt + ovl)
            img_t = [_crop_image(a, t, ctx) for a, t in images]
            h, v = predictor.predict_tile(sx[m], sy[m], sz[m], core_bounds=core, context_bounds=ctx,
                                          resolution=resolution, metres_per_unit=metres_per_unit, images=img_t,
                                          true_ortho=true_ortho)
            dsm[r0:r1, c0:c1] = h
            valid[r0:r1, c0:c1] = v
            done += 1
            if progress:
                progress(done, total, "tiles", f"tile {done}/{total}")
    return dsm, valid


def _crop_image(array, transform, bounds, pad: int = 2):
    """The window of an in-memory image covering bounds (and its transform), to keep resampling local."""
    from affine import Affine

    inv = ~transform
    c0, r0 = inv * (bounds[0], bounds[3])
    c1, r1 = inv * (bounds[2], bounds[1])
    h, w = array.shape[-2:]
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    c0, r0 = max(0, int(math.floor(c0)) - pad), max(0, int(math.floor(r0)) - pad)
    c1, r1 = min(w, int(math.ceil(c1)) + pad), min(h, int(math.ceil(r1)) + pad)
    if c1 <= c0 or r1 <= r0:
        return array[..., :1, :1] * 0, transform
    return array[..., r0:r1, c0:c1], transform * Affine.translation(c0, r0)


def raster_max_prior(points: dict, bounds, resolution: float, fill_max_px: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A quick in-memory raster baseline (cell max, holes filled by nearest within ``fill_max_px``) used for
    validation during training when :mod:`geoimplicit.dsm.rasterize` is not wanted."""
    from scipy import ndimage

    left, bottom, right, top = bounds
    cols = int(round((right - left) / resolution))
    rows = int(round((top - bottom) / resolution))
    col = np.floor((points["x"] - left) / resolution).astype(np.int64)
    row = np.floor((top - points["y"]) / resolution).astype(np.int64)
    ok = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    flat = row[ok] * cols + col[ok]
    out = np.full(rows * cols, -np.inf)
    np.maximum.at(out, flat, points["z"][ok])
    out = out.reshape(rows, cols)
    has = np.isfinite(out)
    if not has.any():
        raise EmptyTileError("no points inside the bounds")
    dist, (ir, ic) = ndimage.distance_transform_edt(~has, return_indices=True)
    filled = out[ir, ic]
    valid = dist <= fill_max_px
    return np.where(valid, filled, NODATA).astype(np.float32), valid
