"""Marching cubes in torch, vectorised over any set of lattice cells (CPU or GPU).

The cells need not form a dense block: MISE hands over only the cells near the surface. Vertices are named by
their lattice edge (:func:`geoimplicit.mesh.lattice.edge_key`), so triangles of neighbouring cells, or of
neighbouring tiles, share them exactly.

Values are *signed*: positive inside (occupied), zero or negative outside.
"""

from __future__ import annotations

import numpy as np
import torch

from geoimplicit.mesh.lattice import edge_key
from geoimplicit.mesh.tables import CORNERS, EDGE_AXIS, EDGE_ORIGIN, EDGES, triangle_table

_TABLES: dict = {}


def _tables(device) -> dict:
    t = _TABLES.get(str(device))
    if t is None:
        t = _TABLES[str(device)] = {
            "tri": torch.from_numpy(triangle_table()).to(device),
            "corners": torch.from_numpy(CORNERS).to(device),
            "edge_origin": torch.from_numpy(EDGE_ORIGIN).to(device),
            "edge_axis": torch.from_numpy(EDGE_AXIS).to(device),
            "edges": torch.from_numpy(EDGES).to(device),
            "bits": 2 ** torch.arange(8, device=device),
        }
    return t


def cell_corners(cells: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """(C, 3) lower-corner node indices -> (C, 8, 3) node indices of the cells' corners."""
    return cells[:, None, :] + stride * _tables(cells.device)["corners"][None]


def straddles(g: torch.Tensor) -> torch.Tensor:
    """(C, 8) signed corner values -> (C,) bool: some corner inside and some outside."""
    inside = g > 0
    return inside.any(1) & ~inside.all(1)


def march_cells(cells: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangles of the cells with lower corners ``cells`` (C, 3) int64 and signed corner values ``g`` (C, 8).

    Returns:
        (T, 3) int64 edge keys of each triangle's vertices (counter-clockwise seen from outside) and (T,) the
        index of the cell each triangle came from.
    """
    tab = _tables(cells.device)
    case = ((g > 0).long() * tab["bits"]).sum(1)
    tri = tab["tri"][case]  # (C, T, 3) local edge ids, -1 padded
    cell, slot = torch.nonzero(tri[..., 0] >= 0, as_tuple=True)
    local = tri[cell, slot]  # (T, 3)
    nodes = cells[cell][:, None, :] + tab["edge_origin"][local]
    return drop_cancelling(edge_key(nodes, tab["edge_axis"][local]), cell)


_MIX = [0x2545F4914F6CDD1D, 0x1B873593A4B7C2E1, 0x3C6EF372FE94F82B]  # odd multipliers of the key hash


def drop_cancelling(tri_keys: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Without pairs of triangles on the same three edges and of opposite orientation.

    Two cells that share a face can both lay a triangle on that face's edges, facing each other: a sheet of no
    thickness (a field with a layer thinner than a cell against a discontinuity, as the height refiner's
    corrections make). The pair encloses nothing and would leave its edges shared by four triangles.
    """
    if len(tri_keys) < 2:
        return tri_keys, cell
    ordered, perm = torch.sort(tri_keys, dim=1)
    odd = ((perm[:, 0] > perm[:, 1]).long() + (perm[:, 0] > perm[:, 2]).long() + (perm[:, 1] > perm[:, 2]).long()) % 2
    # one sort of a hash of the three keys (wrapping int64 products), then the neighbours compared in full
    mix = ordered * torch.tensor(_MIX, device=ordered.device)
    order = torch.argsort(mix[:, 0] ^ mix[:, 1] ^ mix[:, 2])
    a, b = order[:-1], order[1:]
    pair = (ordered[a] == ordered[b]).all(1) & (odd[a] != odd[b])
    keep = torch.ones(len(tri_keys), dtype=torch.bool, device=tri_keys.device)
    keep[a[pair]] = False
    keep[b[pair]] = False
    return tri_keys[keep], cell[keep]


def crossing_t(ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
    """Linear estimate of where the level is crossed between values ga and gb (one inside, one not), in [0, 1]."""
    return (ga / (ga - gb)).clamp(0.0, 1.0)


def marching_cubes(volume: torch.Tensor, level: float = 0.0, spacing: float = 1.0):
    """Dense convenience: the iso-surface ``volume > level`` of a (X, Y, Z) grid (a node per voxel).

    Returns float64 numpy vertices (V, 3) in grid units times ``spacing`` and faces (F, 3), welded, normals
    pointing towards lower values (the ``bench/mesh.py`` comparison with scikit-image uses it).
    """
    from geoimplicit.mesh.lattice import key_to_ijk

    g = (volume - level).float()
    X, Y, Z = g.shape
    dev = g.device
    grid = torch.stack(torch.meshgrid(torch.arange(X - 1, device=dev), torch.arange(Y - 1, device=dev),
                                      torch.arange(Z - 1, device=dev), indexing="ij"), -1).reshape(-1, 3)
    corners = cell_corners(grid)
    gc = g[corners[..., 0], corners[..., 1], corners[..., 2]]
    keep = straddles(gc)
    keys, _ = march_cells(grid[keep], gc[keep])
    uniq, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
    ijk, axis = key_to_ijk(uniq)
    unit = torch.nn.functional.one_hot(axis, 3)
    other = ijk + unit
    ga = g[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    gb = g[other[:, 0], other[:, 1], other[:, 2]]
    t = crossing_t(ga, gb)
    verts = ijk.double() + t[:, None].double() * unit.double()
    return verts.cpu().numpy() * spacing, inverse.reshape(-1, 3).cpu().numpy().astype(np.int64)
