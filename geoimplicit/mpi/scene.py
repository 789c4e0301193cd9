"""A fitted MPI: generator + plane geometry + local origin, saved as ``MODEL_DIR/model.pt`` and loaded back."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from geoimplicit.errors import InputFileNotFoundError, WeightsError
from geoimplicit.geometry.cameras import AffineCamera, PinholeCamera
from geoimplicit.geometry.tensors import camera_tensors
from geoimplicit.mpi.composite import render_mpi
from geoimplicit.mpi.model import MPIGenerator, build_model
from geoimplicit.mpi.planes import PlaneSet

__all__ = ["MPIScene", "MODEL_FORMAT"]

MODEL_FORMAT = "geoimplicit-mpi/1"


@dataclass
class MPIScene:
    """Everything needed to render: ``model`` (generator), ``planes`` (geometry, local), ``image_size`` (w, h)."""

    model: MPIGenerator
    planes: PlaneSet
    image_size: tuple[int, int]
    config: dict = field(default_factory=dict)
    _cache: torch.Tensor | None = None

    @property
    def origin(self) -> np.ndarray:
        return self.planes.origin

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.buffers())).device

    def to(self, device) -> "MPIScene":
        self.model.to(device)
        self._cache = None
        return self

    @torch.no_grad()
    def mpi(self, dtype=torch.float32) -> torch.Tensor:
        """The evaluated MPI (D, 4, h, w) (cached)."""
        if self._cache is None or self._cache.dtype != dtype:
            self.model.eval()
            self._cache = self.model().to(dtype).contiguous()
        return self._cache

    @torch.no_grad()
    def render(self, camera: PinholeCamera | AffineCamera, *, width=None, height=None, fused: bool = False) -> dict:
        """Render a WORLD-coordinate camera; returns numpy ``rgb`` (H, W, 3), ``depth`` (H, W), ``opacity``."""
        w = width or camera.width or self.image_size[0]
        h = height or camera.height or self.image_size[1]
        rc = camera_tensors(camera, self.origin, device=self.device, width=w, height=h)
        mpi = self.mpi()
        out = None
        if fused:
            from geoimplicit.mpi.fused import fused_available, render_fused

            if fused_available(mpi.device):
                out = render_fused(self.mpi(torch.float16), self.planes.A, rc)
        if out is None:
            out = render_mpi(mpi, self.planes.A, rc)
        depth = out["depth"].float()
        if isinstance(camera, PinholeCamera):
            pass  # z_cam does not change with a translation of the world origin
        else:
            depth = depth + float(np.dot(camera.view_direction, self.origin))
        return {
            "rgb": out["rgb"].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(),
            "depth": depth.cpu().numpy(),
            "opacity": out["opacity"].float().cpu().numpy(),
        }

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        path = Path(path)
        blob = {
            "format": MODEL_FORMAT,
            "kind": self.model.kind,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "planes": self.planes.to_dict(),
            "image_size": list(self.image_size),
            "config": self.config,
        }
        if extra:
            blob.update(extra)
        tmp = path.with_name(f".{path.name}.partial")
        torch.save(blob, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device="cpu") -> "MPIScene":
        model_dir = Path(model_dir)
        path = model_dir / "model.pt" if model_dir.is_dir() else model_dir
        if not path.exists():
            raise InputFileNotFoundError(
                "no fitted MPI here (model.pt missing)", path=model_dir, hint="run 'geoimplicit nvs fit' first"
            )
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)  # plain data: no pickled code
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"cannot read the MPI ({exc})", path=path, hint="re-run 'geoimplicit nvs fit'") from None
        if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
            raise WeightsError("not a geoimplicit MPI model", path=path, hint="re-run 'geoimplicit nvs fit'")
        planes = PlaneSet.from_dict(blob["planes"])
        sd = blob["state_dict"]
        model = build_model(blob["kind"], planes.num_planes, planes.height, planes.width, float(sd["density_scale"]))
        model.load_state_dict(sd)
        scene = cls(model, planes, tuple(blob["image_size"]), blob.get("config", {}))
        return scene.to(device)


def load_config(model_dir) -> dict:
    p = Path(model_dir) / "config.json"
    return json.loads(p.read_text()) if p.exists() else {}
