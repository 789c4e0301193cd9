"""Encoders: a local PointNet pooled onto a ground-plane grid, a 2D U-Net, an ortho-image encoder, a raster prior.

Shapes: B patches, N points in all (flattened, with a batch index), grid (H, W) of ``cell_m`` metres, north up
(row 0 is the northern edge), x right. Pooling uses ``torch.Tensor.scatter_reduce`` (no torch-scatter).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

EMPTY = -1e4


def cell_index(xy: torch.Tensor, batch: torch.Tensor, shape: tuple, cell_m: float):
    """Flat cell index (B*H*W space) of points at local metres ``xy`` (N, 2); also the in-grid mask and the
    position inside the cell in [-0.5, 0.5] (N, 2)."""
    H, W = shape
    fc = (xy[:, 0] + W * cell_m / 2) / cell_m
    fr = (H * cell_m / 2 - xy[:, 1]) / cell_m
    col = torch.floor(fc)
    row = torch.floor(fr)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    col = col.clamp(0, W - 1).long()
    row = row.clamp(0, H - 1).long()
    flat = batch.long() * (H * W) + row * W + col
    frac = torch.stack([fc - col - 0.5, fr - row - 0.5], dim=1)
    return flat, inside, frac


def scatter_pool(values: torch.Tensor, index: torch.Tensor, size: int, reduce: str, fill: float = 0.0):
    """Pool (N, C) ``values`` into (size, C) by ``index`` (N,) with reduce amax/amin/mean/sum; empty -> fill."""
    C = values.shape[1]
    out = torch.full((size, C), fill, dtype=values.dtype, device=values.device)
    if values.shape[0] == 0:
        return out
    idx = index[:, None].expand(-1, C)
    return out.scatter_reduce(0, idx, values, reduce=reduce, include_self=False)


def push_pull_fill(value: torch.Tensor, mask: torch.Tensor, levels: int = 12) -> torch.Tensor:
    """Fill the cells where ``mask`` is 0 of ``value`` (B, 1, H, W) from a mask-weighted image pyramid.

    A fast, smooth, complete hole fill (pull: average valid cells down the pyramid; push: fill each level's
    holes from the coarser level). Cells with data keep their value.
    """
    vals, masks = [value * mask], [mask]
    v, m = value * mask, mask
    for _ in range(levels):
        if min(v.shape[-2:]) <= 1:
            break
        v = F.avg_pool2d(v, 2, ceil_mode=True)
        m = F.avg_pool2d(m, 2, ceil_mode=True)
        vals.append(v)
        masks.append(m)
    filled = torch.where(masks[-1] > 0, vals[-1] / masks[-1].clamp_min(1e-6), torch.zeros_like(vals[-1]))
    for v, m in zip(reversed(vals[:-1]), reversed(masks[:-1])):
        up = F.interpolate(filled, size=v.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(m > 0, v / m.clamp_min(1e-6), up)
    return filled


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
    )


class UNet2D(nn.Module):
    """A small U-Net: one conv block per level, 2x2 max-pool down, bilinear up + skip concat."""

    def __init__(self, cin: int, channels: list, cout: int):
        super().__init__()
        self.down = nn.ModuleList()
        c = cin
        for ch in channels:
            self.down.append(conv_block(c, ch))
            c = ch
        self.up = nn.ModuleList()
        for ch in reversed(channels[:-1]):
            self.up.append(conv_block(c + ch, ch))
            c = ch
        self.out = nn.Conv2d(c, cout, 1)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.down) - 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)


class PointGridEncoder(nn.Module):
    """Local PointNet on each point (position in its cell, height, height below its cell's top), pooled by max
    and mean onto the grid; plus raster channels (filled cell-max prior, has-points mask, log count, spread)."""

    RASTER_CHANNELS = 4

    def __init__(self, features: int = 32):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(
            nn.Linear(6, features), nn.ReLU(inplace=True),
            nn.Linear(features, features), nn.ReLU(inplace=True),
            nn.Linear(features, features),
        )

    @property
    def out_channels(self) -> int:
        return 2 * self.features + self.RASTER_CHANNELS

    def forward(self, points: torch.Tensor, batch: torch.Tensor, n_batch: int, shape: tuple, cell_m: float):
        """points (N, 3) local (x m, y m, z normalised); returns grid (B, C, H, W) and prior (B, 1, H, W)."""
        H, W = shape
        size = n_batch * H * W
        flat, inside, frac = cell_index(points[:, :2], batch, shape, cell_m)
        points, flat, frac = points[inside], flat[inside], frac[inside]
        z = points[:, 2:3].float()
        zmax = scatter_pool(z, flat, size, "amax", EMPTY)
        zmin = scatter_pool(z, flat, size, "amin", 0.0)
        count = scatter_pool(torch.ones_like(z), flat, size, "sum", 0.0)
        zmean = scatter_pool(z, flat, size, "sum", 0.0) / count.clamp_min(1)
        feats_in = torch.cat([frac, z, z - zmax[flat], z - zmean[flat], torch.log1p(count[flat]) / 3], 1)
        f = self.mlp(feats_in).float()
        fmax = scatter_pool(f, flat, size, "amax", 0.0)
        fmean = scatter_pool(f, flat, size, "sum", 0.0) / count.clamp_min(1)
        mask = (count > 0).float()

        def grid(t):
            return t.view(n_batch, H, W, -1).permute(0, 3, 1, 2)

        zmax_g = grid(torch.where(mask > 0, zmax, torch.zeros_like(zmax)))
        mask_g = grid(mask)
        prior = push_pull_fill(zmax_g, mask_g)
        raster = torch.cat([prior, mask_g, grid(torch.log1p(count) / 3), grid((zmax - zmin) * mask)], 1)
        return torch.cat([grid(fmax), grid(fmean), raster], 1), prior


class ImageEncoder(nn.Module):
    """Per ortho image (RGB + coverage channel, already on the feature grid): standardise, two conv layers.
    The same weights for every image; outputs are concatenated in image order. With ``true_ortho_input`` a fifth
    channel says, per image, whether it is a true ortho (1 over its coverage) or not (0)."""

    def __init__(self, features: int = 16, true_ortho_input: bool = False):
        super().__init__()
        self.true_ortho_input = true_ortho_input
        in_channels = 5 if true_ortho_input else 4
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, features, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
        )

    def forward(self, images: torch.Tensor, true_ortho: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, K, 4, H, W), true_ortho (B, K) (1 = true ortho; None = none is) -> (B, K*features, H, W)."""
        B, K, C, H, W = images.shape
        x = images.reshape(B * K, C, H, W)
        rgb, valid = x[:, :-1], x[:, -1:]
        n = valid.sum((2, 3), keepdim=True).clamp_min(1)
        mean = (rgb * valid).sum((2, 3), keepdim=True) / n
        var = (((rgb - mean) * valid) ** 2).sum((2, 3), keepdim=True) / n
        rgb = (rgb - mean) / (var.sqrt() + 0.02) * valid
        parts = [rgb, valid]
        if self.true_ortho_input:
            flag = images.new_zeros((B, K)) if true_ortho is None else true_ortho.to(images.dtype)
            parts.append(valid * flag.reshape(B * K, 1, 1, 1))
        y = self.net(torch.cat(parts, 1))
        return y.reshape(B, -1, H, W)
