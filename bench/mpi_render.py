"""Render rate of a 32-plane 512x512 MPI: PyTorch reference vs the fused Triton kernel, fp32 and fp16.

    python -m bench.mpi_render [--size 512] [--planes 32] [--frames 64] [--batch 16]

Warps (homographies) for a 64-camera track are computed once; the timed loop renders frames from them, so
both paths are measured on the same work (warp + bilinear sampling + compositing). The fused kernel renders
``--batch`` cameras per launch. Prints one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from geoimplicit.mpi.composite import composite, sample_planes
from geoimplicit.mpi.demo import look_at_camera
from geoimplicit.mpi.fused import fused_available, pack_warps, render_fused_batch
from geoimplicit.mpi.planes import fronto_planes
from geoimplicit.geometry import camera_tensors
from geoimplicit.mpi.warp import plane_homographies

ORIGIN = np.array([770000.0, 6277000.0, 50.0])


def _time(fn, n_frames, sync, warmup=3, repeat=5):
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return n_frames / best


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--planes", type=int, default=32)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    S, D = args.size, args.planes
    ref = look_at_camera(ORIGIN + [0, 0, 300], ORIGIN, S * 1.2, S, S, (250.0, 350.0))
    planes = fronto_planes(ref.with_origin(ORIGIN), D)
    g = torch.Generator().manual_seed(0)
    mpi32 = torch.rand(D, 4, planes.height, planes.width, generator=g)
    mpi32[:, 3] *= 0.3 / planes.spacing
    mpi32 = mpi32.to(dev)
    cams = []
    for k in range(args.frames):
        a = 2 * np.pi * k / args.frames
        c = ORIGIN + [20 * np.cos(a), 20 * np.sin(a), 300]
        cams.append(camera_tensors(look_at_camera(c, ORIGIN, S * 1.2, S, S, (250.0, 350.0)), ORIGIN, device=dev))
    warps = [plane_homographies(planes.A, rc) for rc in cams]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "size": S, "planes": D,
            "frames": args.frames, "torch": torch.__version__}
    results = []
    for dtype in (torch.float32, torch.float16):
        mpi = mpi32.to(dtype)

        def torch_path():
            with torch.no_grad():
                for w in warps:
                    s, d, r = sample_planes(mpi, w)
                    composite(s[:, :3], s[:, 3], d, r)

        fps = _time(torch_path, len(warps), sync, warmup=1, repeat=3 if dev.type == "cuda" else 1)
        results.append({**info, "path": "pytorch", "dtype": str(dtype).split(".")[-1], "fps": round(fps, 1)})
        print(json.dumps(results[-1]), flush=True)
        if fused_available(dev):
            mpi_cl = mpi.permute(0, 2, 3, 1).contiguous()
            B = args.batch
            packs = [pack_warps(warps[i:i + B], dev) for i in range(0, len(warps), B)]

            def fused_path():
                for p in packs:
                    render_fused_batch(mpi_cl, p, S, S)

            fps = _time(fused_path, len(warps), sync)
            results.append({**info, "path": f"fused (batch {B})", "dtype": str(dtype).split(".")[-1],
                            "fps": round(fps, 1)})
            print(json.dumps(results[-1]), flush=True)
            packs1 = [pack_warps([w], dev) for w in warps]

            def fused_single():
                for p in packs1:
                    render_fused_batch(mpi_cl, p, S, S)

            fps = _time(fused_single, len(warps), sync)
            results.append({**info, "path": "fused (batch 1)", "dtype": str(dtype).split(".")[-1],
                            "fps": round(fps, 1)})
            print(json.dumps(results[-1]), flush=True)
            # agreement with the reference on one frame
            ref_out = None
            with torch.no_grad():
                s, d, r = sample_planes(mpi, warps[5])
                ref_out = composite(s[:, :3], s[:, 3], d, r)
            got = render_fused_batch(mpi_cl, pack_warps([warps[5]], dev), S, S)
            err = float((got["rgb"][0] - ref_out["rgb"]).abs().max())
            print(json.dumps({"check": "fused vs pytorch max |rgb diff|", "dtype": str(dtype), "value": err}))
    return results


if __name__ == "__main__":
    main()
