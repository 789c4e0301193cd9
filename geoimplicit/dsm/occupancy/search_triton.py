"""The Triton kernel of :mod:`.search_kernel` (imported on first use: importing Triton takes a second, and
``TRITON_INTERPRET=1`` must be set before it to run the kernel in Triton's interpreter on the CPU)."""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, DOT_BF16: tl.constexpr):
    if DOT_BF16:
        return tl.dot(a, b)  # bfloat16 in, float32 accumulation
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _field(z, prior, ctx_ptr, cols, mask, M, wp_ptr, bp_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, wo_ptr, bo,
           NB: tl.constexpr, H: tl.constexpr, USE_PRIOR: tl.constexpr, DOT_BF16: tl.constexpr):
    """Logits (BLOCK,) of the decoder at normalised heights ``z`` (BLOCK,) of the block's columns."""
    hid = tl.arange(0, H)
    net = z[:, None] * tl.load(wp_ptr + hid * (1 + USE_PRIOR))[None, :] + tl.load(bp_ptr + hid)[None, :]
    if USE_PRIOR:
        net += (z - prior)[:, None] * tl.load(wp_ptr + hid * 2 + 1)[None, :]
    w_offs = hid[:, None] + hid[None, :] * H  # (in, out) of an nn.Linear weight stored (out, in)
    for i in tl.static_range(NB):
        ctx = tl.load(ctx_ptr + i * M * H + cols[:, None] * H + hid[None, :], mask=mask[:, None], other=0.0)
        x = net + ctx
        a = tl.maximum(x, 0.0)
        w0 = tl.load(w0_ptr + i * H * H + w_offs)
        w1 = tl.load(w1_ptr + i * H * H + w_offs)
        if DOT_BF16:
            a = a.to(tl.bfloat16)
            w0 = w0.to(tl.bfloat16)
            w1 = w1.to(tl.bfloat16)
        h = _dot(a, w0, DOT_BF16)
        h = tl.maximum(h + tl.load(b0_ptr + i * H + hid)[None, :], 0.0)
        if DOT_BF16:
            h = h.to(tl.bfloat16)
        h = _dot(h, w1, DOT_BF16)
        net = x + h + tl.load(b1_ptr + i * H + hid)[None, :]
    return tl.sum(tl.maximum(net, 0.0) * tl.load(wo_ptr + hid)[None, :], axis=1) + bo


@triton.jit
def search_kernel(ctx_ptr, prior_ptr, lo_ptr, hi_ptr, t_ptr, wp_ptr, bp_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr,
                  wo_ptr, bo, height_ptr, found_ptr, saturated_ptr, M,
                  COARSE: tl.constexpr, REFINE: tl.constexpr, NB: tl.constexpr, H: tl.constexpr,
                  BLOCK: tl.constexpr, USE_PRIOR: tl.constexpr, DOT_BF16: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < M
    z_lo = tl.load(lo_ptr + cols, mask=mask, other=0.0)
    z_hi = tl.load(hi_ptr + cols, mask=mask, other=1.0)
    prior = tl.load(prior_ptr + cols, mask=mask, other=0.0)
    best = tl.full((BLOCK,), -1, tl.int32)
    occ = tl.zeros((BLOCK,), tl.int1)
    for k in tl.range(0, COARSE):
        z = z_lo + (z_hi - z_lo) * tl.load(t_ptr + k)
        logit = _field(z, prior, ctx_ptr, cols, mask, M, wp_ptr, bp_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, wo_ptr,
                       bo, NB, H, USE_PRIOR, DOT_BF16)
        occ = logit > 0
        best = tl.where(occ, k, best)
    saturated = occ  # the last coarse height
    found = best >= 0
    k = tl.where(found, best, 0)
    k_up = tl.minimum(k + 1, COARSE - 1)
    lo = z_lo + (z_hi - z_lo) * tl.load(t_ptr + k, mask=mask, other=0.0)
    hi = z_lo + (z_hi - z_lo) * tl.load(t_ptr + k_up, mask=mask, other=0.0)
    for _ in tl.range(0, REFINE):
        mid = 0.5 * (lo + hi)
        o = _field(mid, prior, ctx_ptr, cols, mask, M, wp_ptr, bp_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, wo_ptr,
                   bo, NB, H, USE_PRIOR, DOT_BF16) > 0
        lo = tl.where(o, mid, lo)
        hi = tl.where(o, hi, mid)
    height = tl.where(saturated, z_hi, 0.5 * (lo + hi))
    tl.store(height_ptr + cols, height, mask=mask)
    tl.store(found_ptr + cols, found.to(tl.int8), mask=mask)
    tl.store(saturated_ptr + cols, saturated.to(tl.int8), mask=mask)
