"""Plane-to-camera maps of an MPI: per plane, the homography from target pixels onto its texture, its depth at
each pixel, and the planes' front-to-back order.

A plane with ``X = A @ [a, b, 1]`` (texture pixel -> local world) is the world plane ``B = [A; 0 0 1]`` of
:mod:`geoimplicit.geometry.homography`: a camera with 3x4 matrix ``P`` (``K [R | t]``, or ``[P_affine; 0 0 0 1]``)
sees it through ``H = P @ B``, so ``H^-1`` maps target pixels ``p = [u, v, 1]`` back onto the texture:
``q = H^-1 p``, ``(a, b) = q[:2] / q[2]``. For a pinhole camera ``q[2] = 1 / z_cam`` (the plane's depth at that
pixel); for an affine camera ``q[2] = 1`` and the depth along the viewing direction is linear in ``p``.

Everything geometric is float64 and in local coordinates (the MPI's ``origin`` subtracted); the per-pixel maps
handed to the renderer are float32. Cameras come as :class:`geoimplicit.geometry.CameraTensors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geoimplicit.geometry.homography import plane_to_image
from geoimplicit.geometry.tensors import CameraTensors

__all__ = ["plane_homographies", "PlaneWarp"]


@dataclass
class PlaneWarp:
    """Per-plane maps from target pixels, for one camera.

    ``Hinv`` (D, 3, 3): target pixel -> plane texture (homogeneous). ``depth_rows`` (D, 3): the plane's depth at
    ``p`` is ``1 / (Hinv[2] . p)`` (pinhole, ``inverse_depth``) or ``depth_rows . p`` (affine). ``order``: plane
    indices from front to back for this camera. ``Kinv`` for ray lengths (pinhole), else None.
    """

    Hinv: torch.Tensor
    depth_rows: torch.Tensor
    inverse_depth: bool
    order: torch.Tensor
    Kinv: torch.Tensor | None
    width: int
    height: int


def plane_homographies(A: torch.Tensor | np.ndarray, cam: CameraTensors) -> PlaneWarp:
    """Homographies from ``cam``'s pixels onto each plane (float64), and the front-to-back order."""
    A = torch.as_tensor(A, dtype=torch.float64, device=cam.P.device)
    D = A.shape[0]
    bottom = torch.zeros(D, 1, 3, dtype=torch.float64, device=A.device)
    bottom[:, 0, 2] = 1.0
    A4 = torch.cat([A, bottom], dim=1)  # (D, 4, 3)
    Hinv = torch.linalg.inv(plane_to_image(cam.P.unsqueeze(0), A4))  # (D, 3, 3)
    centre = torch.tensor([(cam.width - 1) / 2, (cam.height - 1) / 2, 1.0], dtype=torch.float64, device=A.device)
    if cam.kind == "pinhole":
        depth_rows = Hinv[:, 2, :]
        depth_c = 1.0 / (depth_rows @ centre)
        inverse = True
    else:
        depth_rows = torch.einsum("i,dij,djk->dk", cam.view_dir, A, Hinv)  # (D, 3): d^T A H^-1
        depth_c = depth_rows @ centre
        inverse = False
    order = torch.argsort(depth_c.detach())
    return PlaneWarp(Hinv, depth_rows, inverse, order, cam.Kinv, cam.width, cam.height)
