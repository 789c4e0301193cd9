"""The surface search of :func:`.extract.search_columns` fused into one Triton kernel (CUDA).

The torch search runs the decoder as a chain of small kernels over (columns x heights x hidden) tensors that
go through GPU memory between every layer, then ten bisection steps that are each a dozen launches over a
few thousand columns: memory and launch bound, at a few percent of what the GPU computes. Here one program
holds a block of columns and runs the whole search in registers: the coarse heights, the highest occupied
one, then the bisection, with the decoder's 32-wide layers as tensor-core dots. Only the per-column context
(the feature projections, computed once by torch) is read from memory.

The same algorithm and the same coarse heights as the torch search; the arithmetic differs only in rounding
(the height inputs here in float32, where torch's bfloat16 autocast rounds them to 8 bits), so heights agree
to float noise. ``readout="surface"`` only; the caller falls back to torch for the rest.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def available(device) -> bool:
    """Whether the fused search can run on ``device``: CUDA with Triton, or Triton's interpreter
    (``TRITON_INTERPRET=1``, numpy on the CPU: slow, for tests)."""
    if not triton_installed():
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def supports(decoder) -> bool:
    """The decoder shapes the kernel is written for: hidden width a power of two from 16 to 128."""
    h = decoder.fc_p.out_features
    return 16 <= h <= 128 and h & (h - 1) == 0


def _decoder_weights(decoder, device) -> dict:
    """The decoder's parameters as contiguous float32 tensors on ``device`` (read at every call: a model still
    in training, validated through the predictor, changes them between calls)."""
    f = dict(dtype=torch.float32, device=device)
    return {
        "wp": decoder.fc_p.weight.detach().to(**f).contiguous(),
        "bp": decoder.fc_p.bias.detach().to(**f).contiguous(),
        "w0": torch.stack([b.fc0.weight.detach() for b in decoder.blocks]).to(**f).contiguous(),
        "b0": torch.stack([b.fc0.bias.detach() for b in decoder.blocks]).to(**f).contiguous(),
        "w1": torch.stack([b.fc1.weight.detach() for b in decoder.blocks]).to(**f).contiguous(),
        "b1": torch.stack([b.fc1.bias.detach() for b in decoder.blocks]).to(**f).contiguous(),
        "wo": decoder.fc_out.weight.detach()[0].to(**f).contiguous(),
        "bo": float(decoder.fc_out.bias.detach()[0]),
    }


def fused_search(decoder, ctx: list, prior: torch.Tensor, z_lo: torch.Tensor, z_hi: torch.Tensor, *,
                 coarse_steps: int = 16, refine_steps: int = 10, dot_bf16: bool = True, block: int = 64,
                 num_warps: int = 4):
    """:func:`.extract.search_columns` with ``readout="surface"`` for ``decoder`` (an :class:`.OccupancyDecoder`).

    Args:
        ctx: the decoder's per-column context, one (M, hidden) tensor per block (``decoder.column_context``).
        prior: (M,) the prior height the decoder takes (ignored by decoders without one).
        z_lo, z_hi: (M,) search range per column.
        dot_bf16: the 32-wide layers in bfloat16 with float32 accumulation (as autocast does); False: float32.
        block, num_warps: columns per program and its warps (launch shape; the results do not depend on them).

    Returns:
        height (M,) float32, found (M,) bool, saturated (M,) bool.
    """
    dev = z_lo.device
    M = z_lo.shape[0]
    H = decoder.fc_p.out_features
    w = _decoder_weights(decoder, dev)
    ctx_all = torch.stack([c.reshape(M, H) for c in ctx]).float().contiguous()
    t = torch.linspace(0.0, 1.0, coarse_steps, device=dev, dtype=torch.float32)
    height = torch.empty(M, dtype=torch.float32, device=dev)
    found = torch.empty(M, dtype=torch.int8, device=dev)
    saturated = torch.empty(M, dtype=torch.int8, device=dev)
    if M == 0:
        return height, found.bool(), saturated.bool()
    grid = (-(-M // block),)
    from geoimplicit.dsm.occupancy.search_triton import search_kernel

    search_kernel[grid](ctx_all, prior.reshape(M).float().contiguous(), z_lo.float().contiguous(),
                         z_hi.float().contiguous(), t, w["wp"], w["bp"], w["w0"], w["b0"], w["w1"], w["b1"], w["wo"],
                         w["bo"], height, found, saturated, M, COARSE=coarse_steps, REFINE=refine_steps,
                         NB=len(ctx), H=H, BLOCK=block, USE_PRIOR=int(decoder.use_prior), DOT_BF16=dot_bf16,
                         num_warps=num_warps)
    return height, found.bool(), saturated.bool()
