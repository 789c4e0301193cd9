"""Training scenes of the MPI prior: generated cities rendered as view sets, from seeds, cached in the run folder.

Every scene is drawn from its seed (:func:`scene_spec`): city (roofs, trees, sun, terrain: the generator's own
draws), size, CRS, number of views, image size, field of view and off-nadir spread (so ground sample distance and
baselines vary). :func:`render_scene` writes ``RUN/scenes/NNNNN/`` atomically: ``views/`` (LEVIR-NVS layout, as
``nvs fit`` reads it) and ``truth.npz`` (the DSM and its grid). Rendering is CPU work, so scenes are rendered in
worker processes while the network trains (:class:`ScenePool`).
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["scene_spec", "render_scene", "ScenePool", "TrainScene", "load_scene"]

TRAIN_CRS = ("EPSG:2154", "EPSG:32631", "EPSG:25832", "EPSG:3035")
"""CRSs of the training scenes (the held-out bench scenes use others)."""


def scene_spec(seed: int, ranges: dict) -> dict:
    """The scene of ``seed``: every setting drawn from ``ranges`` (``PriorTrainConfig.scene``)."""
    rng = np.random.default_rng([int(seed), 7])
    lo, hi = ranges["size_m"]
    return {
        "seed": int(seed),
        "size_m": float(rng.uniform(lo, hi)),
        "crs": str(rng.choice(ranges.get("crs") or TRAIN_CRS)),
        "n_views": int(rng.integers(ranges["views"][0], ranges["views"][1] + 1)),
        "image_px": int(rng.choice(ranges["image_px"])),
        "fov_deg": float(rng.uniform(*ranges["fov_deg"])),
        "max_off_nadir_deg": float(rng.uniform(*ranges["max_off_nadir_deg"])),
        "supersample": int(ranges.get("supersample", 3)),
    }


def render_scene(spec: dict, out_dir: str) -> str:
    """Render the scene of ``spec`` into ``out_dir`` (atomic: a partial folder is renamed when complete)."""
    from geoimplicit.synthetic import generate_city, scene_bounds
    from geoimplicit.synthetic.views import render_view_set

    out = Path(out_dir)
    if (out / "truth.npz").exists():
        return str(out)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    city = generate_city(spec["seed"], bounds=scene_bounds(spec["size_m"], crs=spec["crs"], resolution=0.5),
                         resolution=0.5, crs=spec["crs"])
    render_view_set(city, tmp / "views", seed=spec["seed"], n_views=spec["n_views"], size=spec["image_px"],
                    n_track=1, fov_deg=spec["fov_deg"], max_off_nadir_deg=spec["max_off_nadir_deg"],
                    supersample=spec["supersample"])
    left, _, _, top = city.bounds
    np.savez(tmp / "truth.npz", dsm=city.dsm.astype(np.float32), left=left, top=top, resolution=city.resolution)
    (tmp / "spec.json").write_text(json.dumps(spec))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return str(out)


@dataclass
class TrainScene:
    """A rendered scene in memory: its view set, images (3, H, W) on the device, the DSM and its grid."""

    views: object
    images: dict
    dsm: torch.Tensor
    left: float
    top: float
    resolution: float

    def true_height(self, planes) -> torch.Tensor:
        """The DSM (local heights) at ``planes``' texel centres (h, w); mirrored beyond the scene's borders like
        the views' ray caster (``geoimplicit.synthetic.views``)."""
        dev = self.dsm.device
        cols = torch.arange(planes.width, dtype=torch.float64, device=dev)
        rows = torch.arange(planes.height, dtype=torch.float64, device=dev)
        x = planes.origin[0] + planes.left + (cols + 0.5) * planes.resolution
        y = planes.origin[1] + planes.top - (rows + 0.5) * planes.resolution
        R, C = self.dsm.shape
        fc = (x - self.left) / self.resolution - 0.5
        fr = (self.top - y) / self.resolution - 0.5
        gx = (2 * fc / max(C - 1, 1) - 1)[None, :].expand(planes.height, -1)
        gy = (2 * fr / max(R - 1, 1) - 1)[:, None].expand(-1, planes.width)
        grid = torch.stack([gx, gy], -1).float()[None]
        z = F.grid_sample(self.dsm[None, None], grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        return z[0, 0].double() - float(planes.origin[2])


def load_scene(folder, device) -> TrainScene:
    from geoimplicit.io.cameras import ViewSet

    folder = Path(folder)
    views = ViewSet.load(folder / "views")
    images = {v: torch.from_numpy(views.read_image(v)).permute(2, 0, 1).contiguous().to(device) for v in views.ids}
    t = np.load(folder / "truth.npz")
    return TrainScene(views, images, torch.from_numpy(t["dsm"]).to(device), float(t["left"]), float(t["top"]),
                      float(t["resolution"]))


class ScenePool:
    """The scenes of ``seeds`` rendered by ``workers`` processes into ``root`` (``SSSSSS/``, by seed), ``ahead``
    per worker in flight, in the order given; scenes already there (a resumed run) are reused without rendering."""

    def __init__(self, root, ranges: dict, seeds: list[int], workers: int, ahead: int = 2):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ranges, self.seeds = ranges, [int(s) for s in seeds]
        self.workers = max(0, int(workers))
        self.ahead = max(1, int(ahead)) * max(1, self.workers)
        self.next_index = 0
        self.pending = []
        self.pool = None
        if self.workers:
            import multiprocessing as mp

            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))

    def folder(self, seed: int) -> Path:
        return self.root / f"{seed:06d}"

    def ready_now(self) -> list[tuple[int, Path]]:
        """(seed, folder) of the scenes finished since the last call; keeps the renderings in flight."""
        done = []
        still = []
        for seed, fut in self.pending:
            if fut.done():
                done.append((seed, Path(fut.result())))
            else:
                still.append((seed, fut))
        self.pending = still
        while self.next_index < len(self.seeds) and len(self.pending) < self.ahead:
            seed = self.seeds[self.next_index]
            self.next_index += 1
            if (self.folder(seed) / "truth.npz").exists():  # rendered by an earlier run
                done.append((seed, self.folder(seed)))
                continue
            spec = scene_spec(seed, self.ranges)
            if self.pool is None:  # no workers: render here, one a call
                done.append((seed, Path(render_scene(spec, str(self.folder(seed))))))
                break
            self.pending.append((seed, self.pool.submit(render_scene, spec, str(self.folder(seed)))))
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
