"""The SDF network (geometry) and the appearance network (IDR's rendering network), in plain PyTorch.

Both take **local** coordinates in CRS units (float32, about the box's origin) and normalise them inside by the
box (centre, half horizontal side ``scale``), so the SDF is in CRS units and its gradient has unit norm where
it is a distance. Positive outside (air), negative inside (ground, buildings).

Encodings: :class:`FrequencyEncoding` (IDR/NeRF: ``sin``/``cos`` of ``2^k`` times the coordinates) or
:class:`GridEncoding` (multiresolution grid as in Instant-NGP: per level a dense grid, hashed beyond
``hash_size`` entries, trilinear interpolation written with gathers so that second derivatives, which the
eikonal loss needs, are exact). Grid resolutions follow the box's aspect, so a flat aerial box is not
wasted on cells in z.

Geometric initialisation (as IDR and SAL do, so the first zero level set is a known surface): the output is
``f(x) = prior(x) + scale * mlp(enc(x))`` with ``prior`` the plane ``z - z0`` at the tile's mean height
(``plane_z``: the fit sets it from a plane sweep of the train views) or the sphere ``|x - c| - r``, and the last layer of ``mlp`` starting near zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from geoimplicit.surface.box import SurfaceBox
from geoimplicit.surface.config import SurfaceConfig

__all__ = ["FrequencyEncoding", "GridEncoding", "SDFNetwork", "AppearanceNetwork", "sdf_and_gradient"]

_PRIMES = (1, 2654435761, 805459861)


class FrequencyEncoding(nn.Module):
    """``[x, sin(2^k pi x), cos(2^k pi x)]`` for ``k < octaves`` of normalised coordinates in [-1, 1]."""

    def __init__(self, octaves: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(octaves, dtype=torch.float32))
        self.out_dim = 3 + 6 * octaves

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        arg = (xn[..., None, :] * self.freqs[:, None]).flatten(-2)
        return torch.cat([xn, torch.sin(arg), torch.cos(arg)], -1)


class GridEncoding(nn.Module):
    """Multiresolution grid over the box: level ``l`` has cells of ``base_m * (finest_m / base_m)^(l/(L-1))``
    CRS units per axis (at least 2 nodes per axis); trilinear features, concatenated over levels."""

    def __init__(self, extent_m, levels: int, features: int, base_m: float, finest_m: float, hash_size: int):
        super().__init__()
        extent = np.asarray(extent_m, np.float64)
        self.levels, self.features = int(levels), int(features)
        sizes, hashed, res_all = [], [], []
        for lvl in range(self.levels):
            frac = lvl / max(1, self.levels - 1)
            cell = base_m * (finest_m / base_m) ** frac
            res = np.maximum(np.ceil(extent / cell).astype(np.int64), 1) + 1  # nodes per axis
            dense = int(np.prod(res))
            n = min(dense, int(hash_size))
            res_all.append(res)
            hashed.append(dense > hash_size)
            sizes.append(n)
        self.register_buffer("res", torch.as_tensor(np.array(res_all), dtype=torch.long))
        self.register_buffer("sizes", torch.as_tensor(sizes, dtype=torch.long))
        self.hashed = hashed
        # one table per level: a gather's backward then fills a gradient of its own level's size only
        self.tables = nn.ParameterList([nn.Parameter(torch.empty(n, self.features).uniform_(-1e-4, 1e-4))
                                        for n in sizes])
        self.out_dim = self.levels * self.features

    def _index(self, ijk: torch.Tensor, lvl: int) -> torch.Tensor:
        res = self.res[lvl]
        if self.hashed[lvl]:
            h = ijk[..., 0] * _PRIMES[0]
            h = h ^ (ijk[..., 1] * _PRIMES[1])
            h = h ^ (ijk[..., 2] * _PRIMES[2])
            return torch.remainder(h, self.sizes[lvl])
        return (ijk[..., 0] * res[1] + ijk[..., 1]) * res[2] + ijk[..., 2]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` (N, 3) in [0, 1]^3 (box coordinates) -> (N, levels * features)."""
        u = u.clamp(0.0, 1.0)
        out = []
        corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=u.device)
        for lvl in range(self.levels):
            res = self.res[lvl]
            pos = u * (res - 1).to(u.dtype)
            base = torch.minimum(pos.detach().floor().long(), res - 2).clamp_min(0)
            w = pos - base.to(u.dtype)  # (N, 3), differentiable in u
            ijk = base[:, None, :] + corners[None]  # (N, 8, 3)
            feats = self.tables[lvl][self._index(ijk, lvl)]  # (N, 8, F)
            cw = torch.where(corners[None].bool(), w[:, None, :], 1 - w[:, None, :]).prod(-1)  # (N, 8)
            out.append((feats * cw[..., None]).sum(1))
        return torch.cat(out, -1)


class SDFNetwork(nn.Module):
    """Signed distance (CRS units) and a feature vector of local points (see the module docstring)."""

    def __init__(self, box: SurfaceBox, cfg: SurfaceConfig):
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(box.centre, dtype=torch.float32))
        self.register_buffer("lo", torch.as_tensor(box.lo, dtype=torch.float32))
        self.register_buffer("extent", torch.as_tensor(box.hi - box.lo, dtype=torch.float32))
        self.register_buffer("plane_z", torch.tensor(float(box.centre[2])))  # plane init: set by the fit
        self.scale = box.scale
        self.init = cfg.init
        self.radius = 0.5 * float(min(box.hi - box.lo))  # sphere init: touches the box's thinnest side
        self.feature_size = cfg.feature_size
        if cfg.encoding == "grid":
            self.encoding = GridEncoding(box.hi - box.lo, cfg.grid_levels, cfg.grid_features, cfg.grid_base_m,
                                         cfg.grid_finest_m, cfg.grid_hash_size)
            in_dim = self.encoding.out_dim + 3
        else:
            self.encoding = FrequencyEncoding(cfg.frequencies)
            in_dim = self.encoding.out_dim
        self.grid = cfg.encoding == "grid"
        layers, dim = [], in_dim
        for _ in range(cfg.sdf_layers):
            layers += [nn.Linear(dim, cfg.hidden), nn.Softplus(beta=100)]
            dim = cfg.hidden
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(dim, 1 + cfg.feature_size)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 1e-4)
            self.head.bias.zero_()

    def prior(self, x: torch.Tensor) -> torch.Tensor:
        if self.init == "plane":
            return x[:, 2] - self.plane_z
        return (x - self.centre).norm(dim=1) - self.radius

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local points (N, 3) -> SDF (N,) in CRS units, feature (N, feature_size)."""
        xn = (x - self.centre) / self.scale
        if self.grid:
            enc = torch.cat([xn, self.encoding((x - self.lo) / self.extent)], -1)
        else:
            enc = self.encoding(xn)
        out = self.head(self.mlp(enc))
        return self.prior(x) + self.scale * out[:, 0], out[:, 1:]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]


def sdf_and_gradient(net: SDFNetwork, x: torch.Tensor, create_graph: bool = True):
    """SDF (N,), its gradient (N, 3) and the feature (N, F) at local points ``x`` (N, 3); with
    ``create_graph`` the gradient is differentiable (eikonal loss, normals of the appearance network)."""
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        f, feat = net(x)
        (g,) = torch.autograd.grad(f.sum(), x, create_graph=create_graph)
    return f, g, feat


class AppearanceNetwork(nn.Module):
    """IDR's rendering network: colour of a surface point from its position, normal, the view direction and
    the SDF network's feature vector (``[x, n, v, feature] -> rgb``, sigmoid output); ``v`` is zero unless
    ``view_dependent``."""

    def __init__(self, box: SurfaceBox, cfg: SurfaceConfig):
        super().__init__()
        self.register_buffer("centre", torch.as_tensor(box.centre, dtype=torch.float32))
        self.scale = box.scale
        self.view_dependent = cfg.view_dependent
        self.pos_enc = FrequencyEncoding(6)
        dim = self.pos_enc.out_dim + 3 + 3 + cfg.feature_size
        layers = []
        for _ in range(cfg.colour_layers):
            layers += [nn.Linear(dim, cfg.hidden), nn.ReLU()]
            dim = cfg.hidden
        layers.append(nn.Linear(dim, 3))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x, normals, view_dirs, feature) -> torch.Tensor:
        n = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-6)
        enc = self.pos_enc((x - self.centre) / self.scale)
        if not self.view_dependent:
            view_dirs = torch.zeros_like(view_dirs)
        return torch.sigmoid(self.mlp(torch.cat([enc, n, view_dirs, feature], -1)))
