"""The true surface of a synthetic city as a mesh, walls included, to score meshes against.

The generator knows every building exactly (rectangular parts, flat / gabled / hipped roofs as planes, rooftop
structures, a base height), so buildings are built as polygons, not rasters: the roof is the upper envelope of
the parts' roof planes (shapely polygons cut where one plane rises above another), and a vertical wall stands
on every roof edge where the surface jumps, down to the ground or to a lower roof. Terrain and tree crowns are
what the scene holds as rasters: the surface is the triangulation of the truth DSM through the pixel centres
(the bare terrain under buildings), cut out exactly along the footprints. Where a tree crown overhangs a roof
the roof is kept (the raster DSM has the crown there). The mesh spans the pixel centres' extent.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from scipy import ndimage

from geoimplicit.mesh.core import Mesh, weld

_EPS = 1e-4  # CRS units: side offset that tells which region a segment borders


def _rect(part, c0) -> shapely.Polygon:
    c, s = math.cos(part["angle"]), math.sin(part["angle"])
    pts = [(u * c - v * s + part["cx"] - c0[0], u * s + v * c + part["cy"] - c0[1])
           for u, v in ((-part["a"], -part["b"]), (part["a"], -part["b"]), (part["a"], part["b"]),
                        (-part["a"], part["b"]))]
    return shapely.Polygon(pts)


def _plane_uv(part, c0, z0, du, dv):
    """Plane z = z0 + du * u + dv * v of a part's local (u, v), as (k, kx, ky) in scene-local x, y."""
    c, s = math.cos(part["angle"]), math.sin(part["angle"])
    x0, y0 = part["cx"] - c0[0], part["cy"] - c0[1]
    # u = (x - x0) c + (y - y0) s ; v = -(x - x0) s + (y - y0) c
    kx, ky = du * c - dv * s, du * s + dv * c
    return (z0 - kx * x0 - ky * y0, kx, ky)


def _part_facets(part, roof, eave_z, slope, c0) -> list:
    """(polygon, plane) pieces of one rectangular part's roof."""
    a, b = part["a"], part["b"]
    c, s = math.cos(part["angle"]), math.sin(part["angle"])

    def poly(uv):
        return shapely.Polygon([(u * c - v * s + part["cx"] - c0[0], u * s + v * c + part["cy"] - c0[1])
                                for u, v in uv])

    if roof == "flat" or slope == 0:
        return [(_rect(part, c0), (eave_z, 0.0, 0.0))]
    if roof == "gabled":  # z = eave + (b - |v|) slope
        return [(poly([(-a, 0), (a, 0), (a, b), (-a, b)]), _plane_uv(part, c0, eave_z + b * slope, 0, -slope)),
                (poly([(-a, -b), (a, -b), (a, 0), (-a, 0)]), _plane_uv(part, c0, eave_z + b * slope, 0, slope))]
    if a < b:  # hipped with the ridge along v: the same roof as the part turned by 90 degrees
        turned = dict(part, a=b, b=a, angle=part["angle"] + math.pi / 2)
        return _part_facets(turned, roof, eave_z, slope, c0)
    d = a - b  # hipped: z = eave + min(b - |v|, a - |u|) slope, a >= b
    return [
        (poly([(-a, b), (-d, 0), (d, 0), (a, b)]), _plane_uv(part, c0, eave_z + b * slope, 0, -slope)),
        (poly([(-a, -b), (a, -b), (d, 0), (-d, 0)]), _plane_uv(part, c0, eave_z + b * slope, 0, slope)),
        (poly([(a, -b), (a, b), (d, 0)]), _plane_uv(part, c0, eave_z + a * slope, -slope, 0)),
        (poly([(-a, -b), (-d, 0), (-a, b)]), _plane_uv(part, c0, eave_z + a * slope, slope, 0)),
    ]


def _halfplane(plane_diff, box) -> shapely.Geometry:
    """The part of ``box`` where k + kx x + ky y > 0."""
    k, kx, ky = plane_diff
    if abs(kx) < 1e-12 and abs(ky) < 1e-12:
        return box if k > 1e-9 else shapely.Polygon()
    x0, y0, x1, y1 = box.bounds
    big = 4 * max(x1 - x0, y1 - y0) + 1
    # a point on the line and its direction
    n = np.array([kx, ky]) / math.hypot(kx, ky)
    p = -k * n / math.hypot(kx, ky)
    t = np.array([-n[1], n[0]])
    return shapely.Polygon([p - big * t, p + big * t, p + big * t + big * n, p - big * t + big * n]).intersection(box)


def roof_regions(building, c0) -> list:
    """The upper envelope of a building's roof facets: [(polygon, (k, kx, ky)), ...] in scene-local x, y."""
    base = building["base"]
    facets = []
    for part in building["parts"]:
        facets += _part_facets(part, building["roof"], base + building["eave_height"], building["roof_slope"], c0)
    if building.get("structure"):
        st = building["structure"]
        facets.append((_rect(st, c0), (base + building["eave_height"] + st["height"], 0.0, 0.0)))
    box = shapely.box(*shapely.union_all([f for f, _ in facets]).buffer(1.0).bounds)
    regions = []
    for i, (poly, plane) in enumerate(facets):
        region = poly
        for j, (other, oplane) in enumerate(facets):
            if i == j or not other.intersects(region):
                continue
            diff = tuple(o - p for o, p in zip(oplane, plane))
            if abs(diff[1]) < 1e-12 and abs(diff[2]) < 1e-12 and abs(diff[0]) <= 1e-9:
                higher = other if j < i else shapely.Polygon()  # same plane: the first facet keeps it
            else:
                higher = other.intersection(_halfplane(diff, box))
            region = region.difference(higher)
        region = shapely.make_valid(region)
        if region.area > 1e-10:
            regions.append((region, plane))
    return regions


class GroundTin:
    """Linear interpolation on the triangulation of a raster through its pixel centres (each square split along
    the diagonal from its lower-left to upper-right centre)."""

    def __init__(self, height: np.ndarray, x0: float, y0: float, res: float):
        self.h, self.x0, self.y0, self.res = height, x0, y0, res  # x0, y0: centre of pixel (0, 0) (top-left)

    def __call__(self, x, y):
        rows, cols = self.h.shape
        fu = np.clip((np.asarray(x) - self.x0) / self.res, 0, cols - 1 - 1e-9)
        fw = np.clip((self.y0 - np.asarray(y)) / self.res, 0, rows - 1 - 1e-9)
        c, r = np.floor(fu).astype(int), np.floor(fw).astype(int)
        s, t = fu - c, 1.0 - (fw - r)  # s east, t north within the square, from its lower-left centre
        h00, h10 = self.h[r + 1, c], self.h[r + 1, c + 1]  # lower-left, lower-right
        h01, h11 = self.h[r, c], self.h[r, c + 1]  # upper-left, upper-right
        lower = s >= t  # below the diagonal (lower-right triangle)
        return np.where(lower, h00 + s * (h10 - h00) + t * (h11 - h10), h00 + t * (h01 - h00) + s * (h11 - h01))

    def breakpoints(self, p, q) -> np.ndarray:
        """Sorted parameters in [0, 1] where segment p->q crosses the triangulation's edges (ends included)."""
        p, q = np.asarray(p, float), np.asarray(q, float)
        u0, u1 = (p[0] - self.x0) / self.res, (q[0] - self.x0) / self.res
        w0, w1 = (self.y0 - p[1]) / self.res, (self.y0 - q[1]) / self.res
        ts = [0.0, 1.0]
        for a, b in ((u0, u1), (w0, w1), (u0 + w0, u1 + w1)):  # diagonals: u + w = const (lower-left to upper-right)
            if abs(b - a) > 1e-12:
                k = np.arange(math.ceil(min(a, b)), math.floor(max(a, b)) + 1)
                ts += list((k - a) / (b - a))
        ts = np.unique(np.clip(ts, 0, 1))
        return ts


def _triangulate(geom) -> list:
    """Triangles (3, 2) arrays of a polygon (holes respected)."""
    tris = shapely.constrained_delaunay_triangles(geom)
    return [np.asarray(t.exterior.coords)[:3] for t in shapely.get_parts(tris) if t.area > 1e-12]


def _plane_z(plane, xy):
    return plane[0] + plane[1] * xy[..., 0] + plane[2] * xy[..., 1]


def _ccw(tri):
    a, b, c = tri
    return tri if (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1]) > 0 else tri[[0, 2, 1]]


def _walls(regions, ground: GroundTin, hull) -> list:
    """Vertical wall triangles (3, 3) on every region edge where the surface jumps."""
    lines = shapely.union_all([r.boundary for r, _ in regions])
    segs = []
    for line in shapely.get_parts(lines):
        xy = np.asarray(line.coords)
        segs += list(zip(xy[:-1], xy[1:]))
    tris = []
    border = hull.boundary.buffer(1e-7)
    shapely.prepare(border)
    for p, q in segs:
        if border.contains(shapely.LineString([p, q])):
            continue  # the mesh's own border: no wall
        d = q - p
        length = math.hypot(*d)
        if length < 1e-9:
            continue
        n = np.array([-d[1], d[0]]) / length
        m = (p + q) / 2
        left, right = _side(regions, m + _EPS * n), _side(regions, m - _EPS * n)
        ts = ground.breakpoints(p, q) if (left is None or right is None) else np.array([0.0, 1.0])
        pts = p[None] + ts[:, None] * d[None]
        zl, zr = _heights(left, pts, ground), _heights(right, pts, ground)
        tris += _wall_strip(pts, zl, zr, n)
    return tris


def _side(regions, pt):
    for region, plane in regions:
        if shapely.contains_xy(region, pt[0], pt[1]):
            return plane
    return None


def _heights(plane, pts, ground):
    return ground(pts[:, 0], pts[:, 1]) if plane is None else _plane_z(plane, pts)


def _wall_strip(pts, z_left, z_right, n_left) -> list:
    """Triangles of the vertical wall between two height profiles along a straight piece ``pts`` (its points in
    order), the normal facing the lower side. A roof side is linear (two points suffice), so the wall is one
    polygon fanned from a top corner and its top edge stays one edge, as the roof's; profiles that cross are
    split where they do."""
    z_left, z_right = np.asarray(z_left, float), np.asarray(z_right, float)
    diff = z_left - z_right
    cross = np.nonzero(diff[:-1] * diff[1:] < 0)[0]
    if len(cross):  # split at the first crossing and recurse on both halves
        i = cross[0]
        t = diff[i] / (diff[i] - diff[i + 1])
        m = pts[i] + t * (pts[i + 1] - pts[i])
        zm = z_left[i] + t * (z_left[i + 1] - z_left[i])
        left = _wall_strip(np.vstack([pts[: i + 1], m]), np.r_[z_left[: i + 1], zm], np.r_[z_right[: i + 1], zm],
                           n_left)
        return left + _wall_strip(np.vstack([m, pts[i + 1:]]), np.r_[zm, z_left[i + 1:]], np.r_[zm, z_right[i + 1:]],
                                  n_left)
    if np.abs(diff).max() < 1e-7:
        return []
    left_high = diff.sum() > 0
    hi, lo = (z_left, z_right) if left_high else (z_right, z_left)
    top = [np.r_[pts[0], hi[0]], np.r_[pts[-1], hi[-1]]]
    bottom = [np.r_[p, z] for p, z in zip(pts, lo)]
    ring = [top[0]] + bottom + [top[1]]  # a fan from the first top corner
    facing = -n_left if left_high else n_left
    tris = []
    for a, b in zip(ring[1:-1], ring[2:]):
        tri = np.array([top[0], a, b])
        nrm = np.cross(tri[1] - tri[0], tri[2] - tri[0])
        if np.linalg.norm(nrm) < 1e-12:
            continue
        tris.append(tri if nrm[:2] @ facing > 0 else tri[[0, 2, 1]])
    return tris


def _ground_triangles(ground_h, x0, y0, res, footprints, near) -> list:
    """Ground/canopy triangles (3, 3) of the raster triangulation, minus the footprints; ``near`` (rows, cols)
    marks the pixel centres close to a footprint (only their squares are cut with shapely)."""
    rows, cols = ground_h.shape
    tin = GroundTin(ground_h, x0, y0, res)
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
    r, c = r.ravel(), c.ravel()
    near_sq = np.tile(near[r, c] | near[r + 1, c] | near[r, c + 1] | near[r + 1, c + 1], 2)
    xl, xr = x0 + c * res, x0 + (c + 1) * res
    yt, yb = y0 - r * res, y0 - (r + 1) * res
    ll, lr, ul, ur = (np.stack([x, y], -1) for x, y in ((xl, yb), (xr, yb), (xl, yt), (xr, yt)))
    tri_xy = np.concatenate([np.stack([ll, lr, ur], 1), np.stack([ll, ur, ul], 1)])  # CCW
    cut = np.zeros(len(tri_xy), bool)
    if footprints is not None and not footprints.is_empty and near_sq.any():
        shapely.prepare(footprints)
        cand = np.nonzero(near_sq)[0]
        polys = shapely.polygons(np.concatenate([tri_xy[cand], tri_xy[cand, :1]], 1))
        hit = shapely.intersects(footprints, polys)
        cut[cand[hit]] = True
        crossing = polys[hit][~shapely.covers(footprints, polys[hit])]
    else:
        crossing = []
    keep = tri_xy[~cut]
    out = [np.concatenate([keep, tin(keep[..., 0], keep[..., 1])[..., None]], -1)]
    for poly in crossing:
        rest = poly.difference(footprints)
        for tri in _triangulate(rest) if rest.area > 1e-12 else []:
            tri = _ccw(tri)
            out.append(np.concatenate([tri, tin(tri[:, 0], tri[:, 1])[:, None]], -1)[None])
    return out


def truth_mesh(scene) -> Mesh:
    """The true surface of a :class:`~geoimplicit.synthetic.city.CityScene` as a mesh in its CRS."""
    c0 = scene.center
    res = scene.resolution
    left, bottom, right, top = scene.bounds
    x0, y0 = left + res / 2 - c0[0], top - res / 2 - c0[1]  # centre of pixel (0, 0), scene-local
    rows, cols = scene.shape
    hull = shapely.box(x0, y0 - (rows - 1) * res, x0 + (cols - 1) * res, y0)
    buildings = []
    for b in scene.buildings:
        regions = [(shapely.intersection(r, hull), p) for r, p in roof_regions(b, c0)]
        regions = [(r, p) for r, p in regions if r.area > 1e-10]
        if regions:
            buildings.append(regions)
    footprints = shapely.union_all([r for regs in buildings for r, _ in regs]) if buildings else None
    cx, cy = scene.xy_of(*np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"))
    ground_h = np.where(shapely.contains_xy(footprints, cx - c0[0], cy - c0[1]), scene.dtm, scene.dsm) \
        if footprints is not None else scene.dsm
    ground = GroundTin(ground_h, x0, y0, res)
    near = np.zeros(scene.shape, bool) if footprints is None else ndimage.binary_dilation(
        shapely.contains_xy(footprints, cx - c0[0], cy - c0[1]), iterations=3)
    parts = _ground_triangles(ground_h, x0, y0, res, footprints, near)
    for regions in buildings:
        for region, plane in regions:
            tris = np.array([_ccw(t) for t in _triangulate(region)])
            if len(tris):
                parts.append(np.concatenate([tris, _plane_z(plane, tris)[..., None]], -1))
        walls = _walls(regions, ground, hull)
        if walls:
            parts.append(np.array(walls))
    tri = np.concatenate(parts)
    verts = tri.reshape(-1, 3) + np.array([c0[0], c0[1], 0.0])
    faces = np.arange(len(verts)).reshape(-1, 3)
    return weld(Mesh(verts, faces, crs_wkt=scene.crs.to_wkt()), tolerance=1e-6)


def scene_height(scene):
    """``H(x, y)``: the true surface height at CRS points (the roof envelope over the footprints, the ground
    and canopy triangulation elsewhere), the surface :func:`truth_mesh` meshes."""
    c0 = scene.center
    res = scene.resolution
    left, _, _, top = scene.bounds
    x0, y0 = left + res / 2 - c0[0], top - res / 2 - c0[1]
    regions = [r for b in scene.buildings for r in roof_regions(b, c0)]
    footprints = shapely.union_all([r for r, _ in regions]) if regions else None
    rows, cols = scene.shape
    cx, cy = scene.xy_of(*np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"))
    ground_h = scene.dsm if footprints is None else np.where(
        shapely.contains_xy(footprints, cx - c0[0], cy - c0[1]), scene.dtm, scene.dsm)
    ground = GroundTin(ground_h, x0, y0, res)
    tree = shapely.STRtree([r for r, _ in regions]) if regions else None
    planes = np.array([p for _, p in regions]).reshape(-1, 3)

    def height(x, y):
        lx, ly = np.asarray(x, np.float64) - c0[0], np.asarray(y, np.float64) - c0[1]
        h = ground(lx, ly)
        if tree is not None:
            pt, reg = tree.query(shapely.points(lx, ly), predicate="within")
            h[pt] = planes[reg, 0] + planes[reg, 1] * lx[pt] + planes[reg, 2] * ly[pt]
        return h

    return height


def write_truth_mesh(scene, path, *, overwrite: bool = False):
    """Write :func:`truth_mesh` as a binary PLY (float64 CRS coordinates, face normals averaged per vertex)."""
    from geoimplicit.mesh.extract import vertex_normals_from_faces
    from geoimplicit.mesh.io import write_mesh

    mesh = truth_mesh(scene)
    mesh.normals = vertex_normals_from_faces(mesh)
    return write_mesh(path, mesh, fmt="ply", overwrite=overwrite)[0]
