"""The occupancy network: points (+ 0, 1 or 2 ortho images) -> feature plane -> occupancy of 3D queries.

Variants as in ImpliCity's ablation: ``points`` (ImpliCity-0), ``mono`` (one ortho), ``stereo`` (two orthos).
All tensors are in a patch's local frame (:mod:`.normalize`): x, y in metres from the patch centre, z
normalised; nothing the model sees depends on the CRS's absolute coordinates or units.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from geoimplicit.dsm.occupancy.config import VARIANT_IMAGES, ModelConfig
from geoimplicit.dsm.occupancy.decoder import OccupancyDecoder
from geoimplicit.dsm.occupancy.encoder import ImageEncoder, PointGridEncoder, UNet2D


class OccupancyNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_images = VARIANT_IMAGES[cfg.variant]
        self.points = PointGridEncoder(cfg.point_features)
        cin = self.points.out_channels
        if self.n_images:
            self.images = ImageEncoder(cfg.image_features, cfg.true_ortho_input)
            cin += self.n_images * cfg.image_features
        self.unet = UNet2D(cin, list(cfg.unet_channels), cfg.features)
        self.decoder = OccupancyDecoder(cfg.features, cfg.decoder_hidden, cfg.decoder_blocks, cfg.use_prior)

    @property
    def grid_multiple(self) -> int:
        return self.unet.multiple

    def encode(self, points, batch, n_batch: int, shape: tuple, images=None, true_ortho=None) -> dict:
        """points (N, 3) local; batch (N,) patch index; images (B, K, 4, H, W) or None; true_ortho (B, K) or None
        (read only by models with ``true_ortho_input``) -> {"features": (B, C, H, W), "prior": (B, 1, H, W)}."""
        grid, prior = self.points(points, batch, n_batch, shape, self.cfg.feature_cell_m)
        parts = [grid]
        if self.n_images:
            if images is None:
                images = grid.new_zeros((n_batch, self.n_images, 4) + tuple(shape))
            elif images.shape[1] < self.n_images:  # fewer orthos than the model takes: the rest are absent
                pad = images.new_zeros((n_batch, self.n_images - images.shape[1], 4) + tuple(shape))
                images = torch.cat([images, pad], 1)
            if true_ortho is not None and true_ortho.shape[1] != self.n_images:
                true_ortho = F.pad(true_ortho, (0, max(0, self.n_images - true_ortho.shape[1])))[:, : self.n_images]
            parts.append(self.images(images[:, : self.n_images].to(grid.dtype), true_ortho))
        features = self.unet(torch.cat(parts, 1))
        if not self.cfg.use_prior:
            prior = torch.zeros_like(prior)
        return {"features": features, "prior": prior}

    def sample(self, enc: dict, xy: torch.Tensor) -> tuple:
        """Bilinear features at local metres xy (B, Q, 2) -> (B, Q, C), prior (B, Q)."""
        feats, prior = enc["features"], enc["prior"]
        H, W = feats.shape[-2:]
        cell = self.cfg.feature_cell_m
        g = torch.stack([xy[..., 0] / (W * cell / 2), -xy[..., 1] / (H * cell / 2)], -1)[:, None]
        both = torch.cat([feats, prior.to(feats.dtype)], 1)
        s = F.grid_sample(both, g.to(both.dtype), mode="bilinear", padding_mode="border", align_corners=False)
        s = s[:, :, 0].permute(0, 2, 1)
        return s[..., :-1], s[..., -1]

    def decode(self, enc: dict, queries: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, 3) local -> logits (B, Q)."""
        c, prior = self.sample(enc, queries[..., :2])
        ctx = self.decoder.column_context(c)
        return self.decoder.decode(ctx, queries[..., 2], prior)

    def forward(self, points, batch, n_batch, shape, queries, images=None, true_ortho=None):
        return self.decode(self.encode(points, batch, n_batch, shape, images, true_ortho), queries)


def build_model(cfg: ModelConfig) -> OccupancyNet:
    return OccupancyNet(cfg)


def model_config_from_dict(d: dict) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in d.items() if k in names})
