"""A fitted surface: its box (local frame, CRS), the SDF and appearance networks and the renderer's state.

Saved as ``model.pt``: tensors, numbers and strings only, so that it loads with ``torch.load(...,
weights_only=True)`` (no pickled code runs when a model is read).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geoimplicit.errors import WeightsError
from geoimplicit.geometry.cameras import PinholeCamera
from geoimplicit.surface.box import SurfaceBox, ray_box
from geoimplicit.surface.config import SurfaceConfig
from geoimplicit.surface.networks import AppearanceNetwork, SDFNetwork
from geoimplicit.surface.render import BACKGROUND, render_idr, render_volume

__all__ = ["SurfaceModel", "load_surface", "FORMAT"]

FORMAT = "geoimplicit-surface-1"


class SurfaceModel(nn.Module):
    """SDF network + appearance network over a :class:`SurfaceBox` (see :mod:`geoimplicit.surface`)."""

    def __init__(self, box: SurfaceBox, cfg: SurfaceConfig):
        super().__init__()
        self.box, self.cfg = box, cfg
        self.sdf_net = SDFNetwork(box, cfg)
        self.colour_net = AppearanceNetwork(box, cfg)
        self.log_inv_s = nn.Parameter(torch.tensor(float(np.log(1.0 / cfg.inv_s_init))))
        self.background = nn.Parameter(torch.tensor(BACKGROUND))

    @property
    def device(self) -> torch.device:
        return self.background.device

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """SDF (N,) in CRS units at local points (N, 3) float32."""
        return self.sdf_net.sdf(x)

    def render_rays(self, o: torch.Tensor, d: torch.Tensor, *, train: bool = False, renderer: str | None = None,
                    generator=None) -> dict:
        """Render rays (local origins and unit directions (N, 3) float32) clipped to the box: a dict with
        ``rgb``, ``depth`` (ray length, 0 where no hit), ``hit``, ``column`` (see :func:`ray_box`) and the
        renderer's extras."""
        cfg = self.cfg
        lo, hi = self.box.tensors(o.device)
        t_near, t_far, column = ray_box(o.detach(), d.detach(), lo, hi)
        kind = renderer or cfg.renderer
        if kind == "idr":
            out = render_idr(self.sdf_net, self.colour_net, o, d, t_near, t_far, steps=cfg.trace_steps,
                             samples=cfg.trace_samples, eps=self.eps, train=train)
        else:
            out = render_volume(self.sdf_net, self.colour_net, o, d, t_near, t_far, log_inv_s=self.log_inv_s,
                                background=self.background, samples=cfg.trace_samples,
                                surface_samples=cfg.surface_samples, steps=cfg.trace_steps, eps=self.eps,
                                train=train, generator=generator)
        out["column"] = column
        return out

    @property
    def eps(self) -> float:
        """Sphere-tracing tolerance: 1 mm per 100 m of box."""
        return 1e-5 * self.box.scale * 2

    @torch.no_grad()
    def render_camera(self, cam: PinholeCamera, *, chunk: int = 16384, renderer: str | None = None):
        """Render a world camera: (rgb (H, W, 3) float32 in [0, 1], depth z_cam (H, W) float32, NaN where no
        surface is hit)."""
        from geoimplicit.geometry.tensors import camera_tensors

        ct = camera_tensors(cam, self.box.origin, device=self.device)
        o, d = ct.rays()
        zaxis = ct.E[2, :3]
        rgb, depth = [], []
        for i in range(0, o.shape[0], chunk):
            oo, dd = o[i:i + chunk].float(), d[i:i + chunk].float()
            out = self.render_rays(oo, dd, train=False, renderer=renderer)
            rgb.append(out["rgb"].detach().clamp(0, 1))
            z = out["depth"] * (dd @ zaxis.float())
            depth.append(torch.where(out["hit"], z, torch.full_like(z, float("nan"))))
        h, w = cam.height, cam.width
        return (torch.cat(rgb).reshape(h, w, 3).cpu().numpy(), torch.cat(depth).reshape(h, w).cpu().numpy())

    def state(self, meta: dict | None = None) -> dict:
        return {"format": FORMAT, "config": self.cfg.to_dict(), "box": self.box.to_dict(),
                "weights": self.state_dict(), "meta": dict(meta or {})}

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> Path:
        from geoimplicit.outputs import atomic_output

        path = Path(path)
        with atomic_output(path, overwrite=True) as tmp:
            torch.save(self.state(meta), tmp)
        return path


def load_surface(path: str | os.PathLike, device="cpu") -> SurfaceModel:
    """A model saved by :meth:`SurfaceModel.save` (a ``model.pt`` or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise WeightsError("no fitted surface here", path=path, hint="run `geoimplicit surface fit` first")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt model
        raise WeightsError(f"cannot read the surface model ({exc})", path=path, hint="fit it again") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise WeightsError("not a geoimplicit surface model", path=path, hint="pass a folder from `surface fit`")
    cfg = SurfaceConfig.from_dict(blob["config"])
    model = SurfaceModel(SurfaceBox.from_dict(blob["box"]), cfg)
    model.load_state_dict(blob["weights"])
    model.meta = blob.get("meta", {})
    return model.to(device).eval()
