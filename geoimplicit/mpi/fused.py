"""Fused MPI renderer: one Triton kernel warps, samples and composites every plane per pixel in one pass.

The reference is :func:`geoimplicit.mpi.composite.render_mpi` (plain PyTorch); ``tests/test_mpi_fused.py``
compares the two on a GPU. Triton is imported lazily (it is absent on CPU-only installs); callers check
:func:`fused_available` and fall back to the PyTorch path. Forward only (rendering, not fitting).

Per pixel and plane (front to back): the target pixel goes through the plane's homography onto the texture
(channels-last fp16/fp32 MPI, bilinear, zero outside), the plane's depth comes from the same homography, and
the previous plane is composited with ``alpha = 1 - exp(-density * |z_d - z_{d-1}| * ray)``; the last plane gets
``LAST_SPACING``. A batch of cameras renders in one launch.
"""

from __future__ import annotations

import functools

import torch

from geoimplicit.mpi.composite import LAST_SPACING
from geoimplicit.mpi.warp import PlaneWarp, RenderCamera, plane_homographies

__all__ = ["fused_available", "render_fused", "render_fused_batch", "pack_warps"]


@functools.lru_cache(maxsize=1)
def _triton():
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - ImportError, or a broken install
        return None
    return triton, tl


def fused_available(device=None) -> bool:
    """True when Triton imports and ``device`` is a CUDA device (or TRITON_INTERPRET=1 for CPU testing)."""
    import os

    if _triton() is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    dev = torch.device(device) if device is not None else None
    return torch.cuda.is_available() and (dev is None or dev.type == "cuda")


@functools.lru_cache(maxsize=1)
def _kernel():
    triton, tl = _triton()

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
            cr = (tl.load(p00 + 0, mask=m00, other=0.0).to(tl.float32) * w00
                  + tl.load(p01 + 0, mask=m01, other=0.0).to(tl.float32) * w01
                  + tl.load(p10 + 0, mask=m10, other=0.0).to(tl.float32) * w10
                  + tl.load(p11 + 0, mask=m11, other=0.0).to(tl.float32) * w11)
            cg = (tl.load(p00 + 1, mask=m00, other=0.0).to(tl.float32) * w00
                  + tl.load(p01 + 1, mask=m01, other=0.0).to(tl.float32) * w01
                  + tl.load(p10 + 1, mask=m10, other=0.0).to(tl.float32) * w10
                  + tl.load(p11 + 1, mask=m11, other=0.0).to(tl.float32) * w11)
            cb = (tl.load(p00 + 2, mask=m00, other=0.0).to(tl.float32) * w00
                  + tl.load(p01 + 2, mask=m01, other=0.0).to(tl.float32) * w01
                  + tl.load(p10 + 2, mask=m10, other=0.0).to(tl.float32) * w10
                  + tl.load(p11 + 2, mask=m11, other=0.0).to(tl.float32) * w11)
            cs = (tl.load(p00 + 3, mask=m00, other=0.0).to(tl.float32) * w00
                  + tl.load(p01 + 3, mask=m01, other=0.0).to(tl.float32) * w01
                  + tl.load(p10 + 3, mask=m10, other=0.0).to(tl.float32) * w10
                  + tl.load(p11 + 3, mask=m11, other=0.0).to(tl.float32) * w11)
            if d > 0:
                tau = prev_s * tl.abs(z - prev_z) * ray
                alpha = 1.0 - tl.exp(-tau)
                wgt = trans * alpha
                acc_r += wgt * prev_r
                acc_g += wgt * prev_g
                acc_b += wgt * prev_b
                acc_z += wgt * prev_z
                acc_w += wgt
                trans = trans * tl.exp(-tau)
            prev_r = cr
            prev_g = cg
            prev_b = cb
            prev_s = cs
            prev_z = z
        tau = prev_s * LAST
        alpha = 1.0 - tl.exp(-tau)
        wgt = trans * alpha
        acc_r += wgt * prev_r
        acc_g += wgt * prev_g
        acc_b += wgt * prev_b
        acc_z += wgt * prev_z
        acc_w += wgt
        pix = py * W + px
        ob = out_rgb_ptr + cam * 3 * H * W
        tl.store(ob + pix, acc_r, mask=inside)
        tl.store(ob + H * W + pix, acc_g, mask=inside)
        tl.store(ob + 2 * H * W + pix, acc_b, mask=inside)
        tl.store(out_depth_ptr + cam * H * W + pix, acc_z / tl.maximum(acc_w, 1e-6), mask=inside)
        tl.store(out_opac_ptr + cam * H * W + pix, acc_w, mask=inside)

    return mpi_render_kernel


def pack_warps(warps: list[PlaneWarp], device) -> dict[str, torch.Tensor]:
    """Per-camera homographies in front-to-back order, normalised and cast to float32, for the kernel."""
    hinv, rows, kinv, order = [], [], [], []
    inverse = warps[0].inverse_depth
    for w in warps:
        if w.inverse_depth != inverse:
            raise ValueError("render_fused_batch: mix of pinhole and affine cameras in one batch")
        o = w.order.cpu()
        Hs = w.Hinv.detach().cpu()[o]
        scale = Hs.abs().amax(dim=(1, 2), keepdim=True)
        Hs = Hs / scale
        hinv.append(Hs.reshape(-1, 9))
        rows.append(w.depth_rows.detach().cpu()[o])  # z = 1 / (rows . p) (pinhole) or rows . p (affine)
        kinv.append(torch.zeros(9, dtype=torch.float64) if w.Kinv is None else w.Kinv.detach().cpu().reshape(9))
        order.append(o.to(torch.int32))
    return {
        "hinv": torch.stack(hinv).to(device=device, dtype=torch.float32).contiguous(),
        "rows": torch.stack(rows).to(device=device, dtype=torch.float32).contiguous(),
        "kinv": torch.stack(kinv).to(device=device, dtype=torch.float32).contiguous(),
        "order": torch.stack(order).to(device=device).contiguous(),
        "inverse": inverse,
    }


def render_fused_batch(mpi_cl: torch.Tensor, packed: dict, height: int, width: int, block=(16, 16)) -> dict:
    """Render a batch with the kernel. ``mpi_cl``: (D, h, w, 4) channels-last fp16/fp32 MPI (contiguous)."""
    triton, _ = _triton()
    D, th, tw, C = mpi_cl.shape
    assert C == 4 and mpi_cl.is_contiguous()
    B = packed["hinv"].shape[0]
    dev = mpi_cl.device
    rgb = torch.empty(B, 3, height, width, device=dev, dtype=torch.float32)
    depth = torch.empty(B, height, width, device=dev, dtype=torch.float32)
    opac = torch.empty(B, height, width, device=dev, dtype=torch.float32)
    bh, bw = block
    ntx = triton.cdiv(width, bw)
    nty = triton.cdiv(height, bh)
    _kernel()[(ntx * nty, B)](
        mpi_cl, packed["hinv"], packed["rows"], packed["kinv"], packed["order"], rgb, depth, opac,
        th, tw, height, width, ntx,
        D=D, INVERSE=bool(packed["inverse"]), LAST=float(LAST_SPACING), BH=bh, BW=bw,
    )
    return {"rgb": rgb, "depth": depth, "opacity": opac}


def render_fused(mpi: torch.Tensor, A, cam: RenderCamera) -> dict:
    """Drop-in for :func:`render_mpi` (forward only): MPI (D, 4, h, w) -> rgb (3, H, W), depth, opacity."""
    mpi_cl = mpi.permute(0, 2, 3, 1).contiguous()
    warp = plane_homographies(A, cam)
    packed = pack_warps([warp], mpi.device)
    out = render_fused_batch(mpi_cl, packed, cam.height, cam.width)
    return {k: v[0] for k, v in out.items()}
