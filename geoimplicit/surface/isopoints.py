"""Iso-Points (Yifan et al. 2021): points kept on the SDF's zero level set, an explicit companion of the field.

- :func:`project`: Newton steps along the gradient, ``x <- x - f(x) grad f / |grad f|^2``; points that do not
  converge or leave the box are dropped.
- :func:`resample_uniform`: repulsion in the tangent plane (each point pushed away from its ``k`` nearest
  neighbours with Gaussian weights, the push projected off the normal), then projected again: a well spread set.
- :func:`upsample`: new points half-way to the neighbours of the points of highest loss (hard-example mining),
  projected onto the level set.
- :class:`IsoPoints`: the set a fit keeps (update every few hundred steps; eikonal and optional SDF = 0 samples
  near the points guide the optimisation where the surface is).
- :func:`write_iso_points`: LAS/LAZ 1.4 (point format 7, RGB) in the CRS (world coordinates, the CRS as WKT
  in the header) with the normals as extra bytes ``NormalX``, ``NormalY``, ``NormalZ`` (float32).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from geoimplicit.surface.box import SurfaceBox
from geoimplicit.surface.networks import sdf_and_gradient

__all__ = ["project", "knn", "resample_uniform", "upsample", "IsoPoints", "write_iso_points"]


def _batched_sdf_grad(net, x: torch.Tensor, batch: int = 65536):
    fs, gs = [], []
    for i in range(0, x.shape[0], batch):
        f, g, _ = sdf_and_gradient(net, x[i:i + batch], create_graph=False)
        fs.append(f.detach())
        gs.append(g.detach())
    if not fs:
        return x.new_zeros(0), x.new_zeros(0, 3)
    return torch.cat(fs), torch.cat(gs)


def project(net, x: torch.Tensor, box: SurfaceBox, *, iterations: int = 10, tol: float = 1e-3,
            max_step: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``x`` (N, 3) moved onto the zero level set by Newton steps along the gradient; returns the
    converged points inside the box (M, 3) and their unit normals (M, 3). ``max_step`` bounds a step
    (default: a tenth of the box's height)."""
    lo, hi = box.tensors(x.device)
    cap = float(max_step or 0.1 * (box.hi[2] - box.lo[2]))
    x = x.detach().clone()
    for _ in range(iterations):
        f, g = _batched_sdf_grad(net, x)
        step = (f / (g * g).sum(1).clamp_min(1e-8))[:, None] * g
        norm = step.norm(dim=1, keepdim=True)
        x = x - step * (cap / norm.clamp_min(cap)).clamp_max(1.0)
    f, g = _batched_sdf_grad(net, x)
    keep = (f.abs() < tol) & ((x >= lo) & (x <= hi)).all(1) & torch.isfinite(x).all(1)
    n = g[keep]
    return x[keep], n / n.norm(dim=1, keepdim=True).clamp_min(1e-8)


def knn(x: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, k) and indices (N, k) of the ``k`` nearest other points of ``x`` (N, 3) (chunked)."""
    k = min(k, max(1, x.shape[0] - 1))
    ds, ids = [], []
    for i in range(0, x.shape[0], chunk):
        dist = torch.cdist(x[i:i + chunk], x)
        dist[torch.arange(dist.shape[0]), torch.arange(i, i + dist.shape[0])] = float("inf")
        dv, iv = dist.topk(k, dim=1, largest=False)
        ds.append(dv)
        ids.append(iv)
    return torch.cat(ds), torch.cat(ids)


def resample_uniform(net, x: torch.Tensor, normals: torch.Tensor, box: SurfaceBox, *, k: int = 8,
                     iterations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Spread the points evenly: repulsion in the tangent plane from the ``k`` nearest neighbours (Gaussian
    weights, bandwidth the mean neighbour distance), then projection onto the level set."""
    for _ in range(iterations):
        if x.shape[0] < 3:
            break
        dist, idx = knn(x, k)
        h = dist.mean().clamp_min(1e-6)
        diff = x[:, None] - x[idx]  # (N, k, 3): away from the neighbours
        w = torch.exp(-(dist / h) ** 2)[..., None]
        push = (w * diff / dist.clamp_min(1e-6)[..., None]).sum(1) / w.sum(1).clamp_min(1e-6)
        push = push - (push * normals).sum(1, keepdim=True) * normals  # tangent plane only
        x, normals = project(net, x + 0.25 * h * push, box)
    return x, normals


def upsample(net, x: torch.Tensor, loss: torch.Tensor, box: SurfaceBox, count: int, *, k: int = 4):
    """``count`` new points (<= count, 3) half-way between the points of highest ``loss`` (N,) and their
    ``k`` nearest neighbours, projected onto the level set; returns (points, normals)."""
    if count <= 0 or x.shape[0] < 2:
        return x[:0], x[:0]
    n_src = max(1, count // k)
    top = loss.topk(min(n_src, x.shape[0])).indices
    _, idx = knn(x, k)
    mids = 0.5 * (x[top][:, None] + x[idx[top]])
    return project(net, mids.reshape(-1, 3)[:count], box)


class IsoPoints:
    """The Iso-Points a fit keeps (see the module docstring). ``points``, ``normals`` (N, 3) local
    coordinates; ``loss`` (N,) the latest rendering loss attributed to each point (for upsampling)."""

    def __init__(self, count: int, box: SurfaceBox, device):
        self.count, self.box, self.device = int(count), box, device
        self.points = torch.zeros(0, 3, device=device)
        self.normals = torch.zeros(0, 3, device=device)
        self.loss = torch.zeros(0, device=device)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def initialise(self, net, seeds: torch.Tensor | None = None) -> None:
        """Project ``seeds`` (or uniform box samples, 4x the count) onto the level set and spread them."""
        if seeds is None or seeds.shape[0] < self.count:
            extra = self.box.uniform(4 * self.count, self.device)
            seeds = extra if seeds is None else torch.cat([seeds, extra])
        x, n = project(net, seeds, self.box, iterations=15)
        x, n = _thin(x, n, self.count)
        self.points, self.normals = resample_uniform(net, x, n, self.box)
        self.loss = torch.zeros(len(self), device=self.device)

    def update(self, net, upsample_share: float = 0.25) -> None:
        """Re-project onto the changed level set, resample uniformly, replace ``upsample_share`` of the points
        by points beside those of highest loss, and top up to ``count`` from new seeds."""
        if len(self) == 0:
            self.initialise(net)
            return
        x, n = project(net, self.points, self.box)
        loss = self.loss[: x.shape[0]] if self.loss.numel() >= x.shape[0] else torch.zeros(x.shape[0], device=x.device)
        new_x, new_n = upsample(net, x, loss, self.box, int(upsample_share * self.count))
        x, n = torch.cat([x, new_x]), torch.cat([n, new_n])
        if x.shape[0] < self.count // 2:  # the surface moved a lot: start again from box samples
            self.initialise(net, x)
            return
        x, n = _thin(x, n, self.count)
        self.points, self.normals = resample_uniform(net, x, n, self.box, iterations=1)
        self.loss = torch.zeros(len(self), device=self.device)

    def attribute_loss(self, hits: torch.Tensor, losses: torch.Tensor) -> None:
        """Add the per-ray losses (M,) of surface hits (M, 3) to their nearest Iso-Point (running maximum)."""
        if len(self) == 0 or hits.shape[0] == 0:
            return
        nearest = torch.cdist(hits.detach(), self.points).argmin(1)
        self.loss = self.loss.scatter_reduce(0, nearest, losses.detach(), reduce="amax")

    def samples(self, n: int, sigma: float, generator=None) -> torch.Tensor:
        """``n`` points near the Iso-Points: a random point + Gaussian noise of ``sigma`` along its normal."""
        idx = torch.randint(0, len(self), (n,), device=self.device, generator=generator)
        noise = torch.randn(n, 1, device=self.device, generator=generator) * sigma
        return self.points[idx] + noise * self.normals[idx]


def _thin(x: torch.Tensor, n: torch.Tensor, count: int):
    """At most ``count`` points: a random subset (the resampling spreads them afterwards)."""
    if x.shape[0] <= count:
        return x, n
    keep = torch.randperm(x.shape[0], device=x.device)[:count]
    return x[keep], n[keep]


def write_iso_points(path: str | os.PathLike, points_local: np.ndarray, normals: np.ndarray, box: SurfaceBox, *,
                     rgb: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Iso-Points to LAS/LAZ 1.4 (point format 7): world coordinates in the box's CRS (WKT in the header),
    colours (0-1 floats scaled to 16 bits) and normals as float32 extra bytes ``NormalX/Y/Z``."""
    import laspy

    from geoimplicit.io.crs import parse_crs
    from geoimplicit.outputs import atomic_output

    path = Path(path)
    if path.suffix.lower() not in (".las", ".laz"):
        raise ValueError(f"write_iso_points: {path} must end in .las or .laz")
    xyz = np.asarray(points_local, np.float64) + box.origin
    header = laspy.LasHeader(point_format=7, version="1.4")
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.floor(xyz.min(0)) if len(xyz) else np.zeros(3)
    header.add_extra_dims([laspy.ExtraBytesParams(name=f"Normal{a}", type=np.float32,
                                                  description=f"SDF normal {a.lower()}") for a in "XYZ"])
    if box.crs_wkt:
        header.add_crs(parse_crs(box.crs_wkt))
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    nrm = np.asarray(normals, np.float32)
    las.NormalX, las.NormalY, las.NormalZ = nrm[:, 0], nrm[:, 1], nrm[:, 2]
    if rgb is not None:
        c = (np.clip(np.asarray(rgb, np.float64), 0, 1) * 65535).astype(np.uint16)
        las.red, las.green, las.blue = c[:, 0], c[:, 1], c[:, 2]
    with atomic_output(path, overwrite=overwrite) as tmp:
        las.write(tmp)
    return path
