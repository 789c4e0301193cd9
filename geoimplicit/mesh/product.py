"""The ``mesh`` product kind of the job layer: per tile, the tile's surface with its seam data; merged by
stitching (:mod:`geoimplicit.mesh.stitch`) into one mesh file (PLY, OBJ or GLB), optionally re-rasterized.

A tile's product is ``tiles/<id>.npz`` (vertices in CRS coordinates, faces, normals, colours, lattice keys, the
ring faces and the ring node values): the tile's mesh as made, kept in the work folder, and what the merge
needs to make the seams agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from geoimplicit.mesh.core import Mesh
from geoimplicit.mesh.extract import TileSurface
from geoimplicit.mesh.lattice import Lattice
from geoimplicit.outputs import partial_path

__all__ = ["MeshProduct", "save_tile_surface", "load_tile_surface"]


def save_tile_surface(path, surface: TileSurface) -> Path:
    """Write one tile's surface atomically (``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = surface.mesh
    arrays = {"vertices": m.vertices, "faces": m.faces, "keys": m.keys, "boundary_face": surface.boundary_face,
              "box": np.asarray(surface.box, np.int64), "ring_keys": surface.ring_keys,
              "ring_values": surface.ring_values, "crs_wkt": np.asarray(m.crs_wkt or "")}
    if m.normals is not None:
        arrays["normals"] = m.normals
    if m.colours is not None:
        arrays["colours"] = m.colours
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_tile_surface(path) -> TileSurface:
    with np.load(path, allow_pickle=False) as z:
        crs = str(z["crs_wkt"]) or None
        mesh = Mesh(z["vertices"], z["faces"], z["normals"] if "normals" in z else None,
                    z["colours"] if "colours" in z else None, crs, z["keys"])
        return TileSurface(mesh, z["boundary_face"], tuple(int(v) for v in z["box"]), z["ring_keys"],
                           z["ring_values"], {})


def aoi_filter(aoi):
    """``f(x, y) -> bool``: cell centres inside the AOI polygon (None: every cell)."""
    if aoi is None:
        return None
    import shapely

    shapely.prepare(aoi)
    return lambda x, y: shapely.contains_xy(aoi, x, y)


@dataclass(frozen=True)
class MeshProduct:
    """Tile surfaces on one lattice, merged into one mesh file.

    Attributes:
        lattice: the run's lattice (origin, spacing), as :meth:`Lattice.to_dict` gives it.
        fmt: output format, "ply", "obj" or "glb".
        path: tile file under the work folder, ``{id}`` standing for the tile id.
    """

    lattice: dict
    fmt: str = "ply"
    path: str = "tiles/{id}.npz"
    kind: str = "mesh"

    def tile_path(self, workdir, tile_id: str) -> Path:
        return Path(workdir) / self.path.format(id=tile_id)

    def files(self, workdir, tile_id: str) -> list[Path]:
        return [self.tile_path(workdir, tile_id)]

    def write(self, workdir, tile, data: TileSurface, tags: dict) -> list[Path]:
        del tags
        return [save_tile_surface(self.tile_path(workdir, tile.id), data)]

    def finished(self, workdir, tile_id: str) -> bool:
        return self.tile_path(workdir, tile_id).exists()

    def merge(self, workdir, tile_ids: Sequence[str], outputs: dict, *, tilegrid, aoi=None, tags=None,
              overwrite: bool = False, progress=None, cancel=None) -> dict:
        """``outputs["mesh"]``: the stitched mesh file; ``outputs["dsm"]`` (optional): its re-rasterized DSM on
        the run's grid."""
        from geoimplicit.mesh.io import write_mesh
        from geoimplicit.mesh.stitch import stitch_tiles

        lattice = Lattice(tuple(self.lattice["origin"]), float(self.lattice["spacing"]))
        tiles = []
        for k, tid in enumerate(tile_ids):
            tiles.append(load_tile_surface(self.tile_path(workdir, tid)))
            if progress:
                progress(k + 1, len(tile_ids), "stitch", f"read {tid}")
        crs = tilegrid.grid.crs.to_wkt() if tilegrid.grid.crs is not None else None
        mesh = stitch_tiles(tiles, lattice, cell_filter=aoi_filter(aoi), crs_wkt=crs, cancel=cancel)
        written = {"mesh": write_mesh(outputs["mesh"], mesh, fmt=self.fmt, overwrite=overwrite)[0]}
        if outputs.get("dsm"):
            from geoimplicit.mesh.heightfield import write_mesh_dsm

            grid = tilegrid.grid
            written["dsm"] = write_mesh_dsm(outputs["dsm"], mesh, grid.bounds, grid.resolution, crs=crs,
                                            overwrite=overwrite, tags=tags)
        if progress:
            progress(1, 1, "write", f"{mesh.n_faces:,} triangles")
        return written

    def to_dict(self) -> dict:
        return {"kind": self.kind, "lattice": self.lattice, "fmt": self.fmt, "path": self.path}

    @classmethod
    def from_dict(cls, d: dict) -> "MeshProduct":
        return cls(d["lattice"], d.get("fmt", "ply"), d.get("path", "tiles/{id}.npz"))
