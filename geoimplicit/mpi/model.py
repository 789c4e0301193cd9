"""Where an MPI's colour and density come from.

Three generators of the same (D, 4, h, w) tensor (rgb in [0, 1], density >= 0 in 1 / world units):

- ``direct``: per-plane parameters, stored as a sum of a full-resolution and two coarser grids (1/4, 1/16) so
  that the coarse levels spread the gradient of few views quickly (a Laplacian-pyramid parametrisation);
- ``conv``: ImMPI-style convolutional decoder of a learned latent feature grid, conditioned on a positional
  encoding of the plane index (ImMPI feeds image features from a pretrained prior here; that prior cannot be
  downloaded, so the latent is learned per scene);
- ``mlp``: an implicit MLP over Fourier features of (x, y) and of the plane index.

Which one fits best was measured (``bench/mpi_fit.py``, ``docs/nvs.md``): ``direct`` is the default.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MPIGenerator", "DirectMPI", "ConvMPI", "MLPMPI", "build_model", "MODEL_KINDS", "bilinear_matrix",
           "upsample_bilinear"]

DENSITY_INIT = 0.05  # softplus(raw) at init: alpha ~ 1 - exp(-0.05) per plane spacing


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def fourier(x: torch.Tensor, n_freq: int) -> torch.Tensor:
    """[x, sin(2^k pi x), cos(2^k pi x)] along the last dimension."""
    freqs = (2.0 ** torch.arange(n_freq, device=x.device, dtype=x.dtype)) * math.pi
    xf = x.unsqueeze(-1) * freqs
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], dim=-1)


@functools.lru_cache(maxsize=16)  # a fit asks for the same few matrices every step
def bilinear_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """(n_out, n_in) matrix of 1D linear interpolation from ``n_in`` to ``n_out`` samples, the same weights as
    ``F.interpolate(mode="bilinear", align_corners=False)`` with an output size (edge samples clamped). Cached:
    do not modify it in place."""
    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    w1 = src - i0
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1.0 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m.to(device=device, dtype=torch.float32)


class _Tf32:
    """Matrix products in TF32 inside the block (float32 storage and accumulation, 10-bit mantissa inputs)."""

    def __enter__(self):
        self.prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.prev


class _SeparableUpsample(torch.autograd.Function):
    """``uh @ x @ uw.T`` and its adjoint ``uh.T @ g @ uw``, both in TF32 (the weights sum to 1 per row, so
    the inputs' rounding is the only error: about 5e-4 relative)."""

    @staticmethod
    def forward(ctx, x, uh, uw):
        ctx.save_for_backward(uh, uw)
        with _Tf32():
            return torch.matmul(torch.matmul(uh, x), uw.T)

    @staticmethod
    def backward(ctx, grad):
        uh, uw = ctx.saved_tensors
        with _Tf32():
            return torch.matmul(torch.matmul(uh.T, grad), uw), None, None


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``x`` (N, C, h, w) to ``size`` (align_corners=False). On CUDA as two matrix
    products each way (:class:`_SeparableUpsample`): ``F.interpolate``'s backward scatters with atomics that
    collide on every coarse texel, 40 % of a 96-plane fit's GPU time. Same result as ``F.interpolate`` up to
    TF32 rounding (tested); on the CPU it is ``F.interpolate``."""
    if x.device.type != "cuda":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    with torch.autocast(device_type="cuda", enabled=False):
        uh = bilinear_matrix(x.shape[-2], size[0], x.device)
        uw = bilinear_matrix(x.shape[-1], size[1], x.device)
        return _SeparableUpsample.apply(x.float(), uh, uw)


class MPIGenerator(nn.Module):
    """Base: ``forward() -> (D, 4, h, w)``; ``density_scale`` turns softplus units into 1 / world units."""

    kind = "base"

    def __init__(self, num_planes: int, height: int, width: int, density_scale: float = 1.0):
        super().__init__()
        self.num_planes, self.height, self.width = int(num_planes), int(height), int(width)
        self.register_buffer("density_scale", torch.tensor(float(density_scale)))

    def raw(self) -> torch.Tensor:  # (D, 4, h, w) before activation
        raise NotImplementedError

    def forward(self) -> torch.Tensor:
        raw = self.raw()
        rgb = torch.sigmoid(raw[:, :3])
        density = F.softplus(raw[:, 3:4].float()) * self.density_scale
        return torch.cat([rgb.to(density.dtype), density], dim=1)

    @torch.no_grad()
    def init_colour(self, rgb: torch.Tensor) -> None:
        """Start from per-plane colours (D, 3, h, w) (e.g. the plane-sweep mean of the train views)."""

    @torch.no_grad()
    def init_density(self, density: torch.Tensor) -> None:
        """Start from per-plane densities (D, h, w) in softplus units (before ``density_scale``); generators
        without an explicit per-plane grid ignore it."""


class _ActivateShared(torch.autograd.Function):
    """``DirectMPI``'s output from its raw (D, 4, h, w) sum in one pass each way: colour logits mixed with their
    mean over the planes (``share``) then sigmoid, density softplus times ``scale``. The same as the sliced
    autograd expression (tested), without its full-size slice, cat and zero-filled gradients."""

    @staticmethod
    def forward(ctx, raw, scale, share: float):
        out = torch.empty_like(raw)
        c = raw[:, :3]
        if share > 0:
            c = torch.lerp(c, c.mean(0, keepdim=True), share)
        torch.sigmoid(c, out=out[:, :3])
        out[:, 3] = F.softplus(raw[:, 3]) * scale
        ctx.save_for_backward(raw, out, scale)
        ctx.share = share
        return out

    @staticmethod
    def backward(ctx, grad):
        raw, out, scale = ctx.saved_tensors
        share = ctx.share
        g = torch.empty_like(raw)
        y = out[:, :3]
        gc = grad[:, :3] * y * (1 - y)
        if share > 0:  # adjoint of lerp towards the plane mean
            gc = torch.lerp(gc, gc.mean(0, keepdim=True), share)
        g[:, :3] = gc
        g[:, 3] = grad[:, 3] * torch.sigmoid(raw[:, 3]) * scale
        return g, None, None


class DirectMPI(MPIGenerator):
    kind = "direct"

    def __init__(self, num_planes, height, width, density_scale=1.0, levels=(1, 4, 16)):
        super().__init__(num_planes, height, width, density_scale)
        self.levels = tuple(int(v) for v in levels)
        self.grids = nn.ParameterList()
        for lv in self.levels:
            h, w = max(1, math.ceil(height / lv)), max(1, math.ceil(width / lv))
            self.grids.append(nn.Parameter(torch.zeros(num_planes, 4, h, w)))
        with torch.no_grad():
            self.grids[-1][:, 3] = _inv_softplus(DENSITY_INIT)

    colour_share = 0.0
    """While fitting: colour logits = share * (their mean over the planes) + (1 - share) * per-plane logits, so
    that wrong geometry cannot hide behind per-plane colours (a 2.5D prior for near-nadir views). Baked into the
    grids by :meth:`bake_colour_share` before saving, so a saved model needs no setting."""

    def _levels_sum(self):
        size = (self.height, self.width)
        out = self.grids[0]
        if out.shape[-2:] != size:
            out = upsample_bilinear(out, size)
        for g in self.grids[1:]:
            out = out + upsample_bilinear(g, size)
        return out

    def forward(self) -> torch.Tensor:
        raw = self._levels_sum()  # float32: the grids and their upsampling stay out of autocast
        return _ActivateShared.apply(raw, self.density_scale.to(raw.dtype), float(self.colour_share))

    def raw(self):
        out = self._levels_sum()
        s = float(self.colour_share)
        if s > 0:
            c = out[:, :3]
            c = s * c.mean(0, keepdim=True) + (1 - s) * c
            out = torch.cat([c, out[:, 3:]], dim=1)
        return out

    @torch.no_grad()
    def bake_colour_share(self) -> None:
        """Write the shared colours into the finest grid and switch sharing off (the output is unchanged)."""
        if float(self.colour_share) <= 0 or self.grids[0].shape[-2:] != (self.height, self.width):
            return
        target = self.raw()[:, :3]
        rest = self._levels_sum()[:, :3] - self.grids[0][:, :3]
        self.grids[0][:, :3] = target - rest
        self.colour_share = 0.0

    @torch.no_grad()
    def init_colour(self, rgb):
        logit = torch.logit(rgb.clamp(0.02, 0.98))
        coarse = self.grids[-1]
        low = F.interpolate(logit, size=coarse.shape[-2:], mode="area")
        coarse[:, :3] = low
        up = F.interpolate(low, size=(self.height, self.width), mode="bilinear", align_corners=False)
        fine = self.grids[0]
        fine[:, :3] = F.interpolate(logit - up, size=fine.shape[-2:], mode="area")

    @torch.no_grad()
    def init_density(self, density):
        raw = torch.log(torch.expm1(density.clamp_min(1e-4)))[:, None]  # inverse softplus
        for g in self.grids:
            g[:, 3] = 0.0
        coarse = self.grids[-1]
        low = F.interpolate(raw, size=coarse.shape[-2:], mode="area")
        coarse[:, 3:4] = low
        up = F.interpolate(low, size=(self.height, self.width), mode="bilinear", align_corners=False)
        fine = self.grids[0]
        fine[:, 3:4] = F.interpolate(raw - up, size=fine.shape[-2:], mode="area")


class ConvMPI(MPIGenerator):
    kind = "conv"

    def __init__(self, num_planes, height, width, density_scale=1.0, features=16, hidden=32, pe_freq=4):
        super().__init__(num_planes, height, width, density_scale)
        self.latent = nn.Parameter(torch.randn(1, features, max(1, height // 2), max(1, width // 2)) * 0.1)
        self.pe_freq = pe_freq
        pe_dim = 1 + 2 * pe_freq
        self.net = nn.Sequential(
            nn.Conv2d(features + pe_dim, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Upsample(size=(height, width), mode="bilinear", align_corners=False),
            nn.Conv2d(hidden, 4, 3, padding=1),
        )
        with torch.no_grad():
            self.net[-1].bias[3] = _inv_softplus(DENSITY_INIT)

    def raw(self):
        D = self.num_planes
        t = torch.linspace(-1, 1, D, device=self.latent.device).unsqueeze(-1)
        pe = fourier(t, self.pe_freq)  # (D, P)
        lat = self.latent.expand(D, -1, -1, -1)
        pe = pe[:, :, None, None].expand(-1, -1, lat.shape[2], lat.shape[3])
        return self.net(torch.cat([lat, pe], dim=1))


class MLPMPI(MPIGenerator):
    kind = "mlp"

    def __init__(self, num_planes, height, width, density_scale=1.0, hidden=64, layers=4, xy_freq=8, pe_freq=4):
        super().__init__(num_planes, height, width, density_scale)
        self.xy_freq, self.pe_freq = xy_freq, pe_freq
        in_dim = 2 * (1 + 2 * xy_freq) + (1 + 2 * pe_freq)
        mods, d = [], in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        mods.append(nn.Linear(d, 4))
        self.net = nn.Sequential(*mods)
        with torch.no_grad():
            self.net[-1].bias[3] = _inv_softplus(DENSITY_INIT)

    def raw(self):
        D, h, w = self.num_planes, self.height, self.width
        dev = self.net[0].weight.device
        ys = torch.linspace(-1, 1, h, device=dev)
        xs = torch.linspace(-1, 1, w, device=dev)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        xy = fourier(torch.stack([xx, yy], -1).reshape(-1, 2), self.xy_freq).reshape(h * w, -1)  # (hw, 2(1+2L))
        # fourier() on a (N, 2) input yields [x, y, sin.., cos..]: fine as a feature vector
        t = fourier(torch.linspace(-1, 1, D, device=dev).unsqueeze(-1), self.pe_freq)  # (D, P)
        feats = torch.cat([xy.unsqueeze(0).expand(D, -1, -1), t.unsqueeze(1).expand(-1, h * w, -1)], dim=-1)
        out = self.net(feats)  # (D, hw, 4)
        return out.permute(0, 2, 1).reshape(D, 4, h, w)


MODEL_KINDS = {"direct": DirectMPI, "conv": ConvMPI, "mlp": MLPMPI}


def build_model(kind: str, num_planes: int, height: int, width: int, density_scale: float) -> MPIGenerator:
    try:
        cls = MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown MPI model {kind!r}; choose one of {sorted(MODEL_KINDS)}") from None
    return cls(num_planes, height, width, density_scale)
