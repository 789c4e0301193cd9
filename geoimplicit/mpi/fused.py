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
from geoimplicit.geometry.tensors import CameraTensors
from geoimplicit.mpi.warp import PlaneWarp, plane_homographies

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
    from geoimplicit.mpi._fused_kernel import mpi_render_kernel

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


def render_fused(mpi: torch.Tensor, A, cam: CameraTensors) -> dict:
    """Drop-in for :func:`render_mpi` (forward only): MPI (D, 4, h, w) -> rgb (3, H, W), depth, opacity."""
    mpi_cl = mpi.permute(0, 2, 3, 1).contiguous()
    warp = plane_homographies(A, cam)
    packed = pack_warps([warp], mpi.device)
    out = render_fused_batch(mpi_cl, packed, cam.height, cam.width)
    return {k: v[0] for k, v in out.items()}
