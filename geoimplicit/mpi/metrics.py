"""Image metrics and losses shared by fitting and evaluation (torch; images (3, H, W) in [0, 1])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "ssim_map", "edge_aware_smoothness"]


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    err = (pred.float() - target.float()) ** 2
    if mask is not None:
        err = err[..., mask] if err.dim() == 3 else err[mask]
    mse = float(err.mean())
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def _gauss(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(a: torch.Tensor, b: torch.Tensor, size: int = 11) -> torch.Tensor:
    """SSIM map (H', W') averaged over channels (Gaussian window 11, sigma 1.5, valid region)."""
    a = a.float().unsqueeze(0)
    b = b.float().unsqueeze(0)
    C = a.shape[1]
    g = _gauss(size, device=a.device)
    k = (g[:, None] * g[None, :]).expand(C, 1, size, size)
    size = min(size, a.shape[-1], a.shape[-2])
    if k.shape[-1] != size:
        g = _gauss(size, device=a.device)
        k = (g[:, None] * g[None, :]).expand(C, 1, size, size)

    def filt(x):
        return F.conv2d(x, k, groups=C)

    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a**2
    sbb = filt(b * b) - mu_b**2
    sab = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return m[0].mean(0)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two images (3, H, W)."""
    return ssim_map(a, b).mean()


def edge_aware_smoothness(depth: torch.Tensor, image: torch.Tensor, gamma: float = 10.0) -> torch.Tensor:
    """Mean |grad depth| weighted by exp(-gamma |grad image|); depth (H, W) normalised by the caller."""
    dx = (depth[:, 1:] - depth[:, :-1]).abs()
    dy = (depth[1:] - depth[:-1]).abs()
    ix = (image[:, :, 1:] - image[:, :, :-1]).abs().mean(0)
    iy = (image[:, 1:] - image[:, :-1]).abs().mean(0)
    return (dx * torch.exp(-gamma * ix)).mean() + (dy * torch.exp(-gamma * iy)).mean()


def ray_entropy(weights: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    """Mean entropy of each ray's compositing weights (D, H, W) normalised by their sum ``opacity`` (H, W),
    divided by log D: 0 where one plane takes the whole ray, 1 where all planes share it evenly."""
    D = weights.shape[0]
    p = weights / opacity.clamp_min(1e-6)
    return -(p * torch.log(p.clamp_min(1e-8))).sum(0).mean() / math.log(max(D, 2))
