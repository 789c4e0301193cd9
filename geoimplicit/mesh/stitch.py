"""Tiles into one mesh without cracks: the seams are made to agree, then vertices weld by lattice key.

Each tile extracted its core cells on the run's global lattice with its own field (:func:`.extract.extract_box`).
Neighbouring tiles' fields differ a little (each encodes its own context), so on a seam plane the two may
disagree about which lattice edges the surface crosses, which would leave cracks. Marching cubes draws the
surface on a cell face from the face's four corner values alone; so the seam is made to agree by giving every
node on a seam one value, the mean of the values the tiles that share it found there. The ring cells of
every tile (the cells touching its core's border, whose corners the tile kept) are then marched again with
those values. Vertices on seam edges take the mean of the tiles' refined positions (a linear estimate from
the shared values where the crossing is new); every other vertex keeps its tile's. The result is marching
cubes on one consistent set of node values: no cracks, no duplicate walls, and, where the tiles' fields agree
(an analytic field), exactly the mesh of one piece.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from geoimplicit.mesh.core import Mesh, first_and_inverse
from geoimplicit.mesh.extract import TileSurface
from geoimplicit.mesh.lattice import Lattice, key_to_ijk, node_key
from geoimplicit.mesh.marching import crossing_t, march_cells
from geoimplicit.mesh.tables import CORNERS
from geoimplicit.progress import check_cancel


def _on_seam(ijk: np.ndarray, box) -> np.ndarray:
    i0, j0, _, i1, j1, _ = box
    return (ijk[:, 0] == i0) | (ijk[:, 0] == i1) | (ijk[:, 1] == j0) | (ijk[:, 1] == j1)


def _mean_by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and the mean of ``values`` over each key's rows (summed in row order)."""
    values = values.astype(np.float64)
    values = values[:, None] if values.ndim == 1 else values
    if not len(keys):
        return keys, values
    order = np.argsort(keys, kind="stable")  # the parts are sorted runs: timsort merges them
    keys = keys[order]
    start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    count = np.diff(np.r_[start, len(keys)])
    total = np.zeros((len(start), values.shape[1]))
    for r in range(count.max()):  # each key's rows added one by one in order (np.add.reduceat pairs them up)
        has = count > r
        total[has] += values[order[start[has] + r]]
    return keys[start], total / count[:, None]


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in the sorted ``table_keys`` and whether each is there."""
    if not len(table_keys):
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    pos = np.searchsorted(table_keys, keys).clip(max=len(table_keys) - 1)
    return pos, table_keys[pos] == keys


def _seam_edges(tile: TileSurface) -> np.ndarray:
    """Mask of the tile's vertices lying on a lattice edge inside a seam plane (both ends on the border)."""
    ijk, axis = key_to_ijk(tile.mesh.keys)
    other = ijk + np.eye(3, dtype=np.int64)[axis]
    return _on_seam(ijk, tile.box) & _on_seam(other, tile.box)


def _seam_rows(t: TileSurface) -> tuple:
    """One tile's seam nodes (keys, values) and seam vertices (keys, positions, normals, colours)."""
    on = _on_seam(key_to_ijk(t.ring_keys)[0], t.box)
    sel = _seam_edges(t)
    m = t.mesh
    normals = m.normals[sel] if m.normals is not None else np.full((sel.sum(), 3), np.nan)
    colours = m.colours[sel] if m.colours is not None else np.full((sel.sum(), 3), np.nan)
    return t.ring_keys[on], t.ring_values[on], m.keys[sel], m.vertices[sel], normals, colours


def seam_consensus(tiles, pool: ThreadPoolExecutor | None = None) -> dict:
    """Shared seam node values and seam vertices (position, normal, colour) over all tiles."""
    nk, nv, vk, vp, vn, vc = zip(*(pool.map(_seam_rows, tiles) if pool else map(_seam_rows, tiles)))
    node_keys, node_values = _mean_by_key(np.concatenate(nk), np.concatenate(nv))
    attrs = np.concatenate([np.concatenate(vp), np.concatenate(vn), np.concatenate(vc).astype(np.float64)], 1)
    vert_keys, vert_attrs = _mean_by_key(np.concatenate(vk), attrs)
    return {"node_keys": node_keys, "node_values": node_values[:, 0], "vertex_keys": vert_keys,
            "vertex_attrs": vert_attrs}


def _ring_values(tile: TileSurface, consensus: dict) -> np.ndarray:
    pos, found = _lookup(tile.ring_keys, consensus["node_keys"])
    return np.where(found, consensus["node_values"][pos], tile.ring_values)


def _ring_layout(tile: TileSurface) -> tuple[np.ndarray, np.ndarray, int]:
    """The ring's cell columns ((I, J) mask over the box's columns), the rank of each ring node column ((I + 1,
    J + 1), -1 off the ring) and the nodes per column: the sorted ring keys are whole columns k0..k1 in (i, j)
    order, so a corner's value is found by arithmetic, not by a search."""
    i0, j0, k0, i1, j1, k1 = tile.box
    ci, cj = np.meshgrid(np.arange(i1 - i0), np.arange(j1 - j0), indexing="ij")
    cell = (ci == 0) | (ci == i1 - i0 - 1) | (cj == 0) | (cj == j1 - j0 - 1)
    node = np.zeros((i1 - i0 + 1, j1 - j0 + 1), bool)
    for di, dj in ((0, 0), (0, 1), (1, 0), (1, 1)):
        node[di : di + cell.shape[0], dj : dj + cell.shape[1]] |= cell
    rank = np.where(node, np.cumsum(node.reshape(-1)).reshape(node.shape) - 1, -1)
    nk = k1 - k0 + 1
    ni, nj = np.nonzero(node)
    ijk = np.stack([np.repeat(ni + i0, nk), np.repeat(nj + j0, nk), np.tile(np.arange(k0, k1 + 1), len(ni))], 1)
    assert np.array_equal(node_key(ijk), tile.ring_keys), "the stored ring is not the box's ring"
    return cell, rank, nk


def _straddling_ring_cells(tile: TileSurface, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ring cells the level crosses (C, 3), in (i, j, k) order, and their float32 corner values (C, 8)."""
    cell, rank, nk = _ring_layout(tile)
    ci, cj = np.nonzero(cell)
    column = rank[ci[:, None] + CORNERS[:, 0], cj[:, None] + CORNERS[:, 1]]  # (columns, 8)
    k = np.arange(nk - 1)
    g = values[column[:, None, :] * nk + k[None, :, None] + CORNERS[:, 2]].astype(np.float32).reshape(-1, 8)
    inside = g > 0
    keep = np.flatnonzero(inside.any(1) & ~inside.all(1))
    c, kk = np.divmod(keep, max(nk - 1, 1))
    i0, j0, k0 = tile.box[:3]
    return np.stack([ci[c] + i0, cj[c] + j0, kk + k0], 1).astype(np.int64), g[keep]


def remake_ring(tile: TileSurface, consensus: dict, lattice: Lattice, cell_filter=None) -> Mesh:
    """The tile's ring cells marched again with the shared seam values (vertex attributes NaN where unknown)."""
    values = _ring_values(tile, consensus)
    cells, g = _straddling_ring_cells(tile, values)
    if cell_filter is not None and len(cells):
        centre = lattice.position(cells + 0.5)
        inside = np.asarray(cell_filter(centre[:, 0], centre[:, 1]), bool)
        cells, g = cells[inside], g[inside]
    tri_keys, _ = march_cells(torch.from_numpy(cells), torch.from_numpy(g))
    keys, inverse = np.unique(tri_keys.numpy().reshape(-1), return_inverse=True)
    attrs = _vertex_attrs(keys, tile, consensus, values, lattice)
    faces = inverse.reshape(-1, 3).astype(np.int64)
    return Mesh(attrs[:, :3], faces, attrs[:, 3:6].astype(np.float32), attrs[:, 6:9], tile.mesh.crs_wkt, keys)


def _vertex_attrs(keys, tile: TileSurface, consensus: dict, ring_values, lattice: Lattice) -> np.ndarray:
    """(V, 9) position, normal, colour for ring-cell vertices: the shared seam vertex, else the tile's own,
    else the linear crossing of the shared values (normal and colour NaN: filled after welding)."""
    out = np.full((len(keys), 9), np.nan)
    pos, found = _lookup(keys, consensus["vertex_keys"])
    out[found] = consensus["vertex_attrs"][pos[found]]
    own_pos, own = _lookup(keys, tile.mesh.keys)
    own &= ~found
    m = tile.mesh
    out[own, :3] = m.vertices[own_pos[own]]
    if m.normals is not None:
        out[own, 3:6] = m.normals[own_pos[own]]
    if m.colours is not None:
        out[own, 6:9] = m.colours[own_pos[own]]
    rest = ~(found | own)
    if rest.any():
        ijk, axis = key_to_ijk(keys[rest])
        unit = np.eye(3, dtype=np.int64)[axis]
        va = ring_values[_lookup(node_key(ijk), tile.ring_keys)[0]]
        vb = ring_values[_lookup(node_key(ijk + unit), tile.ring_keys)[0]]
        t = crossing_t(torch.as_tensor(va), torch.as_tensor(vb)).numpy()
        out[rest, :3] = lattice.position(ijk + t[:, None] * unit)
    return out


def stitch_tiles(tiles, lattice: Lattice, *, cell_filter=None, crs_wkt=None, cancel=None) -> Mesh:
    """One welded mesh of the tiles (:class:`.extract.TileSurface` objects) of one lattice."""
    tiles = list(tiles)
    # the tiles are independent once the seams agree, and numpy and torch release the GIL in the heavy calls
    with ThreadPoolExecutor(max(1, min(len(tiles), os.cpu_count() or 1, 8))) as pool:
        consensus = seam_consensus(tiles, pool)
        pieces = pool.map(lambda t: _pieces(t, consensus, lattice, cell_filter, cancel), tiles)
        parts = [m for pair in pieces for m in pair]
        mesh, no_colour = _weld_parts(parts, pool, colour=all(t.mesh.colours is not None for t in tiles))
    mesh.crs_wkt = crs_wkt or (tiles[0].mesh.crs_wkt if tiles else None)
    return _fill_attributes(mesh, no_colour)


def _pieces(t: TileSurface, consensus: dict, lattice: Lattice, cell_filter, cancel) -> tuple[Mesh, Mesh]:
    """The tile's inner faces as extracted and its ring re-made on the shared seam values."""
    check_cancel(cancel)
    inner = t.mesh.subset(~t.boundary_face)
    if inner.normals is None:
        inner.normals = np.full((inner.n_vertices, 3), np.nan, np.float32)
    return inner, remake_ring(t, consensus, lattice, cell_filter)


def _weld_parts(parts: list[Mesh], pool: ThreadPoolExecutor, colour: bool) -> tuple[Mesh, np.ndarray | None]:
    """``weld(concatenate(parts))`` of keyed parts with normals whose keys are distinct within each part, written
    part by part on ``pool`` straight into the final arrays: float32 normals (NaN where unknown) and, with
    ``colour``, uint8 colours rounded as the final mesh's and the mask of vertices without a colour (NaN)."""
    keys = np.concatenate([p.keys for p in parts])
    first, inverse = first_and_inverse(keys)
    n = len(first)
    leads = np.zeros(len(keys), bool)
    leads[first] = True  # each key's first row gives its position and colour, and starts its normal's sum
    shared = np.zeros(n, bool)
    shared[inverse[~leads]] = True  # the few keys in several parts: their normals are summed afterwards
    vertices, normals = np.empty((n, 3)), np.empty((n, 3), np.float32)
    colours, no_colour = (np.empty((n, 3), np.uint8), np.empty(n, bool)) if colour else (None, None)
    row0 = np.cumsum([0] + [p.n_vertices for p in parts])
    face0 = np.cumsum([0] + [p.n_faces for p in parts])
    faces = np.empty((face0[-1], 3), np.int64)

    def write(k: int) -> tuple[np.ndarray, np.ndarray]:  # only leading rows: no two parts write one vertex
        p, slot, lead = parts[k], inverse[row0[k] : row0[k + 1]], leads[row0[k] : row0[k + 1]]
        rows = slice(None) if lead.all() else lead  # a tile's inner piece leads all its keys: views, no copies
        vertices[slot[rows]] = p.vertices[rows]
        if colour:
            colours[slot[rows]], no_colour[slot[rows]] = _rounded_colours(p.colours[rows])
        mine = shared[slot]
        alone = lead & ~mine
        normals[slot[alone]] = _unit(p.normals[alone].astype(np.float64))
        np.take(slot, p.faces, out=faces[face0[k] : face0[k + 1]])  # no temporary of the faces
        return slot[mine], p.normals[mine].astype(np.float64)

    slots, rows = zip(*pool.map(write, range(len(parts))))
    many = np.flatnonzero(shared)
    total = np.zeros((len(many), 3))  # summed from zero in row order, as np.add.at over the whole would
    np.add.at(total, np.searchsorted(many, np.concatenate(slots)), np.concatenate(rows))
    normals[many] = _unit(total)
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    mesh = Mesh(vertices, faces if keep.all() else faces[keep], normals, colours, None, keys[first])
    return mesh, no_colour


def _unit(v: np.ndarray) -> np.ndarray:
    """float32 unit rows of float64 ``v`` (np.linalg.norm's sums)."""
    length = np.sqrt(np.add.reduce(v * v, axis=1, keepdims=True))
    return (v / np.maximum(length, 1e-12)).astype(np.float32)


def _rounded_colours(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 colours and which are unknown (rounded half to even and clipped now, not after the gaps are
    filled: filling copies colours, so the result is the same)."""
    if c.dtype == np.uint8:
        return c, np.zeros(len(c), bool)
    unknown = ~np.isfinite(c).all(1)
    return np.clip(np.rint(np.nan_to_num(c, nan=128.0)), 0, 255).astype(np.uint8), unknown


def _fill_attributes(mesh: Mesh, no_colour: np.ndarray | None) -> Mesh:
    """Normals missing after stitching from the faces; colours (``no_colour``: the vertices lacking one; None:
    no colours) from a neighbour along the faces. Both look only at the faces touching such a vertex (a few
    seam crossings among millions)."""
    no_normal = ~np.isfinite(mesh.normals).all(1)
    gaps = no_normal if no_colour is None else no_normal | no_colour
    faces = mesh.faces[gaps[mesh.faces].any(1)]
    if no_normal.any():
        mesh.normals[no_normal] = _normals_from_faces_at(mesh, faces, no_normal)
    if no_colour is None:
        mesh.colours = None
        return mesh
    c, bad = mesh.colours, no_colour
    for _ in range(8):  # spread known colours into the few unknown vertices
        if not bad.any():
            break
        for a, b in ((0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)):
            fa, fb = faces[:, a], faces[:, b]
            take = bad[fa] & ~bad[fb]
            c[fa[take]] = c[fb[take]]
            bad[fa[take]] = False
    c[bad] = 128  # cut off from every colour: grey
    return mesh


def _normals_from_faces_at(mesh: Mesh, faces: np.ndarray, vertex_mask: np.ndarray) -> np.ndarray:
    """:func:`.extract.vertex_normals_from_faces` at the masked vertices only: the same area-weighted sums, in
    the same order, over ``faces`` (the mesh's faces that touch them, in order; others may be there too)."""
    centre = mesh.vertices.mean(0)
    a, b, c = (mesh.vertices[faces[:, i]] - centre for i in range(3))
    fn = np.cross(b - a, c - a)
    slot = np.cumsum(vertex_mask) - 1
    n = np.zeros((int(vertex_mask.sum()), 3))
    for i in range(3):
        mine = vertex_mask[faces[:, i]]
        np.add.at(n, slot[faces[mine, i]], fn[mine])
    return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)
