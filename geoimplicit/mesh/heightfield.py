"""Between rasters and meshes: the 2.5D mesh of a DSM, and a DSM re-rasterized from a mesh.

- :func:`dsm_to_mesh`: every valid cell a flat square at its height, neighbouring cells of different heights
  joined by a vertical wall; so a raster DSM is scored against a true surface the same way as a mesh.
- :func:`mesh_to_dsm`: the highest surface at every cell centre (a z-buffer of the triangles seen from above);
  :func:`write_mesh_dsm` writes it as a GeoTIFF that ``geoimplicit eval`` reads like any DSM.
"""

from __future__ import annotations

import numpy as np

from geoimplicit.mesh.core import Mesh, weld

NODATA = -9999.0


def dsm_to_mesh(height: np.ndarray, transform, valid: np.ndarray | None = None, *, crs_wkt=None,
                min_step: float = 1e-6) -> Mesh:
    """The 2.5D heightfield mesh of a north-up DSM (flat cells joined by vertical walls).

    Args:
        height: (rows, cols) heights in CRS units.
        transform: the raster's affine transform (pixel-is-area, square pixels, north up).
        valid: (rows, cols) bool; cells outside it are holes (no top, no walls).
        min_step: smaller height differences between neighbours get no wall.
    """
    h = np.asarray(height, np.float64)
    valid = np.isfinite(h) if valid is None else (np.asarray(valid, bool) & np.isfinite(h))
    res, left, top = transform.a, transform.c, transform.f
    rows, cols = h.shape
    r, c = np.nonzero(valid)
    x0, x1 = left + c * res, left + (c + 1) * res
    y0, y1 = top - (r + 1) * res, top - r * res
    z = h[r, c]
    quads = [np.stack([np.stack(p, -1) for p in ((x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z))], 1)]
    # walls between horizontal neighbours (shared edge at x = left + (c+1) res) and vertical ones
    for dr, dc in ((0, 1), (1, 0)):
        a = valid[: rows - dr, : cols - dc] & valid[dr:, dc:]
        ha, hb = h[: rows - dr, : cols - dc], h[dr:, dc:]
        ra, ca = np.nonzero(a & (np.abs(ha - hb) > min_step))
        za, zb = h[ra, ca], h[ra + dr, ca + dc]
        if dc:  # edge from (x, y_bottom) to (x, y_top); cell a to the west
            xa = left + (ca + 1) * res
            p0, p1 = (xa, top - (ra + 1) * res), (xa, top - ra * res)
        else:  # edge from (x_left, y) to (x_right, y); cell a to the north
            ya = top - (ra + 1) * res
            p0, p1 = (left + ca * res, ya), (left + (ca + 1) * res, ya)
        # counter-clockwise seen from the lower side: for a higher cell a the normal points towards b
        lo, hi = np.minimum(za, zb), np.maximum(za, zb)
        flip = za < zb
        e0 = [np.where(flip, p1[i], p0[i]) for i in range(2)]
        e1 = [np.where(flip, p0[i], p1[i]) for i in range(2)]
        quads.append(np.stack([np.stack(p, -1) for p in ((e0[0], e0[1], lo), (e1[0], e1[1], lo),
                                                          (e1[0], e1[1], hi), (e0[0], e0[1], hi))], 1))
    q = np.concatenate(quads)
    verts = q.reshape(-1, 3)
    base = np.arange(len(q)) * 4
    faces = np.concatenate([np.stack([base, base + 1, base + 2], 1), np.stack([base, base + 2, base + 3], 1)])
    mesh = weld(Mesh(verts, faces, crs_wkt=crs_wkt), tolerance=0.0)
    return mesh


def mesh_to_dsm(mesh: Mesh, bounds, resolution: float, *, chunk_faces: int = 200000) -> tuple[np.ndarray, np.ndarray]:
    """The highest point of the mesh above every cell centre of the grid ``bounds`` (left, bottom, right, top)
    at ``resolution``; returns float32 heights (NODATA where no triangle covers the centre) and the valid mask."""
    left, bottom, right, top = bounds
    cols = int(round((right - left) / resolution))
    rows = int(round((top - bottom) / resolution))
    best = np.full(rows * cols, -np.inf)
    v = mesh.vertices
    for s in range(0, mesh.n_faces, chunk_faces):
        f = mesh.faces[s : s + chunk_faces]
        _zbuffer(v[f[:, 0]], v[f[:, 1]], v[f[:, 2]], left, top, resolution, rows, cols, best)
    best = best.reshape(rows, cols)
    valid = np.isfinite(best)
    return np.where(valid, best, NODATA).astype(np.float32), valid


def _zbuffer(a, b, c, left, top, res, rows, cols, best) -> None:
    """Max-scatter the heights of triangles (a, b, c) at the cell centres they cover."""
    # cell-centre coordinates: column u = (x - left) / res - 0.5, row w = (top - y) / res - 0.5
    pu = [(p[:, 0] - left) / res - 0.5 for p in (a, b, c)]
    pw = [(top - p[:, 1]) / res - 0.5 for p in (a, b, c)]
    det = (pu[1] - pu[0]) * (pw[2] - pw[0]) - (pu[2] - pu[0]) * (pw[1] - pw[0])
    ok = np.abs(det) > 1e-12  # vertical triangles cover no centre
    u0 = np.ceil(np.minimum.reduce(pu) - 1e-9).astype(np.int64)
    u1 = np.floor(np.maximum.reduce(pu) + 1e-9).astype(np.int64)
    w0 = np.ceil(np.minimum.reduce(pw) - 1e-9).astype(np.int64)
    w1 = np.floor(np.maximum.reduce(pw) + 1e-9).astype(np.int64)
    nu, nw = np.maximum(u1 - u0 + 1, 0), np.maximum(w1 - w0 + 1, 0)
    n = np.where(ok, nu * nw, 0)
    tri = np.repeat(np.arange(len(n)), n)
    if not len(tri):
        return
    k = np.arange(len(tri)) - np.repeat(np.cumsum(n) - n, n)
    u = u0[tri] + k % nu[tri]
    w = w0[tri] + k // nu[tri]
    du, dw = u - pu[0][tri], w - pw[0][tri]
    l1 = (du * (pw[2] - pw[0])[tri] - dw * (pu[2] - pu[0])[tri]) / det[tri]
    l2 = (dw * (pu[1] - pu[0])[tri] - du * (pw[1] - pw[0])[tri]) / det[tri]
    eps = 1e-9
    inside = (l1 >= -eps) & (l2 >= -eps) & (l1 + l2 <= 1 + eps) & (u >= 0) & (u < cols) & (w >= 0) & (w < rows)
    z = a[tri, 2] + l1 * (b[tri, 2] - a[tri, 2]) + l2 * (c[tri, 2] - a[tri, 2])
    np.maximum.at(best, (w * cols + u)[inside], z[inside])


def write_mesh_dsm(path, mesh: Mesh, bounds, resolution: float, *, crs=None, overwrite: bool = False, tags=None):
    """Re-rasterize ``mesh`` (:func:`mesh_to_dsm`) and write a float32 GeoTIFF (nodata -9999)."""
    from affine import Affine

    from geoimplicit.io.raster import write_geotiff

    height, _ = mesh_to_dsm(mesh, bounds, resolution)
    transform = Affine(resolution, 0.0, bounds[0], 0.0, -resolution, bounds[3])
    return write_geotiff(path, height, transform, crs if crs is not None else mesh.crs_wkt, nodata=NODATA,
                         tags={"product": "DSM re-rasterized from a mesh (highest surface at cell centres)",
                               **(tags or {})}, overwrite=overwrite)
