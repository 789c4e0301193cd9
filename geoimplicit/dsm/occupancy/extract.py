"""Surface search: the highest occupied height of every output column of an occupancy field.

The field along a column of a 2.5D scene is occupied below the surface and free above it. The search
evaluates ``coarse_steps`` heights evenly spread over [z_lo, z_hi] for every column at once, takes the highest
occupied one (logit > 0), then bisects between it and the next height up for ``refine_steps`` steps: the
result is within ``(z_hi - z_lo) / (coarse_steps - 1) / 2**refine_steps`` of the 0.5 crossing (the highest one,
when the field has several). Columns with no occupied height are reported as not found (nodata or filled by
the caller, never invented here); a column occupied all the way up returns z_hi and is flagged.

``readout="expected"`` returns instead the expected surface height under the field's occupancy probability
p(z) = sigmoid(logit): the height found above plus the occupancy mass that disagrees with it farther than one
coarse step away, ``sum((p(z_k) - [z_k < h]) * dz)``. A confident column gives the same height; a column torn
between roof and ground (a wall cell) gives the mean of the two weighted by p, which is what minimises the
squared error when the field cannot tell (inverse-distance gridding wins its RMSE that way).
"""

from __future__ import annotations

from typing import Callable

import torch


READOUTS = ("surface", "expected")
REDUCES = ("mean", "max", "min")


def search_columns(field: Callable, z_lo: torch.Tensor, z_hi: torch.Tensor, *, coarse_steps: int = 16,
                   refine_steps: int = 10, readout: str = "surface") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Search M columns of ``field``.

    Args:
        field: ``field(z (M, K)) -> logits (M, K)`` for the M columns (any K).
        z_lo, z_hi: (M,) search range per column (same units as the field's heights).
        coarse_steps, refine_steps, readout: see the module docstring.

    Returns:
        height (M,), found (M,) bool (some height is occupied), saturated (M,) bool (z_hi is occupied).
    """
    M = z_lo.shape[0]
    t = torch.linspace(0.0, 1.0, coarse_steps, device=z_lo.device, dtype=torch.float32)
    zs = z_lo[:, None] + (z_hi - z_lo)[:, None] * t[None]
    logits = field(zs).float()
    occ = logits > 0
    k = coarse_steps - 1 - torch.flip(occ, [1]).float().argmax(1)  # highest occupied index
    found = occ.any(1)
    saturated = occ[:, -1]
    k = torch.where(found, k, torch.zeros_like(k))
    k_up = (k + 1).clamp(max=coarse_steps - 1)
    lo = zs.gather(1, k[:, None])[:, 0]
    hi = zs.gather(1, k_up[:, None])[:, 0]
    for _ in range(refine_steps):
        mid = 0.5 * (lo + hi)
        o = field(mid[:, None])[:, 0].float() > 0
        lo = torch.where(o, mid, lo)
        hi = torch.where(o, hi, mid)
    height = torch.where(saturated, z_hi, 0.5 * (lo + hi))
    if readout == "expected":
        height = height + _far_mass(logits, zs, height, (z_hi - z_lo) / max(coarse_steps - 1, 1))
    elif readout != "surface":
        raise ValueError(f"unknown readout {readout!r}; one of {READOUTS}")
    del M
    return height, found, saturated


def _far_mass(logits, zs, height, dz):
    """Occupancy mass (height units) off the step at ``height``, counted only farther than ``dz`` from it (the
    step itself is resolved by the bisection, finer than the coarse samples)."""
    below = (zs < height[:, None]).float()
    far = (zs - height[:, None]).abs() > dz[:, None]
    return ((torch.sigmoid(logits) - below) * far).sum(1) * dz


def subcell_offsets(n: int, cell: float):
    """(n*n, 2) offsets (x, y) of an n x n lattice of sample points inside a cell of side ``cell``, centred."""
    import numpy as np

    t = ((np.arange(n) + 0.5) / n - 0.5) * cell
    ox, oy = np.meshgrid(t, t)
    return np.stack([ox.ravel(), oy.ravel()], 1)


def reduce_subcells(height, found, n_sub: int, reduce: str = "mean"):
    """Per-cell height from (M * n_sub) sub-cell heights (cell-major): mean, max or min over the found ones."""
    h = height.reshape(-1, n_sub)
    f = found.reshape(-1, n_sub)
    if reduce == "mean":
        out = torch.where(f, h, torch.zeros_like(h)).sum(1) / f.sum(1).clamp_min(1)
    elif reduce == "max":
        out = torch.where(f, h, torch.full_like(h, -torch.inf)).max(1).values
    elif reduce == "min":
        out = torch.where(f, h, torch.full_like(h, torch.inf)).min(1).values
    else:
        raise ValueError(f"unknown readout_reduce {reduce!r}; one of {REDUCES}")
    any_f = f.any(1)
    return torch.where(any_f, out, torch.zeros_like(out)), any_f


def search_model(model, enc: dict, xy: torch.Tensor, z_lo: torch.Tensor, z_hi: torch.Tensor, *,
                 coarse_steps: int = 16, refine_steps: int = 10, batch_columns: int = 262144,
                 amp_dtype=None, progress=None, readout: str = "surface",
                 kernel: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Surface height of the columns at local metres ``xy`` (M, 2) of a patch encoded as ``enc`` (batch of 1).

    The per-column feature projections are computed once; each height then costs only the height part of
    the decoder. Columns go through in batches of ``batch_columns``; ``progress(done, M)`` after each.
    ``kernel="triton"``: the search fused into one kernel (:mod:`.search_kernel`; ``readout="surface"`` only,
    the rest falls back to torch). Returns normalised heights (M,) and found (M,).
    """
    heights, founds = [], []
    dev = xy.device
    fused = kernel == "triton" and readout == "surface"
    for s in range(0, xy.shape[0], batch_columns):
        sl = slice(s, s + batch_columns)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            c, prior = model.sample(enc, xy[None, sl])
            ctx = [t[0] for t in model.decoder.column_context(c)]
            pr = prior[0].float()
        if fused:
            from geoimplicit.dsm.occupancy.search_kernel import fused_search

            h, f, _ = fused_search(model.decoder, ctx, pr, z_lo[sl], z_hi[sl], coarse_steps=coarse_steps,
                                   refine_steps=refine_steps, dot_bf16=amp_dtype is not None)
        else:
            h, f = _search_torch(model.decoder, ctx, pr, z_lo[sl], z_hi[sl], coarse_steps, refine_steps, amp_dtype,
                                 readout)
        heights.append(h)
        founds.append(f)
        if progress is not None:
            progress(min(s + batch_columns, xy.shape[0]), xy.shape[0])
    return torch.cat(heights), torch.cat(founds)


def _search_torch(decoder, ctx: list, prior, z_lo, z_hi, coarse_steps: int, refine_steps: int, amp_dtype, readout):
    """:func:`search_columns` of the decoder's field over columns with context ``ctx`` (list of (M, hidden))."""
    ctx = [t[:, None, :] for t in ctx]
    pr = prior[:, None]

    def field(z):
        return decoder.decode(ctx, z, pr)

    with torch.autocast(z_lo.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        h, f, _ = search_columns(field, z_lo, z_hi, coarse_steps=coarse_steps, refine_steps=refine_steps,
                                 readout=readout)
    return h, f
