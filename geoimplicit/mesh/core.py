"""The triangle mesh the package passes around, and the checks the tests and the stitching rely on."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class Mesh:
    """A triangle mesh in a projected CRS.

    Attributes:
        vertices: (V, 3) float64 CRS coordinates (x east, y north, z up, CRS units).
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside (the normal points to free space).
        normals: (V, 3) float32 unit normals or None.
        colours: (V, 3) uint8 RGB or None.
        crs_wkt: the CRS as WKT, or None when unknown.
        keys: (V,) int64 lattice edge keys (meshes from :mod:`.extract`), or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    colours: np.ndarray | None = None
    crs_wkt: str | None = None
    keys: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.vertices = np.asarray(self.vertices, np.float64).reshape(-1, 3)
        self.faces = np.asarray(self.faces, np.int64).reshape(-1, 3)

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    def face_normals(self, unit: bool = True) -> np.ndarray:
        """(F, 3) face normals (area-weighted when ``unit`` is False: length = 2 x area)."""
        v = self.vertices - self.vertices.mean(0) if len(self.vertices) else self.vertices
        a, b, c = (v[self.faces[:, i]] for i in range(3))
        n = np.cross(b - a, c - a)
        if unit:
            length = np.linalg.norm(n, axis=1, keepdims=True)
            n = n / np.where(length > 0, length, 1.0)
        return n

    def face_areas(self) -> np.ndarray:
        return 0.5 * np.linalg.norm(self.face_normals(unit=False), axis=1)

    def area(self) -> float:
        return float(self.face_areas().sum())

    def edges(self) -> np.ndarray:
        """(3F, 2) undirected edges (sorted vertex pairs), one per face side."""
        e = np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]])
        return np.sort(e, axis=1)

    def boundary_edges(self) -> np.ndarray:
        """(B, 2) edges used by exactly one face (a closed surface has none)."""
        e = self.edges()
        if not len(e):
            return e
        uniq, counts = np.unique(e, axis=0, return_counts=True)
        return uniq[counts == 1]

    def nonmanifold_edges(self) -> np.ndarray:
        """(N, 2) edges used by more than two faces (duplicate walls show up here)."""
        e = self.edges()
        if not len(e):
            return e
        uniq, counts = np.unique(e, axis=0, return_counts=True)
        return uniq[counts > 2]

    def signed_volume(self) -> float:
        """Volume enclosed (positive when the normals point outwards; meaningful for closed meshes)."""
        v = self.vertices - self.vertices.mean(0)
        a, b, c = (v[self.faces[:, i]] for i in range(3))
        return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)

    def subset(self, face_mask: np.ndarray) -> "Mesh":
        """The faces where ``face_mask`` holds, with unused vertices dropped."""
        faces = self.faces[np.asarray(face_mask, bool)]
        used = np.zeros(len(self.vertices), bool)
        used[faces] = True  # a mask, not np.unique: no sort of 3 F indices
        used = np.flatnonzero(used)
        remap = np.full(len(self.vertices), -1, np.int64)
        remap[used] = np.arange(len(used))
        pick = (lambda a: None if a is None else a[used])
        return replace(self, vertices=self.vertices[used], faces=remap[faces], normals=pick(self.normals),
                       colours=pick(self.colours), keys=pick(self.keys))

    def drop_degenerate(self, min_area: float = 0.0) -> "Mesh":
        """Without the faces of area <= ``min_area`` (zero-area slivers where the level meets a node)."""
        return self.subset(self.face_areas() > min_area)


def concatenate(meshes) -> Mesh:
    """One mesh of several (no welding); attributes kept only where every part has them."""
    meshes = [m for m in meshes if m is not None]
    if not meshes:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    offsets = np.cumsum([0] + [m.n_vertices for m in meshes[:-1]])
    faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets)])

    def cat(name):
        parts = [getattr(m, name) for m in meshes]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    return Mesh(np.concatenate([m.vertices for m in meshes]), faces, cat("normals"), cat("colours"),
                meshes[0].crs_wkt, cat("keys"))


def weld(mesh: Mesh, tolerance: float = 0.0) -> Mesh:
    """Merge vertices with the same lattice key (``keys``), or, without keys, within ``tolerance`` (a grid of
    that size; 0: identical coordinates). Faces that collapse are dropped; normals are averaged."""
    if mesh.keys is not None:
        ids = mesh.keys
    elif tolerance > 0:
        ids = np.floor((mesh.vertices - mesh.vertices.min(0)) / tolerance + 0.5).astype(np.int64)
    else:
        ids = mesh.vertices
    first, inverse = first_and_inverse(ids)
    faces = inverse[mesh.faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    normals = None
    if mesh.normals is not None:
        normals = np.zeros((len(first), 3))
        normals += mesh.normals[first]
        again = np.ones(len(ids), bool)
        again[first] = False  # only the repeats are added one by one (np.add.at is slow), in the same order
        np.add.at(normals, inverse[again], mesh.normals[again])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        normals = normals.astype(np.float32)
    pick = (lambda a: None if a is None else a[first])
    return Mesh(mesh.vertices[first], faces[keep], normals, pick(mesh.colours), mesh.crs_wkt, pick(mesh.keys))


def first_and_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each distinct id's first occurrence (ids in sorted order) and each row's distinct id."""
    if np.ndim(ids) > 1:
        _, first, inverse = np.unique(ids, axis=0, return_index=True, return_inverse=True)
        return first, inverse.reshape(-1)
    order = np.argsort(ids, kind="stable")  # stable: the first occurrence leads; sorted runs merge fast
    ids = ids[order]
    new = np.empty(len(ids), bool)
    new[:1] = True
    np.not_equal(ids[1:], ids[:-1], out=new[1:])
    inverse = np.empty(len(ids), np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse
