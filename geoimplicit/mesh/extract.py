"""Surface extraction from an implicit field on one box of the global lattice: MISE, then marching cubes.

MISE (Multiresolution IsoSurface Extraction, Occupancy Networks' ``libmise``): the field is evaluated on a
coarse lattice (every ``coarse_stride`` nodes); only cells whose corners straddle the level are split in 8,
down to the lattice spacing, so the cost follows the surface, not the volume. A last *closure* pass adds every
cell across a face the surface crosses, until none is missing, so the surface has no holes where the coarse
pass was too coarse. Marching cubes (:mod:`.marching`) then runs on exactly those cells; vertices are moved
onto the level set by bisection along their lattice edge, normals come from the field's gradient (central
differences), colours from an ortho where one is given. The field is queried in batches.

A *field* is any object with ``origin`` ((x, y, z) float64 CRS coordinates of its local frame), ``level``,
``inside`` ("above": occupancy, inside where the value exceeds the level; "below": a signed distance),
``device`` and ``__call__(p)`` mapping (N, 3) float32 CRS-unit offsets from ``origin`` to (N,) values.

For tiled runs (:mod:`.stitch`) the box is a tile's core; its *ring* (the two node planes on each side) is
evaluated densely and kept, so that the seams can later be made to agree between neighbouring tiles.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from geoimplicit.mesh.core import Mesh
from geoimplicit.mesh.lattice import Lattice, check_range, key_to_ijk, node_key
from geoimplicit.mesh.marching import cell_corners, crossing_t, march_cells, straddles
from geoimplicit.progress import check_cancel

log = logging.getLogger(__name__)

_FACES = [(axis, side) for axis in range(3) for side in (0, 1)]


@dataclass
class ExtractOptions:
    """How a surface is extracted.

    Attributes:
        coarse_stride: lattice cells per coarse MISE cell (a power of two; 1 = no multiresolution).
        refine_steps: bisection steps moving each vertex onto the level set along its edge.
        normals: compute normals from the field's gradient (else from the faces).
        batch_points: field queries per batch (bounds memory).
        max_closure_passes: safety bound of the closure pass.
    """

    coarse_stride: int = 8
    refine_steps: int = 4
    normals: bool = True
    batch_points: int = 262144
    max_closure_passes: int = 256

    def __post_init__(self):
        s = int(self.coarse_stride)
        if s < 1 or s & (s - 1):
            raise ValueError(f"coarse_stride must be a power of two, got {self.coarse_stride}")


@dataclass
class TileSurface:
    """The surface of one lattice box, ready to stitch.

    Attributes:
        mesh: the triangles of the box's cells (vertex ``keys`` set).
        boundary_face: (F,) bool, the face lies in a cell of the box's outer ring (re-made when stitching).
        box: (i0, j0, k0, i1, j1, k1) node bounds of the box (cells i0..i1-1 ...).
        ring_keys, ring_values: node keys and signed values of the ring nodes (sorted by key).
        stats: counts (queries, cells, passes).
    """

    mesh: Mesh
    boundary_face: np.ndarray
    box: tuple
    ring_keys: np.ndarray
    ring_values: np.ndarray
    stats: dict


class FieldSampler:
    """Signed values of a field at lattice nodes or points, with a cache of the nodes already evaluated."""

    def __init__(self, field, lattice: Lattice, base: np.ndarray, batch_points: int):
        self.field, self.lattice, self.batch = field, lattice, int(batch_points)
        self.device = torch.device(getattr(field, "device", "cpu"))
        self.base = torch.as_tensor(np.asarray(base, np.int64), device=self.device)
        offset = np.asarray(lattice.origin) + np.asarray(base) * lattice.spacing - np.asarray(field.origin)
        self.offset = torch.as_tensor(offset, dtype=torch.float32, device=self.device)
        self.sign = 1.0 if getattr(field, "inside", "above") == "above" else -1.0
        self.keys = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.values = torch.zeros(0, dtype=torch.float32, device=self.device)
        self.queries = 0

    def local(self, ijk: torch.Tensor) -> torch.Tensor:
        """Node indices (float or int, (..., 3)) -> float32 offsets from the field's origin."""
        return (ijk - self.base).float() * self.lattice.spacing + self.offset

    def at_points(self, p: torch.Tensor) -> torch.Tensor:
        """Signed values (positive inside) at local points (N, 3), in batches."""
        out = []
        with torch.no_grad():
            for s in range(0, p.shape[0], self.batch):
                v = self.field(p[s : s + self.batch])
                out.append(self.sign * (v.float() - float(self.field.level)))
        self.queries += p.shape[0]
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def at_nodes(self, ijk: torch.Tensor) -> torch.Tensor:
        """Signed values at nodes (..., 3), evaluating only those not seen before."""
        shape = ijk.shape[:-1]
        keys = node_key(ijk.reshape(-1, 3))
        uniq, inverse = torch.unique(keys, return_inverse=True)
        vals, found = self._lookup(uniq)
        if not bool(found.all()):
            new = uniq[~found]
            new_v = self.at_points(self.local(key_to_ijk(new)[0]))
            vals[~found] = new_v
            self._insert(new, new_v)
        return vals[inverse].reshape(shape)

    def _lookup(self, keys):
        if not self.keys.numel():
            return torch.zeros(keys.shape, device=self.device), torch.zeros(keys.shape, dtype=torch.bool,
                                                                            device=self.device)
        pos = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        found = self.keys[pos] == keys
        return torch.where(found, self.values[pos], torch.zeros_like(self.values[pos])), found

    def _insert(self, keys, values):
        k = torch.cat([self.keys, keys])
        order = torch.argsort(k)
        self.keys, self.values = k[order], torch.cat([self.values, values])[order]


def _box_nodes(lo, hi, device) -> torch.Tensor:
    axes = [torch.arange(int(a), int(b) + 1, device=device) for a, b in zip(lo, hi)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))


def ring_cells(lo, hi, device) -> torch.Tensor:
    """Cells of the box's outer ring in x and y (all heights), in (i, j, k) order: the ones stitching re-makes."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    columns = _box_nodes(lo[:2], hi[:2] - 1, device)  # the ring is picked in 2D: the box's cells are millions
    columns = columns[is_ring_cell(columns, lo, hi)]
    k = torch.arange(int(lo[2]), int(hi[2]), device=device)
    return torch.cat([columns.repeat_interleave(len(k), 0), k.repeat(len(columns))[:, None]], 1)


def is_ring_cell(cells: torch.Tensor, lo, hi) -> torch.Tensor:
    i, j = cells[:, 0], cells[:, 1]
    return (i == int(lo[0])) | (i == int(hi[0]) - 1) | (j == int(lo[1])) | (j == int(hi[1]) - 1)


def _in_box(cells, lo, hi) -> torch.Tensor:
    lo_t = torch.as_tensor(np.asarray(lo), device=cells.device)
    hi_t = torch.as_tensor(np.asarray(hi), device=cells.device)
    return ((cells >= lo_t) & (cells < hi_t)).all(1)


def mise_cells(sampler: FieldSampler, lo, hi, stride: int, cancel=None) -> torch.Tensor:
    """Lattice cells inside the box [lo, hi) whose corners straddle the level, found coarse to fine."""
    dev = sampler.device
    lo_c = (np.asarray(lo) // stride) * stride
    cells = _box_nodes(lo_c, np.asarray(hi) - 1, dev)
    cells = cells[((cells - torch.as_tensor(lo_c, device=dev)) % stride == 0).all(1)]
    while True:
        check_cancel(cancel)
        g = sampler.at_nodes(cell_corners(cells, stride))
        cells = cells[straddles(g)]
        if stride == 1:
            return cells[_in_box(cells, lo, hi)]
        stride //= 2
        cells = cell_corners(cells, stride).reshape(-1, 3)
        lo_t = torch.as_tensor(np.asarray(lo) - stride + 1, device=dev)  # children that can still touch the box
        hi_t = torch.as_tensor(np.asarray(hi), device=dev)
        cells = cells[((cells >= lo_t) & (cells < hi_t)).all(1)]


def close_surface(sampler: FieldSampler, cells: torch.Tensor, lo, hi, max_passes: int,
                  cancel=None) -> tuple[torch.Tensor, int]:
    """Add the cells across every face the surface crosses (inside the box) until none is missing."""
    dev = cells.device
    have = torch.unique(node_key(cells))
    frontier = cells
    for passes in range(1, max_passes + 1):
        check_cancel(cancel)
        g = sampler.at_nodes(cell_corners(frontier))
        found = []
        for axis, side in _FACES:
            corner_ids = [c for c in range(8) if ((c >> axis) & 1) == side]
            inside = g[:, corner_ids] > 0
            crossed = inside.any(1) & ~inside.all(1)
            step = torch.zeros(3, dtype=torch.int64, device=dev)
            step[axis] = 1 if side else -1
            found.append(frontier[crossed] + step)
        cand = torch.cat(found)
        cand = cand[_in_box(cand, lo, hi)]
        keys = torch.unique(node_key(cand))
        new = keys[~torch.isin(keys, have)]
        if not new.numel():
            return cells, passes
        have = torch.unique(torch.cat([have, new]))
        frontier = key_to_ijk(new)[0]
        cells = torch.cat([cells, frontier])
    log.warning("surface closure stopped after %d passes; the mesh may have holes", max_passes)
    return cells, max_passes


def vertices_on_edges(sampler: FieldSampler, keys: torch.Tensor, steps: int) -> torch.Tensor:
    """Local positions (V, 3) of the level crossing on each lattice edge ``keys``, refined by bisection."""
    ijk, axis = key_to_ijk(keys)
    unit = torch.nn.functional.one_hot(axis, 3)
    a, b = ijk, ijk + unit
    ga, gb = sampler.at_nodes(a), sampler.at_nodes(b)
    a_in = (ga > 0)[:, None]
    p_in = torch.where(a_in, sampler.local(a), sampler.local(b))
    p_out = torch.where(a_in, sampler.local(b), sampler.local(a))
    g_in, g_out = torch.where(a_in[:, 0], ga, gb), torch.where(a_in[:, 0], gb, ga)
    for _ in range(steps):
        mid = 0.5 * (p_in + p_out)
        gm = sampler.at_points(mid)
        inside = (gm > 0)[:, None]
        p_in, p_out = torch.where(inside, mid, p_in), torch.where(inside, p_out, mid)
        g_in, g_out = torch.where(inside[:, 0], gm, g_in), torch.where(inside[:, 0], g_out, gm)
    t = crossing_t(g_in, g_out)[:, None]
    return p_in + t * (p_out - p_in)


def field_normals(sampler: FieldSampler, p: torch.Tensor) -> torch.Tensor:
    """Unit normals (towards outside) from central differences of the field at local points (V, 3)."""
    h = 0.5 * sampler.lattice.spacing
    eye = torch.eye(3, device=p.device) * h
    offsets = torch.cat([eye, -eye])  # (6, 3)
    g = sampler.at_points((p[:, None, :] + offsets[None]).reshape(-1, 3)).reshape(-1, 6)
    grad = g[:, :3] - g[:, 3:]
    n = -grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return n


def extract_box(field, lattice: Lattice, lo, hi, *, options: ExtractOptions | None = None, ring: bool = True,
                cell_filter=None, colour=None, crs_wkt=None, cancel=None) -> TileSurface:
    """The surface of ``field`` in the lattice cells lo..hi-1 (node indices, (3,) each).

    Args:
        field: see the module docstring.
        lattice: the global lattice (shared by all tiles of a run).
        lo, hi: node bounds of the box; the box's cells are the extracted region.
        options: :class:`ExtractOptions`.
        ring: evaluate and keep the ring nodes (needed to stitch tiles).
        cell_filter: ``f(x, y) -> bool array`` of CRS cell-centre coordinates: the cells to keep (the AOI).
        colour: ``f(x, y) -> (N, 3) uint8`` vertex colours (an ortho sampler), or None.
        crs_wkt: recorded on the mesh.
    """
    opt = options or ExtractOptions()
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    check_range(lo, hi)
    sampler = FieldSampler(field, lattice, lo, opt.batch_points)
    dev = sampler.device
    clock = _Clock(dev)
    seeds = [mise_cells(sampler, lo, hi, int(opt.coarse_stride), cancel)]
    ring_k = torch.zeros(0, dtype=torch.int64, device=dev)
    ring_v = torch.zeros(0, device=dev)
    if ring:
        rc = ring_cells(lo, hi, dev)
        g = sampler.at_nodes(cell_corners(rc))
        seeds.append(rc[straddles(g)])
        nodes = torch.unique(node_key(cell_corners(rc).reshape(-1, 3)))
        ring_k, ring_v = nodes, sampler.at_nodes(key_to_ijk(nodes)[0])
    cells = key_to_ijk(torch.unique(node_key(torch.cat(seeds))))[0]
    clock("mise_s")
    cells, passes = close_surface(sampler, cells, lo, hi, opt.max_closure_passes, cancel)
    clock("closure_s")
    if cell_filter is not None and cells.numel():
        centre = lattice.position(cells.cpu().numpy() + 0.5)
        cells = cells[torch.as_tensor(np.asarray(cell_filter(centre[:, 0], centre[:, 1]), bool), device=dev)]
    mesh, boundary = surface_of_cells(sampler, cells, lo, hi, opt, colour, crs_wkt, cancel, clock)
    stats = {"queries": int(sampler.queries), "cells": int(cells.shape[0]), "closure_passes": int(passes),
             "triangles": mesh.n_faces, **clock.seconds}
    return TileSurface(mesh, boundary, tuple(int(v) for v in (*lo, *hi)), ring_k.cpu().numpy(),
                       ring_v.cpu().numpy(), stats)


def surface_of_cells(sampler: FieldSampler, cells, lo, hi, opt: ExtractOptions, colour=None, crs_wkt=None,
                     cancel=None, clock=None) -> tuple[Mesh, np.ndarray]:
    """Marching cubes on ``cells``, vertices refined, normals and colours: a keyed mesh and the ring-face mask."""
    check_cancel(cancel)
    clock = clock or _Clock(sampler.device)
    g = sampler.at_nodes(cell_corners(cells))
    tri_keys, tri_cell = march_cells(cells, g)
    keys, inverse = torch.unique(tri_keys.reshape(-1), return_inverse=True)
    clock("march_s")
    p = vertices_on_edges(sampler, keys, opt.refine_steps)
    clock("refine_s")
    normals = field_normals(sampler, p).cpu().numpy().astype(np.float32) if opt.normals else None
    clock("normals_s")
    base = np.asarray(sampler.field.origin, np.float64)
    vertices = p.double().cpu().numpy() + base
    faces = inverse.reshape(-1, 3).cpu().numpy().astype(np.int64)
    colours = None if colour is None else np.asarray(colour(vertices[:, 0], vertices[:, 1]), np.uint8)
    mesh = Mesh(vertices, faces, normals, colours, crs_wkt, keys.cpu().numpy())
    if normals is None:
        mesh.normals = vertex_normals_from_faces(mesh)
    boundary = is_ring_cell(cells[tri_cell], lo, hi).cpu().numpy()
    return mesh, boundary


class _Clock:
    """Seconds per stage (synchronised on CUDA), for the tile's stats."""

    def __init__(self, device):
        self.device, self.seconds = torch.device(device), {}
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.t, 4)
        self.t = now


def vertex_normals_from_faces(mesh: Mesh) -> np.ndarray:
    """Area-weighted average of the adjacent faces' normals."""
    fn = mesh.face_normals(unit=False)
    n = np.zeros((mesh.n_vertices, 3))
    for i in range(3):
        np.add.at(n, mesh.faces[:, i], fn)
    return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)
