"""Checkpoints: plain tensors, dicts, strings and numbers only, so ``torch.load(weights_only=True)`` reads them.

Keys: ``format`` ("geoimplicit-occupancy"), ``version``, ``model`` (state dict), ``config`` (the resolved config
as a dict), ``normalization`` (the frame rule: feature cell, height scale, reference-height percentile), ``step``,
``metrics`` and, for resumable checkpoints, ``optimizer``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from geoimplicit.errors import WeightsError

FORMAT = "geoimplicit-occupancy"
VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "occupancy_default.pt"


def normalization_dict(cfg) -> dict:
    from geoimplicit.dsm.occupancy.normalize import Z_REF_PERCENTILE

    return {"feature_cell_m": float(cfg.model.feature_cell_m), "height_scale_m": float(cfg.model.height_scale_m),
            "z_ref_percentile": float(Z_REF_PERCENTILE), "origin": "patch centre (x, y), z percentile (z)"}


def save_checkpoint(path, model, cfg, *, step: int, metrics: dict | None = None, optimizer=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": FORMAT, "version": VERSION,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(), "normalization": normalization_dict(cfg), "step": int(step),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path=None, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; raise :class:`WeightsError` naming the file otherwise."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.exists():
        hint = ("reinstall geoimplicit (the default weights ship with it) or pass --weights"
                if path == DEFAULT_WEIGHTS else "check the path given to --weights")
        raise WeightsError("weights file not found", path=path, hint=hint)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read the checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                           path=path, hint="pass a .pt written by geoimplicit train") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError("not a geoimplicit occupancy checkpoint", path=path,
                           hint="pass a .pt written by geoimplicit train")
    if ckpt.get("version", 0) > VERSION:
        raise WeightsError(f"checkpoint version {ckpt['version']} is newer than this geoimplicit ({VERSION})",
                           path=path, hint="upgrade geoimplicit")
    return ckpt


def model_from_checkpoint(ckpt: dict, path=None):
    """(model in eval mode, Config) from a loaded checkpoint."""
    from geoimplicit.dsm.occupancy.config import config_from_dict
    from geoimplicit.dsm.occupancy.model import OccupancyNet

    cfg = config_from_dict(ckpt["config"], path)
    model = OccupancyNet(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise WeightsError(f"weights do not fit the model in the checkpoint's config: {str(exc)[:160]}", path=path) from None
    model.eval()
    return model, cfg
