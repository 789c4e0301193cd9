"""A small residual MLP decoder: a 3D query plus bilinearly sampled plane features -> an occupancy logit.

ConvONet style: the height inputs enter through ``fc_p``; each residual block adds a projection of the sampled
features ``fc_c[i](c)``. Because the features depend only on (x, y), the surface search computes the
projections once per column (:meth:`column_context`) and then decodes many heights per column cheaply
(:meth:`decode`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc0 = nn.Linear(width, width)
        self.fc1 = nn.Linear(width, width)
        nn.init.zeros_(self.fc1.weight)

    def forward(self, x):
        return x + self.fc1(F.relu(self.fc0(F.relu(x))))


class OccupancyDecoder(nn.Module):
    """Height inputs (z, and z minus the prior when ``use_prior``) + features (C) -> logit."""

    def __init__(self, features: int = 32, hidden: int = 32, blocks: int = 4, use_prior: bool = True):
        super().__init__()
        self.use_prior = use_prior
        self.fc_p = nn.Linear(2 if use_prior else 1, hidden)
        self.fc_c = nn.ModuleList(nn.Linear(features, hidden) for _ in range(blocks))
        self.blocks = nn.ModuleList(ResBlock(hidden) for _ in range(blocks))
        self.fc_out = nn.Linear(hidden, 1)

    def column_context(self, c: torch.Tensor) -> list:
        """Per-column feature projections: c (..., C) -> list of (..., hidden), one per block."""
        return [fc(c) for fc in self.fc_c]

    def height_inputs(self, z: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        if self.use_prior:
            return torch.stack([z, z - prior], -1)
        return z[..., None]

    def decode(self, context: list, z: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """context: list of (..., 1, hidden) (or broadcastable); z: (..., K) normalised heights; prior (..., 1)
        or (..., K) -> logits (..., K)."""
        net = self.fc_p(self.height_inputs(z, prior))
        for ctx, block in zip(context, self.blocks):
            net = block(net + ctx)
        return self.fc_out(F.relu(net))[..., 0]
