"""The surface search, torch against the fused Triton kernel, on real tiles of a generated city (issue 21).

    python -m bench.search_kernel --device cuda --out OUT [--side-m 384] [--repeat 5]

Shipped weights (refiner on), 128 m tiles with 16 m of context at 0.5 m, framed once. Per kernel and precision
(torch bf16 autocast = the default, triton bf16 = the fused kernel as it would run by default, and both in
float32): the search
alone (``search_model``: column context and search) in ms per tile, the whole device half of a tile
(``search_tile``: encoding, search, refiner) in ms per tile, and the DSM heights against torch float32's
(max, 99th percentile and mean absolute difference in metres, cells off by more than 1 cm, valid mismatches).
Writes OUT/search_kernel.json and OUT/search_kernel.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = (("torch", True), ("triton", True), ("torch", False), ("triton", False))  # (kernel, bf16)


def framed_tiles(predictor, side_m: float, seed: int, tile_m: float = 128.0, context_m: float = 16.0):
    """The tiles of a generated city of ``side_m`` metres, framed for ``predictor`` (CPU work, done once)."""
    from geoimplicit.synthetic.city import generate_city, scene_bounds
    from geoimplicit.synthetic.points import iter_point_chunks

    bounds = scene_bounds(side_m, crs="EPSG:2154")
    city = generate_city(seed, bounds=bounds, resolution=0.5, crs="EPSG:2154")
    pts = {k: [] for k in "xyz"}
    for c in iter_point_chunks(city, 1, density=10.0):
        for k in "xyz":
            pts[k].append(np.asarray(c[k], np.float64))
    x, y, z = (np.concatenate(pts[k]) for k in "xyz")
    tiles = []
    left, bottom = bounds[0], bounds[1]
    n = int(round(side_m / tile_m))
    for i in range(n):
        for j in range(n):
            core = (left + i * tile_m, bottom + j * tile_m, left + (i + 1) * tile_m, bottom + (j + 1) * tile_m)
            ctx = (core[0] - context_m, core[1] - context_m, core[2] + context_m, core[3] + context_m)
            m = (x >= ctx[0]) & (x < ctx[2]) & (y >= ctx[1]) & (y < ctx[3])
            tiles.append(predictor.frame_tile(x[m], y[m], z[m], core_bounds=core, context_bounds=ctx,
                                              resolution=0.5))
    return tiles


def time_variant(predictor, tiles, kernel: str, bf16: bool, repeat: int) -> dict:
    import torch

    from geoimplicit.dsm.occupancy.extract import search_model

    predictor.search_kernel = kernel
    predictor.amp_dtype = torch.bfloat16 if bf16 else None
    ec = predictor.cfg.extract
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
    outs = [predictor.search_tile(t) for t in tiles]  # warm-up (compiles the kernel) and the heights
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        for t in tiles:
            predictor.search_tile(t)
    sync()
    tile_ms = (time.perf_counter() - t0) / (repeat * len(tiles)) * 1e3
    # the search alone, on the first tile's encoding
    t = tiles[0]
    with torch.inference_mode():
        enc = predictor.encode_local(t.pts, t.frame)
        q = torch.from_numpy(t.xy).to(predictor.device)
        lo = torch.full((len(q),), t.zlo, device=q.device)
        hi = torch.full((len(q),), t.zhi, device=q.device)

        def search():
            return search_model(predictor.model, enc, q, lo, hi, coarse_steps=ec.coarse_steps,
                                refine_steps=ec.refine_steps, batch_columns=ec.batch_columns,
                                amp_dtype=predictor.amp_dtype, readout=ec.readout, kernel=kernel)

        search()
        sync()
        t0 = time.perf_counter()
        for _ in range(repeat * 4):
            search()
        sync()
    search_ms = (time.perf_counter() - t0) / (repeat * 4) * 1e3
    queries = len(q) * (ec.coarse_steps + ec.refine_steps)
    return {"tile_ms": tile_ms, "search_ms": search_ms, "queries_per_s": queries / search_ms * 1e3,
            "columns": len(q), "outs": outs}


def encode_times(predictor, tiles, repeat: int = 3) -> dict:
    """ms per tile of the encoding alone (bf16 autocast), with cuDNN's algorithm search off and on."""
    import torch

    out = {}
    predictor.amp_dtype = torch.bfloat16
    for bench_mode in (False, True):
        torch.backends.cudnn.benchmark = bench_mode
        with torch.inference_mode():
            for t in tiles:
                predictor.encode_local(t.pts, t.frame)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeat):
                for t in tiles:
                    predictor.encode_local(t.pts, t.frame)
            torch.cuda.synchronize()
        out[f"cudnn.benchmark={bench_mode}"] = (time.perf_counter() - t0) / (repeat * len(tiles)) * 1e3
    torch.backends.cudnn.benchmark = False
    return out


def launch_sweep(predictor, t, repeat: int = 20) -> dict:
    """ms of the fused bf16 search alone on tile ``t`` for a few launch shapes."""
    import torch

    from geoimplicit.dsm.occupancy.search_kernel import fused_search

    ec = predictor.cfg.extract
    model = predictor.model
    out = {}
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        enc = predictor.encode_local(t.pts, t.frame)
        q = torch.from_numpy(t.xy).to(predictor.device)
        c, prior = model.sample(enc, q[None])
        ctx = [x[0] for x in model.decoder.column_context(c)]
    lo = torch.full((len(q),), t.zlo, device=q.device)
    hi = torch.full((len(q),), t.zhi, device=q.device)
    for block, warps in ((32, 2), (64, 4), (128, 4), (128, 8)):
        def run():
            return fused_search(model.decoder, ctx, prior[0].float(), lo, hi, coarse_steps=ec.coarse_steps,
                                refine_steps=ec.refine_steps, block=block, num_warps=warps)
        run()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeat):
            run()
        torch.cuda.synchronize()
        out[f"{block}x{warps}"] = (time.perf_counter() - t0) / repeat * 1e3
    return out


def compare(outs, ref) -> dict:
    d, mism = [], 0
    for (h, v), (h0, v0) in zip(outs, ref):
        both = v & v0
        d.append(np.abs(h[both].astype(np.float64) - h0[both]))
        mism += int((v != v0).sum())
    d = np.concatenate(d)
    if d.size == 0:
        return {"max_m": np.nan, "p99_m": np.nan, "mean_m": np.nan, "over_1cm": np.nan,
                "valid_mismatch_cells": mism, "cells": 0}
    return {"max_m": float(d.max()), "p99_m": float(np.percentile(d, 99)), "mean_m": float(d.mean()),
            "over_1cm": float((d > 0.01).mean()), "valid_mismatch_cells": mism, "cells": int(d.size)}


def main(argv=None):
    import torch

    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="bench/out/search_kernel")
    ap.add_argument("--side-m", type=float, default=384.0)
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tile-m", type=float, default=128.0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = OccupancyPredictor(None, args.device)
    tiles = framed_tiles(predictor, args.side_m, args.seed, args.tile_m)
    res = {"device": torch.cuda.get_device_name(0) if predictor.device.type == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d %H:%M"), "tiles": len(tiles), "args": vars(args), "variants": {}}
    runs = {}
    for kernel, bf16 in VARIANTS:
        runs[(kernel, bf16)] = time_variant(predictor, tiles, kernel, bf16, args.repeat)
    ref = runs[("torch", False)]["outs"]
    lines = [f"device: {res['device']}, {res['date']}, {len(tiles)} tiles of 128 m (+16 m context) at 0.5 m, "
             f"{runs[('torch', False)]['columns']:,} columns a tile", "",
             "| kernel | precision | search ms/tile | M queries/s | device half ms/tile | vs torch fp32: max / p99 / "
             "mean m | cells > 1 cm | valid mismatches |", "|---|---|---|---|---|---|---|---|"]
    for (kernel, bf16), r in runs.items():
        c = compare(r.pop("outs"), ref)
        r["vs_torch_fp32"] = c
        res["variants"][f"{kernel} {'bf16' if bf16 else 'fp32'}"] = r
        lines.append(f"| {kernel} | {'bf16' if bf16 else 'fp32'} | {r['search_ms']:.2f} | {r['queries_per_s'] / 1e6:.0f} | "
                     f"{r['tile_ms']:.2f} | {c['max_m']:.4f} / {c['p99_m']:.4f} / {c['mean_m']:.5f} | "
                     f"{c['over_1cm'] * 100:.3f} % | {c['valid_mismatch_cells']} |")
    res["encode_ms"] = encode_times(predictor, tiles)
    lines += ["", "Encoding alone, ms per tile: " + ", ".join(f"{k} {v:.2f}" for k, v in res["encode_ms"].items())]
    res["launch_shapes"] = launch_sweep(predictor, tiles[0])
    lines += ["", "Fused bf16 search alone on the first tile, by launch shape (columns per program, warps): " +
              ", ".join(f"{k} {v:.2f} ms" for k, v in res["launch_shapes"].items())]
    (out / "search_kernel.json").write_text(json.dumps(res, indent=1))
    (out / "search_kernel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
