"""Prior weights and training checkpoints: plain tensors, dicts, strings and numbers, read with
``torch.load(weights_only=True)``.

Keys: ``format`` (``geoimplicit-mpi-prior``), ``version``, ``arch`` (:class:`PriorArch` as a dict), ``model``
(state dict), ``config`` (the resolved training config), ``step``, ``elapsed_s`` (training seconds so far),
``metrics``; resumable checkpoints (``last.pt``) add ``optimizer`` and ``scenes_started``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from geoimplicit.errors import ConfigError, WeightsError

FORMAT = "geoimplicit-mpi-prior"
VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "mpi_prior_default.pt"

__all__ = ["FORMAT", "VERSION", "DEFAULT_WEIGHTS", "save_prior", "load_prior_checkpoint", "load_prior"]


def save_prior(path, net, *, config: dict, step: int, elapsed_s: float, metrics: dict | None = None,
               optimizer=None, scenes_started: int | None = None) -> Path:
    """Write weights (and, with ``optimizer``, a resumable checkpoint) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "version": VERSION, "arch": net.arch.to_dict(),
            "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "config": config, "step": int(step), "elapsed_s": float(elapsed_s),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()}}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
        blob["scenes_started"] = int(scenes_started or 0)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def resolve_weights(prior: str | os.PathLike) -> Path:
    """``"default"`` -> the shipped weights; anything else is a path."""
    return DEFAULT_WEIGHTS if str(prior) == "default" else Path(prior)


def load_prior_checkpoint(prior: str | os.PathLike = "default", map_location="cpu") -> dict:
    """Read a prior checkpoint (``"default"`` or a path) with ``weights_only=True``; :class:`WeightsError`
    naming the file and the fix otherwise."""
    path = resolve_weights(prior)
    if not path.exists():
        if path == DEFAULT_WEIGHTS:
            raise WeightsError("no default MPI prior weights are installed", path=path,
                               hint="train them with 'geoimplicit nvs train-prior CONFIG -o RUN --export "
                                    f"{DEFAULT_WEIGHTS}' (docs/nvs.md), pass --prior PATH, or --prior none")
        raise WeightsError("MPI prior weights not found", path=path, hint="check the path given to --prior")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read the prior ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                           path=path, hint="pass a .pt written by 'geoimplicit nvs train-prior'") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise WeightsError("not a geoimplicit MPI prior", path=path,
                           hint="pass a .pt written by 'geoimplicit nvs train-prior'")
    if int(blob.get("version", 0)) > VERSION:
        raise WeightsError(f"prior version {blob['version']} is newer than this geoimplicit ({VERSION})", path=path,
                           hint="upgrade geoimplicit")
    return blob


def load_prior(prior: str | os.PathLike = "default", device="cpu"):
    """The prior network (eval mode, on ``device``) from its weights."""
    from geoimplicit.mpi.prior.network import PriorArch, PriorNet

    path = resolve_weights(prior)
    blob = load_prior_checkpoint(path)
    try:
        net = PriorNet(PriorArch.from_dict(blob["arch"]))
        net.load_state_dict(blob["model"])
    except (ConfigError, RuntimeError, KeyError, TypeError) as exc:
        raise WeightsError(f"weights do not fit the prior network: {str(exc).splitlines()[0][:160]}",
                           path=path, hint="pass a .pt written by 'geoimplicit nvs train-prior'") from None
    return net.to(device).eval()
