"""Meshes from the occupancy network: one tile's field, its surface, and an in-memory tiled run.

Per tile, the points (and orthos) of the tile and its context are encoded once, as for the DSM
(:meth:`geoimplicit.dsm.occupancy.infer.OccupancyPredictor.tile_inputs`); the field is the decoder's logit
(level 0, occupancy probability 0.5) at any 3D point. The surface is extracted on the run's lattice over the
tile's core (:func:`geoimplicit.mesh.extract.extract_box`) between the lowest and highest input point of the
tile (plus a margin), and tiles are stitched (:mod:`geoimplicit.mesh.stitch`).

With a height refiner at the mesh's cell size (the DSM's, :mod:`geoimplicit.dsm.occupancy.refine`), the field
takes its corrections (:class:`RefinedField`): the mesh's top surface is the refined DSM's wherever the refiner
moved a cell, so mesh and DSM agree (validation seeds 1001-1003: Chamfer 0.170 -> 0.142 m on 1001).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from geoimplicit.mesh.extract import ExtractOptions, TileSurface, extract_box
from geoimplicit.mesh.lattice import Lattice
from geoimplicit.progress import check_cancel


class OccupancyField:
    """The occupancy network of one encoded tile as a field (CRS-unit offsets from the tile frame's origin)."""

    level = 0.0
    inside = "above"

    def __init__(self, predictor, frame, enc: dict):
        self.model, self.enc, self.amp = predictor.model, enc, predictor.amp_dtype
        self.device = predictor.device
        self.origin = tuple(frame.origin)
        mpu = frame.metres_per_unit
        self.scale = torch.tensor([mpu, mpu, mpu / frame.height_scale_m], device=self.device)

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model.decode(self.enc, (p * self.scale)[None])[0].float()


class RefinedField:
    """The occupancy field with the height refiner's per-cell corrections.

    Where the refiner lowered a cell, nothing above its refined height is occupied; where it raised one, the
    column is filled up to it; elsewhere the field is unchanged. Cells are those of a grid whose centres are
    the lattice nodes, so a corrected cell's edges fall half-way between nodes: vertical walls, as in the DSM.
    """

    level = 0.0
    inside = "above"
    slope_per_m = 10.0  # logits per metre of the clamp: only its sign and the last bisection bracket use it

    def __init__(self, field, refined: np.ndarray, raw: np.ndarray, left: float, top: float, spacing: float,
                 metres_per_unit: float = 1.0):
        self.field, self.origin, self.device = field, field.origin, field.device
        ok = (refined > NODATA_CUT) & (raw > NODATA_CUT)
        moved = np.where(ok, np.sign(refined - raw), 0).astype(np.int8)
        self.sign = torch.from_numpy(moved).to(self.device)
        self.height = torch.from_numpy(np.where(ok, refined - self.origin[2], 0).astype(np.float32)).to(self.device)
        self.left, self.top = float(left - self.origin[0]), float(top - self.origin[1])
        self.spacing, self.slope = float(spacing), self.slope_per_m * float(metres_per_unit)

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        f = self.field(p)
        rows, cols = self.sign.shape
        col = torch.floor((p[:, 0] - self.left) / self.spacing).long().clamp_(0, cols - 1)
        row = torch.floor((self.top - p[:, 1]) / self.spacing).long().clamp_(0, rows - 1)
        sign = self.sign[row, col]
        clamp = self.slope * (self.height[row, col] - p[:, 2])
        return torch.where(sign < 0, torch.minimum(f, clamp), torch.where(sign > 0, torch.maximum(f, clamp), f))


NODATA_CUT = -9000.0  # heights at or below are the DSM's NODATA (-9999)


def refined_heights(predictor, x, y, z, *, lattice: Lattice, lo, hi, context_bounds, metres_per_unit, images,
                    true_ortho, grow: int = 2):
    """The tile's refined and raw occupancy heights on the cells centred on the box's nodes (grown by ``grow``
    cells), as the DSM computes them; None where the refiner does not apply at this cell size."""
    s = lattice.spacing
    if not predictor._refines_at(s * metres_per_unit):
        return None
    left = lattice.origin[0] + (lo[0] - 0.5 - grow) * s
    bottom = lattice.origin[1] + (lo[1] - 0.5 - grow) * s
    right = lattice.origin[0] + (hi[0] + 0.5 + grow) * s
    top = lattice.origin[1] + (hi[1] + 0.5 + grow) * s
    framed = predictor.frame_tile(x, y, z, core_bounds=(left, bottom, right, top), resolution=s,
                                  context_bounds=context_bounds, metres_per_unit=metres_per_unit, images=images,
                                  true_ortho=true_ortho)
    raw = {}
    refined, _ = predictor.search_tile(framed, raw=raw)
    return refined, raw.get("heights", refined), left, top


def ortho_colour(image: np.ndarray, transform):
    """``f(x, y) -> (N, 3) uint8``: the nearest pixel of an ortho (bands, rows, cols) at CRS points."""
    img = np.asarray(image)[:3]
    if img.dtype != np.uint8:
        top = max(float(np.nanpercentile(img, 99.5)), 1e-6) if img.size else 1.0
        img = np.clip(np.nan_to_num(img.astype(np.float64)) / top * 255.0, 0, 255).astype(np.uint8)
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    inv = ~transform

    def colour(x, y):
        col = np.floor(inv.a * x + inv.b * y + inv.c).astype(np.int64).clip(0, img.shape[2] - 1)
        row = np.floor(inv.d * x + inv.e * y + inv.f).astype(np.int64).clip(0, img.shape[1] - 1)
        return img[:, row, col].T

    return colour


def tile_box(lattice: Lattice, core_bounds, z_lo: float, z_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Node bounds (lo, hi) of a tile's core (multiples of the lattice spacing) and a height range."""
    left, bottom, right, top = core_bounds
    lo = lattice.index_of(left, bottom, z_lo)  # floor: neighbouring cores share their border node index
    hi = lattice.index_of(right, top, z_hi)
    lo[2] = lattice.index_of(0, 0, z_lo)[2]
    hi[2] = lattice.index_of(0, 0, z_hi, rounding=np.ceil)[2]
    return lo, hi


def mesh_tile(predictor, x, y, z, *, core_bounds, context_bounds, lattice: Lattice, metres_per_unit: float = 1.0,
              images=(), true_ortho: bool = False, options: ExtractOptions | None = None, cell_filter=None,
              crs_wkt=None, cancel=None) -> TileSurface | None:
    """The occupancy surface of one tile (None without points)."""
    if len(x) == 0:
        return None
    frame, pts, imgs, flags = predictor.tile_inputs(x, y, z, context_bounds, metres_per_unit, images, true_ortho)
    with torch.inference_mode():
        enc = predictor.encode_local(pts, frame, imgs, flags)
    field = OccupancyField(predictor, frame, enc)
    margin = predictor.cfg.data.column_margin_m / metres_per_unit
    lo, hi = tile_box(lattice, core_bounds, float(np.min(z)) - margin, float(np.max(z)) + margin)
    heights = refined_heights(predictor, x, y, z, lattice=lattice, lo=lo, hi=hi, context_bounds=context_bounds,
                              metres_per_unit=metres_per_unit, images=images, true_ortho=true_ortho)
    if heights is not None:
        field = RefinedField(field, *heights, lattice.spacing, metres_per_unit)
    colour = ortho_colour(*images[0]) if images else None
    return extract_box(field, lattice, lo, hi, options=options, cell_filter=cell_filter, colour=colour,
                       crs_wkt=crs_wkt, cancel=cancel)


def mesh_from_points(predictor, points: dict, bounds, resolution: float, *, metres_per_unit: float = 1.0,
                     images=(), true_ortho: bool = False, tile_size=None, overlap=None, options=None, crs_wkt=None,
                     lattice: Lattice | None = None, progress=None, cancel=None):
    """A stitched mesh over ``bounds`` from in-memory points, tile by tile (benchmarks and tests; the command
    runs tiles through the job layer). ``tile_size``/``overlap`` in CRS units (default 128 m / 16 m)."""
    from geoimplicit.dsm.occupancy.infer import _crop_image
    from geoimplicit.mesh.stitch import stitch_tiles

    tile = float(tile_size) if tile_size else 128.0 / metres_per_unit
    ovl = float(overlap) if overlap is not None else 16.0 / metres_per_unit
    tile = max(resolution, round(tile / resolution) * resolution)
    x, y, z = (np.asarray(points[k], np.float64) for k in ("x", "y", "z"))
    # nodes on the DSM grid's cell centres, where the features are sampled (validation seeds 1001, 1002:
    # Chamfer 0.134 / 0.144 m against 0.139 / 0.148 with nodes on the cell corners)
    lattice = lattice or Lattice.around(bounds, float(z.min()) - 2 * predictor.cfg.data.column_margin_m /
                                        metres_per_unit, resolution, offset=0.5)
    inside = box_filter(bounds)
    left, bottom, right, top = bounds
    n_c, n_r = math.ceil((right - left) / tile - 1e-9), math.ceil((top - bottom) / tile - 1e-9)
    tiles = []
    for r in range(n_r):
        for c in range(n_c):
            check_cancel(cancel)
            core = (left + c * tile, max(bottom, top - (r + 1) * tile), min(right, left + (c + 1) * tile),
                    top - r * tile)
            ctx = (core[0] - ovl, core[1] - ovl, core[2] + ovl, core[3] + ovl)
            m = (x >= ctx[0]) & (x < ctx[2]) & (y >= ctx[1]) & (y < ctx[3])
            imgs = [_crop_image(a, t, ctx) for a, t in images]
            surface = mesh_tile(predictor, x[m], y[m], z[m], core_bounds=core, context_bounds=ctx, lattice=lattice,
                                metres_per_unit=metres_per_unit, images=imgs, true_ortho=true_ortho,
                                options=options, cell_filter=inside, crs_wkt=crs_wkt, cancel=cancel)
            if surface is not None:
                tiles.append(surface)
            if progress:
                progress(r * n_c + c + 1, n_r * n_c, "tiles", f"tile {r * n_c + c + 1}/{n_r * n_c}")
    return stitch_tiles(tiles, lattice, cell_filter=inside, crs_wkt=crs_wkt, cancel=cancel)


def box_filter(bounds):
    """``f(x, y)``: cell centres strictly inside ``bounds`` (cells centred on the border straddle it)."""
    left, bottom, right, top = bounds
    return lambda x, y: (x > left) & (x < right) & (y > bottom) & (y < top)


def occupancy_tile_surface(method, predictor, tile, points: dict, ortho: list, lattice: Lattice,
                           options: ExtractOptions, cell_filter=None, crs_wkt=None) -> TileSurface | None:
    """The tile job's surface for ``--method occupancy`` (the DSM method's prepared predictor and orthos)."""
    images = [(np.asarray(r.array)[:3], r.transform) for r in ortho][:2]
    mpu = getattr(method, "_mpu", 1.0)
    return mesh_tile(predictor, np.asarray(points["x"], np.float64), np.asarray(points["y"], np.float64),
                     np.asarray(points["z"], np.float64), core_bounds=tile.core_bounds,
                     context_bounds=getattr(tile, "context_bounds", None) or tile.bounds,
                     lattice=lattice, metres_per_unit=mpu, images=images, true_ortho=method.true_ortho,
                     options=options, cell_filter=cell_filter, crs_wkt=crs_wkt)
