"""Speed of the SDF's grid encoding: forward + the eikonal loss's double backward, against the former
per-level implementation (one fancy-index gather per level) in the same run; then one real train step of
``bench/surface.py``'s full preset with each (issue 19).

    python bench/grid_encoding.py --device cuda [--out OUT/grid_encoding.json] [--no-train-step]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoimplicit.surface import networks  # noqa: E402


class PerLevelGridEncoding(networks.GridEncoding):
    """The former lookup (before b35b2bc): a gather per level by fancy indexing, whose backward on CUDA is a
    sorting ``index_put``. Same parameters and values as the shipped encoding."""

    def lookup(self, u: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        u = u.clamp(0.0, 1.0)
        out = []
        for lvl in range(self.levels):
            res = self.res[lvl]
            pos = u * (res - 1).to(u.dtype)
            base = torch.minimum(pos.detach().floor().long(), res - 2).clamp_min(0)
            w = pos - base.to(u.dtype)
            ijk = base[:, None, :] + self.corners[None]  # (N, 8, 3)
            if self.hashed[lvl]:
                h = (ijk[..., 0] * networks._PRIMES[0]) ^ (ijk[..., 1] * networks._PRIMES[1])
                rows = torch.remainder(h ^ (ijk[..., 2] * networks._PRIMES[2]), self.sizes[lvl])
            else:
                rows = (ijk[..., 0] * res[1] + ijk[..., 1]) * res[2] + ijk[..., 2]
            feats = table[rows + self.offsets[lvl]]
            cw = torch.where(self.corners[None].bool(), w[:, None, :], 1 - w[:, None, :]).prod(-1)
            out.append((feats * cw[..., None]).sum(1))
        return torch.cat(out, -1)


def eikonal_pass(enc, u):
    x = u.clone().requires_grad_(True)
    f = (enc(x) ** 2).sum(1)
    (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    loss = ((g.norm(dim=1) - 1) ** 2).mean() + f.mean()
    return torch.autograd.grad(loss, [enc.table])


def timed(fn, device, repeats: int) -> float:
    for _ in range(2):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def micro(device, sizes, levels_list, repeats) -> list[dict]:
    rows = []
    for levels in levels_list:
        for n in sizes:
            u = torch.rand(n, 3, device=device)
            row = {"levels": levels, "points": n}
            for name, cls in (("per_level", PerLevelGridEncoding), ("one_table", networks.GridEncoding)):
                enc = cls([128.0, 128.0, 40.0], levels, 2, 16.0, 0.5, 2**19).to(device)
                row[name + "_ms"] = round(1000 * timed(lambda: eikonal_pass(enc, u), device, repeats), 2)
            rows.append(row)
            print(row, flush=True)
    return rows


def train_steps(device, work: Path) -> dict:
    from bench.surface import FULL, make_scene
    from geoimplicit.surface.config import SurfaceConfig
    from geoimplicit.surface.data import prepare_inputs
    from geoimplicit.surface.fit import Trainer

    scene = make_scene(7101, work, FULL["size_m"], FULL["view_size"], FULL["n_views"], 8)
    out = {}
    shipped = networks.GridEncoding
    try:
        for name, cls in (("per_level", PerLevelGridEncoding), ("one_table", shipped)):
            networks.GridEncoding = cls  # SDFNetwork looks the class up when it is built
            cfg = SurfaceConfig.from_dict({**FULL["fit"], "device": str(device), "seed": 0})
            trainer = Trainer(prepare_inputs(scene / "views", cfg), cfg, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            out[name] = {"s_per_step": timed(trainer.train_step, device, 10)}
            if device.type == "cuda":
                out[name]["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
            print(name, out[name], flush=True)
    finally:
        networks.GridEncoding = shipped
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("grid_encoding.json"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/grid_encoding"))
    ap.add_argument("--no-train-step", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    big = device.type == "cuda"
    result = {"device": torch.cuda.get_device_name(0) if big else "cpu", "torch": torch.__version__,
              "micro": micro(device, (131072, 524288) if big else (32768,), (8, 16) if big else (8,), 10 if big else 3)}
    if not args.no_train_step:
        result["train_step"] = train_steps(device, args.work)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
