"""Camera models in float64 numpy: pinhole ``K [R | t]`` (world-to-camera), affine 2x4, and the protocol an RPC
camera can implement later.

Conventions (``docs/conventions.md``): ``X_cam = R @ X_world + t`` (world-to-camera); OpenCV axes (x right, y
down, z forward); depth is ``z_cam`` for a pinhole camera and the distance along the viewing direction for an
affine one; pixel ``(u, v) = (col, row)`` with the centre of the top-left pixel at ``(0, 0)``. World coordinates
may be raw projected coordinates: everything here is float64, and :class:`LocalFrame` / ``with_origin``
re-express cameras about a local origin before any float32 work.

No torch here (the file readers import this module); the batched, differentiable versions of the same maths are
in :mod:`geoimplicit.geometry.projection`, :mod:`~geoimplicit.geometry.rays` and
:mod:`~geoimplicit.geometry.tensors`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Protocol, runtime_checkable

import numpy as np

from geoimplicit.geometry.checks import check_shape

__all__ = ["Camera", "ProjectiveCamera", "PinholeCamera", "AffineCamera", "LocalFrame", "look_at", "nadir_camera",
           "pixel_centres"]


@runtime_checkable
class Camera(Protocol):
    """What every camera model offers (an RPC camera implements this, and ``local_affine`` for the renderers).

    ``project``: world points (N, 3) -> pixels ``uv`` (N, 2) and a depth (N,) that grows away from the sensor;
    ``unproject``: the inverse for given depths; ``rays``: origins and unit directions of pixels; ``with_origin``,
    ``scaled``, ``cropped``: the same camera for shifted world coordinates, a resized image, a sub-image.
    """

    width: int | None
    height: int | None

    def project(self, xyz_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray: ...

    def rays(self, uv: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def with_origin(self, origin: Iterable[float]) -> "Camera": ...

    def scaled(self, factor: float) -> "Camera": ...

    def cropped(self, col_off: float, row_off: float, width: int, height: int) -> "Camera": ...


@runtime_checkable
class ProjectiveCamera(Camera, Protocol):
    """A camera whose projection is linear in homogeneous coordinates (3x4): world planes map to images by
    homographies, which the MPI renderers need. Pinhole and affine cameras are; an RPC camera is not (it would
    offer a local affine approximation instead)."""

    def projection_matrix(self) -> np.ndarray: ...


def pixel_centres(width: int, height: int) -> np.ndarray:
    """All pixel centres (H*W, 2) as ``(u, v) = (col, row)``, row-major (the order of ``image.reshape(-1, C)``).

    >>> pixel_centres(3, 2).tolist()
    [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    """
    v, u = np.mgrid[0:height, 0:width]
    return np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float64)


def _points(xyz, name="xyz_world") -> np.ndarray:
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim == 1:
        xyz = xyz.reshape(-1, 3)
    check_shape(xyz, ["N", 3], name)
    return xyz


def _uv(uv) -> np.ndarray:
    uv = np.asarray(uv, dtype=np.float64)
    uv = uv.reshape(-1, 2) if uv.ndim == 1 else uv
    check_shape(uv, ["N", 2], "uv")
    return uv


def _uv_depth(uv, depth) -> tuple[np.ndarray, np.ndarray]:
    uv = _uv(uv)
    dims = {"N": len(uv)}
    depth = np.asarray(depth, dtype=np.float64).reshape(-1)
    check_shape(depth, ["N"], "depth", dims)
    return uv, depth


def _resized_size(size: int | None, factor: float) -> int | None:
    return None if size is None else max(1, int(round(size * factor)))


# --------------------------------------------------------------------------------------------------------------
# Pinhole camera
# --------------------------------------------------------------------------------------------------------------
@dataclass
class PinholeCamera:
    """A pinhole camera: world-to-camera ``extrinsic`` (4, 4) and ``intrinsic`` K (3, 3), both float64.

    >>> cam = PinholeCamera(np.eye(4), np.array([[100., 0, 50], [0, 100, 50], [0, 0, 1]]), 1.0, 10.0, 101, 101)
    >>> uv, depth = cam.project(np.array([[0.0, 0.0, 5.0]]))
    >>> uv.tolist(), depth.tolist()
    ([[50.0, 50.0]], [5.0])
    >>> cam.unproject(uv, depth).tolist()
    [[0.0, 0.0, 5.0]]
    """

    extrinsic: np.ndarray
    intrinsic: np.ndarray
    depth_min: float
    depth_max: float
    width: int | None = None
    height: int | None = None

    def __post_init__(self):
        ext = np.array(self.extrinsic, dtype=np.float64)
        if ext.shape == (3, 4):
            ext = np.vstack([ext, [0.0, 0.0, 0.0, 1.0]])
        self.extrinsic = ext.reshape(4, 4)
        self.intrinsic = np.array(self.intrinsic, dtype=np.float64).reshape(3, 3)
        self.depth_min = float(self.depth_min)
        self.depth_max = float(self.depth_max)
        self.width = None if self.width is None else int(self.width)
        self.height = None if self.height is None else int(self.height)

    @property
    def R(self) -> np.ndarray:
        """World-to-camera rotation (3, 3)."""
        return self.extrinsic[:3, :3]

    @property
    def t(self) -> np.ndarray:
        """World-to-camera translation (3,)."""
        return self.extrinsic[:3, 3]

    @property
    def K(self) -> np.ndarray:
        return self.intrinsic

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates (3,): ``-R.T @ t``."""
        return -self.R.T @ self.t

    @property
    def P(self) -> np.ndarray:
        """The 3x4 projection matrix ``K [R | t]``."""
        return self.intrinsic @ self.extrinsic[:3, :]

    def projection_matrix(self) -> np.ndarray:
        """``K [R | t]`` (3, 4): homogeneous world point -> ``z_cam * [u, v, 1]``."""
        return self.P

    def to_camera(self, xyz_world: np.ndarray) -> np.ndarray:
        """World points (N, 3) to camera coordinates (N, 3)."""
        return _points(xyz_world) @ self.R.T + self.t

    def project(self, xyz_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixel coordinates ``uv`` (N, 2) (col, row) and depth ``z_cam`` (N,)."""
        xc = self.to_camera(xyz_world)
        depth = xc[:, 2]
        proj = xc @ self.intrinsic.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = proj[:, :2] / proj[:, 2:3]
        return uv, depth

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) at depths ``z_cam`` (N,) -> world points (N, 3)."""
        uv, depth = _uv_depth(uv, depth)
        homo = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
        rays = homo @ np.linalg.inv(self.intrinsic).T
        xc = rays * depth[:, None]
        return (xc - self.t) @ self.R  # R.T @ (xc - t)

    def rays(self, uv: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Origins (N, 3) (the camera centre) and unit world directions (N, 3) through pixels ``uv`` (N, 2);
        every pixel centre, row-major, when ``uv`` is None. A point at ray length ``s`` has depth
        ``s * directions @ R[2]``."""
        if uv is None:
            uv = pixel_centres(self.width, self.height)
        uv = _uv(uv)
        homo = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
        d = homo @ np.linalg.inv(self.intrinsic).T @ self.R  # R.T @ K^-1 p
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return np.broadcast_to(self.center, d.shape).copy(), d

    def with_origin(self, origin: Iterable[float]) -> "PinholeCamera":
        """The same camera for world coordinates expressed relative to ``origin``: ``t' = t + R @ origin``."""
        origin = np.asarray(origin, dtype=np.float64).reshape(3)
        ext = self.extrinsic.copy()
        ext[:3, 3] = self.t + self.R @ origin
        return replace(self, extrinsic=ext)

    def moved(self, motion_inv: np.ndarray) -> "PinholeCamera":
        """The camera after a rigid world motion ``M`` (given as ``M^-1`` (4, 4), e.g. a pose correction):
        ``E' = E @ M^-1``, so the moved camera sees ``X`` where this one saw ``M^-1 X``."""
        m = np.asarray(motion_inv, dtype=np.float64)
        check_shape(m, [4, 4], "motion_inv")
        return replace(self, extrinsic=self.extrinsic @ m)

    def scaled(self, factor: float) -> "PinholeCamera":
        """The camera of the image resized by ``factor`` (pixel-centre convention: ``u' = (u + .5) f - .5``)."""
        f = float(factor)
        return self._rescaled(f, f, _resized_size(self.width, f), _resized_size(self.height, f))

    def resized(self, width: int, height: int) -> "PinholeCamera":
        """The camera of the whole image resampled to ``width`` x ``height`` pixels (x and y scaled apart)."""
        if self.width is None or self.height is None:
            raise ValueError("resized: the camera has no image size; use scaled(factor)")
        return self._rescaled(width / self.width, height / self.height, int(width), int(height))

    def _rescaled(self, fx: float, fy: float, width, height) -> "PinholeCamera":
        K = self.intrinsic.copy()
        K[0, 0] *= fx
        K[0, 1] *= fx
        K[1, 1] *= fy
        K[0, 2] = (K[0, 2] + 0.5) * fx - 0.5
        K[1, 2] = (K[1, 2] + 0.5) * fy - 0.5
        return replace(self, intrinsic=K, width=width, height=height)

    def cropped(self, col_off: float, row_off: float, width: int, height: int) -> "PinholeCamera":
        """The camera of the sub-image starting at pixel (col_off, row_off)."""
        K = self.intrinsic.copy()
        K[0, 2] -= col_off
        K[1, 2] -= row_off
        return replace(self, intrinsic=K, width=int(width), height=int(height))


# --------------------------------------------------------------------------------------------------------------
# Affine camera
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AffineCamera:
    """An affine (2, 4) satellite camera: ``[col, row] = P @ [E, N, h, 1]``.

    ``depth`` for compositing is the distance along the viewing direction (the null vector of ``P[:, :3]``,
    oriented from the sky down), so larger depth = further from the sensor.

    >>> cam = AffineCamera(np.array([[1.0, 0, 0, 10], [0, -1.0, 0, 20]]), 64, 64)
    >>> cam.project(np.array([[2.0, 3.0, 5.0]]))[0].tolist(), cam.view_direction.tolist()
    ([[12.0, 17.0]], [0.0, 0.0, -1.0])
    """

    P: np.ndarray
    width: int | None = None
    height: int | None = None
    crs: str | None = None
    name: str | None = None

    def __post_init__(self):
        self.P = np.array(self.P, dtype=np.float64).reshape(2, 4)
        self.width = None if self.width is None else int(self.width)
        self.height = None if self.height is None else int(self.height)

    @property
    def view_direction(self) -> np.ndarray:
        """Unit world direction (3,) along which points project to the same pixel, pointing downwards."""
        d = np.cross(self.P[0, :3], self.P[1, :3])
        d = d / np.linalg.norm(d)
        return -d if d[2] > 0 else d

    def projection_matrix(self) -> np.ndarray:
        """``[P; 0 0 0 1]`` (3, 4): homogeneous world point -> ``[u, v, 1]``."""
        return np.vstack([self.P, [0.0, 0.0, 0.0, 1.0]])

    def project(self, xyz_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> ``uv`` (N, 2) and a depth along the view direction (N,)."""
        xyz = _points(xyz_world)
        uv = xyz @ self.P[:, :3].T + self.P[:, 3]
        depth = xyz @ self.view_direction
        return uv, depth

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) at depths along the view direction (N,) -> world points (N, 3)."""
        uv, depth = _uv_depth(uv, depth)
        origins, d = self.rays(uv)
        return origins + depth[:, None] * d

    def rays(self, uv: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Origins (N, 3) and the unit view direction (N, 3) of pixels ``uv`` (N, 2) (all pixel centres when
        None). Each origin is the ray's point at depth 0: in the plane through the world origin perpendicular to
        the view direction, so the point at ray length ``s`` has depth ``s``."""
        if uv is None:
            uv = pixel_centres(self.width, self.height)
        uv = _uv(uv)
        M = self.P[:, :3]
        origins = (uv - self.P[:, 3]) @ np.linalg.pinv(M).T  # least-norm solution: orthogonal to the null vector
        return origins, np.broadcast_to(self.view_direction, origins.shape).copy()

    def with_origin(self, origin: Iterable[float]) -> "AffineCamera":
        """The same camera for world coordinates relative to ``origin``."""
        origin = np.asarray(origin, dtype=np.float64).reshape(3)
        P = self.P.copy()
        P[:, 3] = P[:, 3] + P[:, :3] @ origin
        return replace(self, P=P)

    def moved(self, motion_inv: np.ndarray) -> "AffineCamera":
        """The camera after a rigid world motion ``M`` (given as ``M^-1`` (4, 4)): ``P' = P @ M^-1``."""
        m = np.asarray(motion_inv, dtype=np.float64)
        check_shape(m, [4, 4], "motion_inv")
        return replace(self, P=self.P @ m)

    def scaled(self, factor: float) -> "AffineCamera":
        """The camera of the image resized by ``factor`` (pixel-centre convention)."""
        f = float(factor)
        P = self.P * f
        P[:, 3] += 0.5 * f - 0.5
        return replace(self, P=P, width=_resized_size(self.width, f), height=_resized_size(self.height, f))

    def cropped(self, col_off: float, row_off: float, width: int, height: int) -> "AffineCamera":
        """The camera of the sub-image starting at pixel (col_off, row_off)."""
        P = self.P.copy()
        P[:, 3] -= [col_off, row_off]
        return replace(self, P=P, width=int(width), height=int(height))


# --------------------------------------------------------------------------------------------------------------
# Local frames and look-at cameras
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalFrame:
    """World coordinates about a local ``origin`` (float64, CRS units): what float32 work sees.

    >>> frame = LocalFrame([770000.0, 6277000.0, 50.0])
    >>> frame.to_local([[770001.5, 6277002.0, 60.0]]).tolist()
    [[1.5, 2.0, 10.0]]
    """

    origin: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(3))

    def to_local(self, xyz_world) -> np.ndarray:
        return _points(xyz_world) - self.origin

    def to_world(self, xyz_local) -> np.ndarray:
        return _points(xyz_local, "xyz_local") + self.origin

    def camera(self, cam: Camera) -> Camera:
        """A world camera re-expressed in this frame."""
        return cam.with_origin(self.origin)

    def world_camera(self, cam_local: Camera) -> Camera:
        """A camera of this frame back in world coordinates."""
        return cam_local.with_origin(-self.origin)


def look_at(center, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera rotation (3, 3) of a camera at ``center`` looking at ``target`` (OpenCV axes: x right,
    y down, z forward), the image's up towards ``up``; when the view is along ``up``, x is world east.

    >>> (np.round(look_at([0, 0, 100.0], [0, 0, 0.0], up=(0, 1, 0)), 12) + 0.0).tolist()
    [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]
    """
    center = np.asarray(center, np.float64)
    z = np.asarray(target, np.float64) - center
    z /= np.linalg.norm(z)
    up = np.asarray(up, np.float64)
    x = np.cross(z, up) if abs(z @ up) < 0.99 * np.linalg.norm(up) else np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def nadir_camera(left: float, top: float, resolution: float, width: int, height: int, crs=None) -> AffineCamera:
    """Orthographic camera looking straight down onto a map grid (pixel-is-area: pixel (0, 0) covers
    ``[left, left + res] x [top - res, top]`` and its centre is at (0, 0)); depth along (0, 0, -1) is ``-Z``.

    >>> nadir_camera(100.0, 200.0, 0.5, 4, 4).project(np.array([[100.25, 199.75, 30.0]]))[0].tolist()
    [[0.0, 0.0]]
    """
    r = float(resolution)
    P = np.array([[1 / r, 0, 0, -left / r - 0.5], [0, -1 / r, 0, top / r - 0.5]])
    return AffineCamera(P, width, height, crs)
