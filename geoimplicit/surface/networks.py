"""The SDF network (geometry) and the appearance network (IDR's rendering network), in plain PyTorch.

Both take **local** coordinates in CRS units (float32, about the box's origin) and normalise them inside by the
box (centre, half horizontal side ``scale``), so the SDF is in CRS units and its gradient has unit norm where
it is a distance. Positive outside (air), negative inside (ground, buildings).

Encodings: :class:`FrequencyEncoding` (IDR/NeRF: ``sin``/``cos`` of ``2^k`` times the coordinates) or
:class:`GridEncoding` (multiresolution grid as in Instant-NGP: per level a dense grid, hashed beyond
``hash_size`` entries; trilinear interpolation of all levels in one gather, so that autograd's second
derivatives, which the eikonal loss needs, are exact and cheap). Grid resolutions follow the box's aspect, so
a flat aerial box is not wasted on cells in z.

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

__all__ = ["FrequencyEncoding", "GridEncoding", "SDFNetwork", "AppearanceNetwork", "sdf_and_gradient",
           "anneal_weights"]

_PRIMES = (1, 2654435761, 805459861)


class FrequencyEncoding(nn.Module):
    """``[x, sin(2^k pi x), cos(2^k pi x)]`` for ``k < octaves`` of normalised coordinates in [-1, 1]."""

    def __init__(self, octaves: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(octaves, dtype=torch.float32))
        self.register_buffer("band_weights", torch.ones(octaves), persistent=False)  # see anneal_weights
        self.out_dim = 3 + 6 * octaves

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        arg = (xn[..., None, :] * self.freqs[:, None]).flatten(-2)
        w = self.band_weights.repeat_interleave(3)
        return torch.cat([xn, w * torch.sin(arg), w * torch.cos(arg)], -1)


class GridEncoding(nn.Module):
    """Multiresolution grid over the box: level ``l`` has cells of ``base_m * (finest_m / base_m)^(l/(L-1))``
    CRS units per axis (at least 2 nodes per axis); trilinear features, concatenated over levels.

    All levels live in one table (level ``l`` from row ``offsets[l]``) and are looked up in one
    ``index_select``: its backward is an ``index_add`` (no sort, unlike fancy indexing's), and one call for all
    levels keeps the eikonal loss's double backward to a few large kernels instead of a few per level."""

    def __init__(self, extent_m, levels: int, features: int, base_m: float, finest_m: float, hash_size: int):
        super().__init__()
        extent = np.asarray(extent_m, np.float64)
        self.levels, self.features = int(levels), int(features)
        res_all, sizes = [], []
        for lvl in range(self.levels):
            cell = base_m * (finest_m / base_m) ** (lvl / max(1, self.levels - 1))
            res = np.maximum(np.ceil(extent / cell).astype(np.int64), 1) + 1  # nodes per axis
            res_all.append(res)
            sizes.append(min(int(np.prod(res)), int(hash_size)))
        res_all = np.array(res_all)
        self.hashed = [bool(np.prod(r) > hash_size) for r in res_all]
        self.register_buffer("res", torch.as_tensor(res_all, dtype=torch.long))  # (L, 3)
        self.register_buffer("sizes", torch.as_tensor(sizes, dtype=torch.long))
        self.register_buffer("offsets", torch.as_tensor(np.cumsum([0] + sizes[:-1]), dtype=torch.long))
        self.register_buffer("is_hashed", torch.as_tensor(self.hashed))
        self.register_buffer("corners", torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]))
        self.table = nn.Parameter(torch.empty(int(sum(sizes)), self.features).uniform_(-1e-4, 1e-4))
        self.register_buffer("band_weights", torch.ones(self.levels), persistent=False)  # see anneal_weights
        self.out_dim = self.levels * self.features

    def level_rows(self, lvl: int) -> slice:
        """Rows of ``table`` that hold level ``lvl``."""
        start = int(self.offsets[lvl])
        return slice(start, start + int(self.sizes[lvl]))

    def _rows(self, ijk: torch.Tensor) -> torch.Tensor:
        """Table rows of lattice nodes ``ijk`` (N, L, 8, 3): dense row-major, or hashed (Instant-NGP's primes)."""
        res = self.res[:, None, :]  # (L, 1, 3) against (N, L, 8, 3)
        dense = (ijk[..., 0] * res[..., 1] + ijk[..., 1]) * res[..., 2] + ijk[..., 2]
        if any(self.hashed):
            h = (ijk[..., 0] * _PRIMES[0]) ^ (ijk[..., 1] * _PRIMES[1]) ^ (ijk[..., 2] * _PRIMES[2])
            dense = torch.where(self.is_hashed[:, None], torch.remainder(h, self.sizes[:, None]), dense)
        return dense + self.offsets[:, None]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` (N, 3) in [0, 1]^3 (box coordinates) -> (N, levels * features)."""
        return self.lookup(u, self.table)

    def lookup(self, u: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with another table of the same layout (derivative checks perturb it)."""
        n = u.shape[0]
        pos = u.clamp(0.0, 1.0)[:, None, :] * (self.res - 1).to(u.dtype)  # (N, L, 3)
        base = torch.minimum(pos.detach().floor().long(), self.res - 2).clamp_min(0)
        w = pos - base.to(u.dtype)  # differentiable in u
        rows = self._rows(base[:, :, None, :] + self.corners)  # (N, L, 8)
        feats = table.index_select(0, rows.reshape(-1)).view(n, self.levels, 8, self.features)
        wx, wy, wz = (torch.stack([1 - w[..., a], w[..., a]], -1) for a in range(3))  # (N, L, 2) each
        cw = (wx[..., :, None, None] * wy[..., None, :, None] * wz[..., None, None, :]).reshape(n, self.levels, 8)
        return ((feats * cw[..., None]).sum(2) * self.band_weights[:, None]).reshape(n, self.out_dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before the single table kept one parameter per level ("tables.<l>")
        old = [k for k in list(state_dict) if k.startswith(prefix + "tables.")]
        if old:
            parts = [state_dict.pop(prefix + f"tables.{lvl}") for lvl in range(len(old))]
            state_dict[prefix + "table"] = torch.cat(parts, 0)
            for name in ("offsets", "is_hashed", "corners"):
                state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def anneal_weights(bands: int, progress: float) -> torch.Tensor:
    """BARF's coarse-to-fine window over ``bands`` encoding bands (octaves or grid levels) at ``progress`` in
    [0, 1]: band ``k`` opens smoothly while ``progress * bands`` goes from ``k`` to ``k + 1``; all 1 at 1."""
    alpha = bands * min(max(progress, 0.0), 1.0)
    k = torch.arange(bands, dtype=torch.float32)
    return 0.5 * (1 - torch.cos(math.pi * (alpha - k).clamp(0.0, 1.0)))


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

    def anneal_encoding(self, progress: float) -> None:
        """Open the encoding's bands coarse to fine (:func:`anneal_weights`; 1 = all open, as saved)."""
        w = self.encoding.band_weights
        w.copy_(anneal_weights(w.numel(), progress).to(w.device))


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
