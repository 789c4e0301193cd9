"""The Triton kernel behind :mod:`geoimplicit.mpi.fused` (imported only when Triton is there)."""

import triton
import triton.language as tl


@triton.jit
def _bilinear_tap(p00, p01, p10, p11, m00, m01, m10, m11, w00, w01, w10, w11, c: tl.constexpr):
    """Channel ``c`` of a channels-last texture, bilinear from its four neighbours (masked ones count 0)."""
    return (tl.load(p00 + c, mask=m00, other=0.0).to(tl.float32) * w00
            + tl.load(p01 + c, mask=m01, other=0.0).to(tl.float32) * w01
            + tl.load(p10 + c, mask=m10, other=0.0).to(tl.float32) * w10
            + tl.load(p11 + c, mask=m11, other=0.0).to(tl.float32) * w11)


@triton.jit
def _over(tau, trans, acc_r, acc_g, acc_b, acc_z, acc_w, r, g, b, z):
    """One segment of optical thickness ``tau`` and colour (r, g, b) at depth z composited under what is in
    front (transmittance ``trans``): the new transmittance and accumulators."""
    wgt = trans * (1.0 - tl.exp(-tau))
    return (trans * tl.exp(-tau), acc_r + wgt * r, acc_g + wgt * g, acc_b + wgt * b, acc_z + wgt * z,
            acc_w + wgt)


@triton.jit
def mpi_render_kernel(
    mpi_ptr, hinv_ptr, rows_ptr, kinv_ptr, order_ptr, out_rgb_ptr, out_depth_ptr, out_opac_ptr,
    TH, TW, H, W, n_tiles_x,
    D: tl.constexpr, INVERSE: tl.constexpr, LAST: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
):
    pid = tl.program_id(0)
    cam = tl.program_id(1)
    ty = pid // n_tiles_x
    tx = pid % n_tiles_x
    idx = tl.arange(0, BH * BW)
    py = ty * BH + idx // BW
    px = tx * BW + idx % BW
    inside = (py < H) & (px < W)
    u = px.to(tl.float32)
    v = py.to(tl.float32)
    if INVERSE:
        kb = kinv_ptr + cam * 9
        r0 = tl.load(kb + 0) * u + tl.load(kb + 1) * v + tl.load(kb + 2)
        r1 = tl.load(kb + 3) * u + tl.load(kb + 4) * v + tl.load(kb + 5)
        r2 = tl.load(kb + 6) * u + tl.load(kb + 7) * v + tl.load(kb + 8)
        ray = tl.sqrt(r0 * r0 + r1 * r1 + r2 * r2)
    else:
        ray = tl.full((BH * BW,), 1.0, tl.float32)

    trans = tl.full((BH * BW,), 1.0, tl.float32)
    acc_r = tl.zeros((BH * BW,), tl.float32)
    acc_g = tl.zeros((BH * BW,), tl.float32)
    acc_b = tl.zeros((BH * BW,), tl.float32)
    acc_z = tl.zeros((BH * BW,), tl.float32)
    acc_w = tl.zeros((BH * BW,), tl.float32)
    prev_r = tl.zeros((BH * BW,), tl.float32)
    prev_g = tl.zeros((BH * BW,), tl.float32)
    prev_b = tl.zeros((BH * BW,), tl.float32)
    prev_s = tl.zeros((BH * BW,), tl.float32)
    prev_z = tl.zeros((BH * BW,), tl.float32)
    for d in range(0, D):
        hb = hinv_ptr + (cam * D + d) * 9
        q0 = tl.load(hb + 0) * u + tl.load(hb + 1) * v + tl.load(hb + 2)
        q1 = tl.load(hb + 3) * u + tl.load(hb + 4) * v + tl.load(hb + 5)
        q2 = tl.load(hb + 6) * u + tl.load(hb + 7) * v + tl.load(hb + 8)
        a = q0 / q2
        b = q1 / q2
        rb = rows_ptr + (cam * D + d) * 3
        zr = tl.load(rb + 0) * u + tl.load(rb + 1) * v + tl.load(rb + 2)
        if INVERSE:
            z = 1.0 / zr
        else:
            z = zr
        plane = tl.load(order_ptr + cam * D + d)
        x0f = tl.floor(a)
        y0f = tl.floor(b)
        fx = a - x0f
        fy = b - y0f
        x0 = x0f.to(tl.int32)
        y0 = y0f.to(tl.int32)
        x1 = x0 + 1
        y1 = y0 + 1
        vx0 = (x0 >= 0) & (x0 < TW)
        vx1 = (x1 >= 0) & (x1 < TW)
        vy0 = (y0 >= 0) & (y0 < TH)
        vy1 = (y1 >= 0) & (y1 < TH)
        base = plane.to(tl.int64) * TH * TW
        p00 = mpi_ptr + (base + y0 * TW + x0) * 4
        p01 = mpi_ptr + (base + y0 * TW + x1) * 4
        p10 = mpi_ptr + (base + y1 * TW + x0) * 4
        p11 = mpi_ptr + (base + y1 * TW + x1) * 4
        m00 = inside & vy0 & vx0
        m01 = inside & vy0 & vx1
        m10 = inside & vy1 & vx0
        m11 = inside & vy1 & vx1
        w00 = (1 - fx) * (1 - fy)
        w01 = fx * (1 - fy)
        w10 = (1 - fx) * fy
        w11 = fx * fy
        cr = _bilinear_tap(p00, p01, p10, p11, m00, m01, m10, m11, w00, w01, w10, w11, 0)
        cg = _bilinear_tap(p00, p01, p10, p11, m00, m01, m10, m11, w00, w01, w10, w11, 1)
        cb = _bilinear_tap(p00, p01, p10, p11, m00, m01, m10, m11, w00, w01, w10, w11, 2)
        cs = _bilinear_tap(p00, p01, p10, p11, m00, m01, m10, m11, w00, w01, w10, w11, 3)
        if d > 0:
            trans, acc_r, acc_g, acc_b, acc_z, acc_w = _over(prev_s * tl.abs(z - prev_z) * ray, trans, acc_r, acc_g,
                                                             acc_b, acc_z, acc_w, prev_r, prev_g, prev_b, prev_z)
        prev_r = cr
        prev_g = cg
        prev_b = cb
        prev_s = cs
        prev_z = z
    trans, acc_r, acc_g, acc_b, acc_z, acc_w = _over(prev_s * LAST, trans, acc_r, acc_g, acc_b, acc_z, acc_w,
                                                     prev_r, prev_g, prev_b, prev_z)
    pix = py * W + px
    ob = out_rgb_ptr + cam * 3 * H * W
    tl.store(ob + pix, acc_r, mask=inside)
    tl.store(ob + H * W + pix, acc_g, mask=inside)
    tl.store(ob + 2 * H * W + pix, acc_b, mask=inside)
    tl.store(out_depth_ptr + cam * H * W + pix, acc_z / tl.maximum(acc_w, 1e-6), mask=inside)
    tl.store(out_opac_ptr + cam * H * W + pix, acc_w, mask=inside)

