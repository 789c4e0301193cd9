"""An across-scene MPI prior (ImMPI's across-scene initialisation): a network trained on many generated scenes
predicts, from the posed train views of a new scene, the surface (height and colour per texel) of its geo-MPI;
the per-scene fit starts from it instead of from the plane sweep.

- :mod:`.network`: plane-sweep features, the 3D cost U-Net and the 2D refinement (:class:`PriorNet`);
- :mod:`.surface`: a surface as any plane set's MPI, and the fit's start from it;
- :mod:`.checkpoint`: weights (``torch.load(weights_only=True)``), the shipped default;
- :mod:`.data` and :mod:`.train`: training scenes rendered from seeds, and the resumable training
  (``geoimplicit nvs train-prior``).

>>> surface = predict_surface("default", planes, cams, images, device)  # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from geoimplicit.mpi.prior.checkpoint import DEFAULT_WEIGHTS, load_prior

__all__ = ["DEFAULT_WEIGHTS", "load_prior", "predict_surface"]


def predict_surface(prior, planes, cams, images, device=None, *, tile: int = 320) -> dict[str, torch.Tensor]:
    """The prior's surface on ``planes``' texture grid: ``height`` (h, w, local units), ``colour`` (3, h, w),
    ``seen`` (h, w: share of the views that see the texel). ``prior``: ``"default"``, a weights path, or a
    loaded :class:`~geoimplicit.mpi.prior.network.PriorNet`; ``cams``: CameraTensors in ``planes``' local
    coordinates; ``images``: (3, H, W) tensors in [0, 1]."""
    from geoimplicit.mpi.prior.network import PriorNet, predict_tiled, sweep_planes_for

    sweep_planes_for(planes, 4)  # the geo layout only: a clear error before any weights are read
    device = device or images[0].device
    net = prior if isinstance(prior, PriorNet) else load_prior(os.fspath(prior), device)
    return predict_tiled(net, planes, cams, [im.to(device) for im in images], tile=tile)
