"""The across-scene MPI prior's network: posed views -> a surface (height and colour per texel) on a geo-MPI's
texture grid.

ImMPI's across-scene initialisation (ASI) predicts an MPI from features of the views warped onto the planes.
Here, for the geo layout:

1. :class:`ViewEncoder`: a small CNN gives every view ``feature_channels`` features beside its colour.
2. :func:`sweep_features`: colours and features of every view warped onto ``sweep_planes`` horizontal planes
   evenly spaced between the plane set's lowest and highest plane (plane homographies, bilinear), reduced over
   the views to their mean, standard deviation and the share of views that see each texel: any number of
   views, one included.
3. :class:`CostNet`: a 3D U-Net over (sweep plane, row, col) scores the sweep planes of every texel; the
   softmax over the planes gives a height (its expectation) and a confidence.
4. :class:`RefineNet`: a 2D U-Net at texel resolution corrects that height and the colour (the views' mean
   colour at the height).

:func:`geoimplicit.mpi.prior.surface.surface_mpi` turns (height, colour) into the densities and colours of any
plane set on the same texture grid, which is where the per-scene fit starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from geoimplicit.errors import ConfigError
from geoimplicit.mpi.planes import PlaneSet, geo_planes
from geoimplicit.mpi.warp import plane_homographies

__all__ = ["PriorArch", "PriorNet", "sweep_planes_for", "crop_geo_planes"]


@dataclass
class PriorArch:
    """Sizes of the prior network (saved with its weights)."""

    sweep_planes: int = 32
    """Horizontal planes of the plane sweep, evenly spaced over the plane set's height range."""
    feature_channels: int = 8
    """Learned features per view pixel, warped with the colours."""
    width: int = 16
    """Channels of the cost network's first level (x2 and x4 on the coarser levels)."""
    refine_width: int = 24
    """Channels of the 2D refinement network's first level."""

    @classmethod
    def from_dict(cls, d: dict) -> "PriorArch":
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown prior network settings: {', '.join(bad)}", hint=f"known: {', '.join(sorted(known))}")
        arch = cls(**d)
        if arch.sweep_planes < 4 or arch.width < 2 or arch.refine_width < 2 or arch.feature_channels < 0:
            raise ConfigError("prior network: sweep_planes >= 4, width >= 2, refine_width >= 2, feature_channels >= 0")
        return arch

    def to_dict(self) -> dict:
        return asdict(self)


class Conv2p1(nn.Module):
    """A 3x3x3 convolution factored into 3x3 over (row, col) and 3 along the planes ((2+1)D), on a volume laid out
    as (S, C, h, w): the plane axis is the batch of the 2D convolution, so fast 2D kernels run on CPU and GPU."""

    def __init__(self, cin, cout, stride=1, depth_stride=None):
        super().__init__()
        self.spatial = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        ds = stride if depth_stride is None else depth_stride
        self.depth = nn.Conv2d(cout, cout, (3, 1), stride=(ds, 1), padding=(1, 0))

    def forward(self, x):
        y = F.relu(self.spatial(x))
        S, C, h, w = y.shape
        z = self.depth(y.permute(1, 0, 2, 3).reshape(1, C, S, h * w))
        return z.reshape(C, z.shape[2], h, w).permute(1, 0, 2, 3)


def _conv2(cin, cout, stride=1, depth_stride=None):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ViewEncoder(nn.Module):
    """Per-pixel features of a view (K, 3, H, W) -> (K, C, H, W), full resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(_conv2(3, 16), nn.ReLU(), _conv2(16, 16), nn.ReLU(), _conv2(16, channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images - 0.5)


class _UNet(nn.Module):
    """Three-level U-Net (full, 1/2, 1/4) with additive skips; ``conv``: the 2D or (2+1)D convolution."""

    def __init__(self, conv, cin: int, width: int, cout: int, first_stride: int = 1):
        super().__init__()
        w = width
        self.inc = nn.Sequential(conv(cin, w, first_stride, 1), nn.ReLU(), conv(w, w), nn.ReLU())
        self.down1 = nn.Sequential(conv(w, 2 * w, 2), nn.ReLU(), conv(2 * w, 2 * w), nn.ReLU())
        self.down2 = nn.Sequential(conv(2 * w, 4 * w, 2), nn.ReLU(), conv(4 * w, 4 * w), nn.ReLU())
        self.up1, self.fuse1 = conv(4 * w, 2 * w), conv(2 * w, 2 * w)
        self.up0, self.fuse0 = conv(2 * w, w), conv(w, w)
        self.out = conv(w, cout)

    @staticmethod
    def _up(x, like):
        if x.shape[0] == 1 and like.shape[0] == 1:
            return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)
        v = F.interpolate(x.permute(1, 0, 2, 3)[None], size=(like.shape[0], *like.shape[2:]), mode="trilinear",
                          align_corners=False)
        return v[0].permute(1, 0, 2, 3)

    def forward(self, x):
        x0 = self.inc(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        u1 = F.relu(self.fuse1(F.relu(self.up1(self._up(x2, x1))) + x1))
        u0 = F.relu(self.fuse0(F.relu(self.up0(self._up(u1, x0))) + x0))
        return self.out(u0)


class CostNet(_UNet):
    """Sweep volume (S, C, h, w) -> score of every sweep plane (S, h, w). The U-Net runs at half the texture
    resolution and below (the refinement works at full resolution): a quarter of the work."""

    def __init__(self, cin: int, width: int):
        super().__init__(Conv2p1, cin, width, 1, first_stride=2)

    def forward(self, volume):
        score = super().forward(volume)  # (S, 1, h/2, w/2)
        return F.interpolate(score, size=volume.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


class RefineNet(_UNet):
    """Texel features (1, C, h, w) -> height correction (in sweep spacings) and colour logit correction (4, h, w)."""

    def __init__(self, cin: int, width: int):
        super().__init__(_conv2, cin, width, 4)
        nn.init.zeros_(self.out.weight)  # start from the cost network's height and the views' colour
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        return super().forward(x)[0]


def sweep_planes_for(planes: PlaneSet, count: int) -> PlaneSet:
    """``count`` horizontal planes evenly spaced between ``planes``' highest and lowest plane, on its texture grid."""
    if planes.layout != "geo":
        raise ConfigError("the MPI prior works on the geo plane layout", hint="fit with --layout geo or --prior none")
    res = planes.resolution
    bounds = (planes.left, planes.top - planes.height * res, planes.left + planes.width * res, planes.top)
    return geo_planes(bounds, res, float(planes.values.min()), float(planes.values.max()), count,
                      origin=planes.origin, crs=planes.crs)


def crop_geo_planes(planes: PlaneSet, col0: int, row0: int, width: int, height: int) -> PlaneSet:
    """The texels [row0:row0+height, col0:col0+width] of a geo plane set, same heights."""
    res = planes.resolution
    left, top = planes.left + col0 * res, planes.top - row0 * res
    return geo_planes((left, top - height * res, left + width * res, top), res, 0.0, 0.0, origin=planes.origin,
                      crs=planes.crs, heights=planes.values)


def sweep_features(sweep: PlaneSet, cams, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Plane-sweep statistics of ``feats`` (per view (C, H, W), colour first) over the sweep planes.

    Returns the network input (S, 2 C + 2, h, w): mean over the views that see a texel (C), standard
    deviation (C), share of the views that see it, whether at least two do; and that share (S, h, w).
    """
    S, h, w = sweep.num_planes, sweep.height, sweep.width
    dev = feats[0].device
    v, u = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    tex = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(h * w, device=dev)]).double()
    acc = acc2 = cnt = 0.0
    for cam, f in zip(cams, feats):
        Hf = torch.linalg.inv(plane_homographies(sweep.A, cam).Hinv)  # texture -> image pixels
        q = Hf @ tex
        x, y = q[:, 0] / q[:, 2], q[:, 1] / q[:, 2]
        H_, W_ = f.shape[-2:]
        valid = (q[:, 2] > 0) & (x > -0.5) & (x < W_ - 0.5) & (y > -0.5) & (y < H_ - 0.5)
        grid = torch.stack([(2 * x + 1) / W_ - 1, (2 * y + 1) / H_ - 1], -1).float().reshape(S, h, w, 2)
        grid = torch.where(valid.reshape(S, h, w, 1), grid, torch.full_like(grid, -2.0))  # far outside: zeros
        s = F.grid_sample(f[None].expand(S, -1, -1, -1), grid.to(f.dtype), align_corners=False)
        m = valid.reshape(S, 1, h, w).to(s.dtype)
        acc = acc + s * m
        acc2 = acc2 + s * s * m
        cnt = cnt + m
    n = cnt.clamp_min(1.0)
    mean = acc / n
    std = torch.sqrt((acc2 / n - mean * mean).clamp_min(0.0) + 1e-6) * (cnt > 1)
    share = cnt / len(feats)
    two = (cnt >= 2).to(mean.dtype)
    return torch.cat([mean, std, share, two], 1), share[:, 0]


class PriorNet(nn.Module):
    """Posed views -> surface height (local units) and colour on a geo plane set's texture grid."""

    def __init__(self, arch: PriorArch | None = None):
        super().__init__()
        self.arch = arch or PriorArch()
        cf = self.arch.feature_channels
        self.encoder = ViewEncoder(cf) if cf else None
        c = 3 + cf
        self.cost = CostNet(2 * c + 2 + 1, self.arch.width)  # + the plane's normalised height
        self.refine = RefineNet(3 + cf + 4, self.arch.refine_width)

    def forward(self, planes: PlaneSet, cams, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``planes``: a geo plane set (texture grid and height range); ``cams``: CameraTensors of the views in
        its local coordinates; ``images``: (3, H, W) in [0, 1]. Returns ``height`` (h, w) local, ``colour``
        (3, h, w), ``coarse_height`` (h, w), ``prob`` (S, h, w) over the sweep planes, ``seen`` (h, w)."""
        sweep = sweep_planes_for(planes, self.arch.sweep_planes)
        feats = []
        for img in images:  # one at a time: views may differ in size
            f = img if self.encoder is None else torch.cat([img, self.encoder(img[None])[0]], 0)
            feats.append(f)
        vol, share = sweep_features(sweep, cams, feats)
        S = sweep.num_planes
        t = torch.linspace(1.0, 0.0, S, device=vol.device, dtype=vol.dtype)  # top plane first
        vol = torch.cat([vol, t[:, None, None, None].expand(S, 1, *vol.shape[-2:])], 1)
        prob = torch.softmax(self.cost(vol).float(), dim=0)  # (S, h, w)
        t_coarse = (prob * t[:, None, None].float()).sum(0)
        c = 3 + self.arch.feature_channels
        at_surface = (prob[:, None] * vol[:, :c].float()).sum(0)  # (c, h, w): mean colour/features at the height
        conf = prob.max(0).values
        entropy = -(prob * torch.log(prob.clamp_min(1e-8))).sum(0) / math.log(S)
        seen = (prob * share.float()).sum(0)
        x = torch.cat([at_surface, t_coarse[None], conf[None], entropy[None], seen[None]], 0)[None]
        delta = self.refine(x).float()
        step = 1.0 / (S - 1)
        t_fine = (t_coarse + delta[0] * step).clamp(0.0, 1.0)
        colour = torch.sigmoid(torch.logit(at_surface[:3].clamp(0.01, 0.99)) + delta[1:4])
        h_lo, h_hi = float(planes.values.min()), float(planes.values.max())
        span = h_hi - h_lo
        return {"height": h_lo + t_fine * span, "coarse_height": h_lo + t_coarse * span, "colour": colour,
                "prob": prob, "seen": share.amax(0), "sweep_heights": torch.as_tensor(sweep.values.copy())}


def tiles_1d(n: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Windows covering [0, n): (start, stop, keep_start, keep_stop) with ``overlap`` context on inner sides."""
    if n <= tile:
        return [(0, n, 0, n)]
    step = tile - 2 * overlap
    out = []
    for k0 in range(0, n, step):
        k1 = min(n, k0 + step)
        s0, s1 = max(0, k0 - overlap), min(n, k1 + overlap)
        out.append((s0, s1, k0, k1))
        if k1 == n:
            break
    return out


@torch.no_grad()
def predict_tiled(net: PriorNet, planes: PlaneSet, cams, images, tile: int = 320, overlap: int = 32,
                  amp: bool = True) -> dict[str, torch.Tensor]:
    """:meth:`PriorNet.forward` over windows of the texture (``tile`` texels a side with ``overlap`` of context),
    so that large textures fit in memory; ``height`` (h, w), ``colour`` (3, h, w), ``seen`` (h, w)."""
    dev = images[0].device
    h, w = planes.height, planes.width
    height = torch.zeros(h, w, device=dev)
    colour = torch.zeros(3, h, w, device=dev)
    seen = torch.zeros(h, w, device=dev)
    use_amp = amp and dev.type == "cuda"
    for r0, r1, kr0, kr1 in tiles_1d(h, tile, overlap):
        for c0, c1, kc0, kc1 in tiles_1d(w, tile, overlap):
            sub = crop_geo_planes(planes, c0, r0, c1 - c0, r1 - r0)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                out = net(sub, cams, images)
            rs, cs = slice(kr0 - r0, kr1 - r0), slice(kc0 - c0, kc1 - c0)
            height[kr0:kr1, kc0:kc1] = out["height"][rs, cs]
            colour[:, kr0:kr1, kc0:kc1] = out["colour"][:, rs, cs]
            seen[kr0:kr1, kc0:kc1] = out["seen"].float()[rs, cs]
    return {"height": height, "colour": colour, "seen": seen}
