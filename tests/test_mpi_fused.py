"""The fused Triton renderer against the PyTorch reference (needs a GPU, or TRITON_INTERPRET=1 with triton)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoimplicit.io.cameras import AffineCamera
from geoimplicit.mpi.composite import render_mpi
from geoimplicit.mpi.demo import look_at_camera
from geoimplicit.mpi.fused import fused_available, pack_warps, render_fused, render_fused_batch
from geoimplicit.mpi.planes import fronto_planes, geo_planes
from geoimplicit.geometry import camera_tensors
from geoimplicit.mpi.warp import plane_homographies

ORIGIN = np.array([770000.0, 6277000.0, 50.0])
pytestmark = pytest.mark.gpu


def _device():
    if not fused_available():
        pytest.skip("triton with a CUDA device (or TRITON_INTERPRET=1) is needed")
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check(ref, got, tol):
    for k in ("rgb", "opacity"):
        assert (ref[k] - got[k]).abs().max().item() < tol, k
    sel = ref["opacity"] > 0.5
    rel = ((ref["depth"] - got["depth"]).abs() / ref["depth"].abs().clamp_min(1))[sel]
    assert rel.max().item() < 1e-3


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-4), (torch.float16, 5e-3)])
def test_fused_matches_reference_pinhole(dtype, tol):
    dev = _device()
    g = torch.Generator().manual_seed(0)
    ref_cam = look_at_camera(ORIGIN + [0, 0, 100], ORIGIN, 60.0, 48, 40, (80.0, 120.0))
    other = look_at_camera(ORIGIN + [12, -7, 98], ORIGIN + [2, 0, 0], 55.0, 37, 29, (80.0, 120.0))
    planes = fronto_planes(ref_cam.with_origin(ORIGIN), 8, margin=0.1)
    mpi = torch.rand(8, 4, planes.height, planes.width, generator=g)
    mpi[:, 3] *= 0.2
    mpi = mpi.to(dev)
    for cam in (ref_cam, other):
        rc = camera_tensors(cam, ORIGIN, device=dev)
        ref = render_mpi(mpi.to(dtype).float(), planes.A, rc)
        got = render_fused(mpi.to(dtype), planes.A, rc)
        _check(ref, got, tol)


def test_fused_matches_reference_affine_batch():
    dev = _device()
    g = torch.Generator().manual_seed(1)
    planes = geo_planes((-16, -16, 16, 16), 1.0, 0.0, 10.0, 6, origin=ORIGIN)
    mpi = torch.rand(6, 4, planes.height, planes.width, generator=g).to(dev)
    cams = []
    for k in range(3):
        P = np.array([[1.0, 0.05 * k, 0.3, 0.0], [0.02, -1.0, 0.4, 0.0]])
        P[:, 3] = -P[:, :3] @ (ORIGIN + [-16, 16, 0]) + [0.5, 0.5]
        cams.append(camera_tensors(AffineCamera(P, 30, 34), ORIGIN, device=dev))
    warps = [plane_homographies(planes.A, rc) for rc in cams]
    out = render_fused_batch(mpi.permute(0, 2, 3, 1).contiguous(), pack_warps(warps, dev), 34, 30)
    for k, rc in enumerate(cams):
        ref = render_mpi(mpi, planes.A, rc)
        _check(ref, {key: v[k] for key, v in out.items()}, 2e-4)


def test_fused_matches_reference_uneven_geo_planes():
    """Adaptive plane heights (``FitConfig.plane_placement``): unevenly spaced horizontal planes, oblique view."""
    dev = _device()
    g = torch.Generator().manual_seed(2)
    heights = [20.0, 8.4, 8.1, 7.9, 3.0, 0.3, 0.1, -0.2, -5.0]
    planes = geo_planes((-16, -16, 16, 16), 0.5, 0, 0, origin=ORIGIN, heights=heights)
    assert planes.num_planes == len(heights)
    mpi = torch.rand(planes.num_planes, 4, planes.height, planes.width, generator=g)
    mpi[:, 3] *= 2.0
    mpi = mpi.to(dev)
    cam = look_at_camera(ORIGIN + [30, -20, 90], ORIGIN + [3, 0, 0], 50.0, 45, 38, (60.0, 140.0))
    rc = camera_tensors(cam, ORIGIN, device=dev)
    _check(render_mpi(mpi, planes.A, rc), render_fused(mpi, planes.A, rc), 2e-4)
