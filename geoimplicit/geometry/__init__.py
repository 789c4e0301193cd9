"""Camera geometry shared by every model that renders (MPI, neural surfaces): camera models, projection and
back-projection, rays, plane homographies, pose corrections for refinement, camera-set alignment.

- :mod:`~geoimplicit.geometry.cameras` (numpy float64, no torch): :class:`Camera` / :class:`ProjectiveCamera`
  protocols, :class:`PinholeCamera`, :class:`AffineCamera`, :class:`LocalFrame`, :func:`look_at`, :func:`nadir_camera`.
- :mod:`~geoimplicit.geometry.projection`, :mod:`~geoimplicit.geometry.rays`,
  :mod:`~geoimplicit.geometry.homography` (batched, differentiable torch), :mod:`~geoimplicit.geometry.tensors`
  (:class:`CameraTensors`: a camera as tensors about a local origin).
- :mod:`~geoimplicit.geometry.pose`: :class:`CameraOptimizerConfig`, :class:`CameraOptimizer`, exponential maps.
- :mod:`~geoimplicit.geometry.align`: :func:`align_points` (Umeyama), :func:`pose_errors`.
- :func:`check_shape`, :func:`check_dtype`: boundary checks raising :class:`geoimplicit.errors.ShapeError`.

Conventions: ``docs/conventions.md``. The numpy names import without torch; the others load torch on first use.
"""

from __future__ import annotations

import importlib

from geoimplicit.geometry.cameras import (
    AffineCamera,
    Camera,
    LocalFrame,
    PinholeCamera,
    ProjectiveCamera,
    look_at,
    nadir_camera,
    pixel_centres,
)
from geoimplicit.geometry.checks import check_dtype, check_shape

_LAZY = {
    "transform_points": "projection", "project_pinhole": "projection", "unproject_pinhole": "projection",
    "project_affine": "projection", "unproject_affine": "projection", "affine_view_direction": "projection",
    "homogeneous": "projection",
    "pixel_grid": "rays", "pixel_uv": "rays", "pinhole_rays": "rays", "affine_rays": "rays",
    "plane_basis": "homography", "plane_to_image": "homography", "homography_from_plane": "homography",
    "apply_homography": "homography", "camera_homography": "homography",
    "CameraTensors": "tensors", "camera_tensors": "tensors",
    "CameraOptimizerConfig": "pose", "CameraOptimizer": "pose", "POSE_MODES": "pose", "GAUGES": "pose",
    "so3_exp": "pose", "so3_log": "pose", "se3_exp": "pose", "skew": "pose", "invert_rigid": "pose",
    "rigid_motion": "pose", "camera_optimizer": "pose", "PIVOTS": "pose",
    "Similarity": "align", "align_points": "align", "transform_camera": "align", "pose_errors": "align",
    "rotation_angle_deg": "align", "align_cameras": "align", "camera_errors": "align", "perturb_camera": "align",
}

__all__ = ["Camera", "ProjectiveCamera", "PinholeCamera", "AffineCamera", "LocalFrame", "look_at", "nadir_camera",
           "pixel_centres",
           "check_shape", "check_dtype", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geoimplicit.geometry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"geoimplicit.geometry.{module}"), name)
    globals()[name] = value
    return value
