"""Mesh against mesh: Chamfer-L1 and normal consistency (Occupancy Networks' measures), from area-weighted
samples on both surfaces and exact point-to-triangle distances.

Chamfer-L1 = (accuracy + completeness) / 2, where accuracy is the mean distance from points sampled on the
predicted surface to the true surface and completeness the mean distance the other way. Normal consistency is
the mean |cos| between the normal at each sample and the normal of the closest triangle of the other surface,
averaged over both directions (1 = the same orientation everywhere). Distances are to the closest triangle,
not to the closest sample, so the sampling density does not bias them.
"""

from __future__ import annotations

import numpy as np

from geoimplicit.mesh.core import Mesh


def sample_surface(mesh: Mesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform by area on the mesh: (n, 3) float64 and the (n,) index of each point's face."""
    area = mesh.face_areas()
    if not len(area) or area.sum() <= 0:
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    face = rng.choice(len(area), size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    a, b, c = (mesh.vertices[mesh.faces[face, i]] for i in range(3))
    pts = (1 - r1)[:, None] * a + (r1 * (1 - r2))[:, None] * b + (r1 * r2)[:, None] * c
    return pts, face


def point_triangle_distance(p, a, b, c) -> np.ndarray:
    """Euclidean distance from points p (N, 3) to triangles (a, b, c) (N, 3 each), exact (Ericson's regions)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = va + vb + vc
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(denom != 0, vb / denom, 0.0)
        w = np.where(denom != 0, vc / denom, 0.0)
        q = a + v[:, None] * ab + w[:, None] * ac  # inside the face
        t_ab = np.clip(np.where(d1 - d3 != 0, d1 / (d1 - d3), 0), 0, 1)
        t_ac = np.clip(np.where(d2 - d6 != 0, d2 / (d2 - d6), 0), 0, 1)
        t_bc = np.clip(np.where((d4 - d3) + (d5 - d6) != 0, (d4 - d3) / ((d4 - d3) + (d5 - d6)), 0), 0, 1)
    cases = [
        (d1 <= 0) & (d2 <= 0), (d3 >= 0) & (d4 <= d3), (d6 >= 0) & (d5 <= d6),
        (vc <= 0) & (d1 >= 0) & (d3 <= 0), (vb <= 0) & (d2 >= 0) & (d6 <= 0),
        (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0),
    ]
    choices = [a, b, c, a + t_ab[:, None] * ab, a + t_ac[:, None] * ac, b + t_bc[:, None] * (c - b)]
    for cond, point in zip(reversed(cases), reversed(choices)):
        q = np.where(cond[:, None], point, q)
    return np.linalg.norm(p - q, axis=1)


def _dot(u, v):
    return np.einsum("ij,ij->i", u, v)


class SurfaceIndex:
    """Closest-triangle queries on a mesh: the k nearest of dense samples give candidate triangles."""

    def __init__(self, mesh: Mesh, samples_per_unit2: float = 64.0, seed: int = 1, max_samples: int = 4_000_000):
        from scipy.spatial import cKDTree

        self.mesh = mesh
        n = int(min(max_samples, max(1000, mesh.area() * samples_per_unit2)))
        pts, self.face = sample_surface(mesh, n, seed)
        # every face gets at least its centroid, so small triangles are never out of reach
        centroids = mesh.vertices[mesh.faces].mean(1)
        self.points = np.concatenate([pts, centroids])
        self.face = np.concatenate([self.face, np.arange(mesh.n_faces)])
        self.tree = cKDTree(self.points - self.points.mean(0))
        self.shift = self.points.mean(0)
        self.normals = mesh.face_normals()

    def closest(self, p: np.ndarray, k: int = 16, chunk: int = 100000) -> tuple[np.ndarray, np.ndarray]:
        """Distance from each point (N, 3) to the mesh and the index of the closest face."""
        dist = np.empty(len(p))
        face = np.empty(len(p), np.int64)
        v = self.mesh.vertices
        for s in range(0, len(p), chunk):
            q = p[s : s + chunk]
            _, idx = self.tree.query(q - self.shift, k=k)
            cand = self.face[idx.reshape(len(q), -1)]
            f = self.mesh.faces[cand.reshape(-1)]
            qq = np.repeat(q, cand.shape[1], axis=0)
            d = point_triangle_distance(qq, v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]).reshape(len(q), -1)
            best = d.argmin(1)
            dist[s : s + chunk] = d[np.arange(len(q)), best]
            face[s : s + chunk] = cand[np.arange(len(q)), best]
        return dist, face


def _within(points: np.ndarray, bounds) -> np.ndarray:
    if bounds is None:
        return np.ones(len(points), bool)
    left, bottom, right, top = bounds
    return (points[:, 0] >= left) & (points[:, 0] <= right) & (points[:, 1] >= bottom) & (points[:, 1] <= top)


def compare_meshes(pred: Mesh, truth: Mesh, *, samples: int = 200000, bounds=None, seed: int = 0,
                   thresholds=(0.1, 0.25, 0.5)) -> dict:
    """Chamfer-L1, accuracy, completeness, normal consistency and F-scores of ``pred`` against ``truth``.

    ``bounds`` (left, bottom, right, top): only samples inside them are scored (both directions); the other
    surface is searched whole. Distances in CRS units.
    """
    out = {}
    directions = {}
    for name, a, b, s in (("accuracy", pred, truth, seed), ("completeness", truth, pred, seed + 1)):
        pts, face = sample_surface(a, samples, s)
        keep = _within(pts, bounds)
        pts, face = pts[keep], face[keep]
        dist, nearest = SurfaceIndex(b).closest(pts)
        cos = np.abs(np.einsum("ij,ij->i", a.face_normals()[face], b.face_normals()[nearest]))
        directions[name] = (dist, cos)
        out[name] = float(dist.mean()) if len(dist) else float("nan")
        out[f"{name}_median"] = float(np.median(dist)) if len(dist) else float("nan")
    out["chamfer_l1"] = 0.5 * (out["accuracy"] + out["completeness"])
    out["normal_consistency"] = 0.5 * sum(float(c.mean()) for _, c in directions.values())
    for t in thresholds:
        precision = float((directions["accuracy"][0] <= t).mean())
        recall = float((directions["completeness"][0] <= t).mean())
        out[f"fscore_{t:g}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out["samples"] = int(samples)
    return out
