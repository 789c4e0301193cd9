"""The compute device of a run: ``--device auto|cpu|cuda`` -> a ``torch.device``, with a clear error."""

from __future__ import annotations

from geoimplicit.errors import DeviceError


def resolve_device(device=None):
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``torch.device``.

    Raises :class:`DeviceError` when CUDA is asked for and there is none, or the name is unknown.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    device = device or "auto"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is available", hint="use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}", hint="use auto, cpu or cuda") from None
