"""City meshes from implicit fields: MISE and marching cubes per tile on a global lattice, tiles stitched
without cracks, PLY / OBJ / GLB in the working CRS, and mesh metrics against a true surface (docs/mesh.md).

>>> from geoimplicit.mesh import Lattice, extract_box, stitch_tiles, write_mesh   # doctest: +SKIP
>>> tile = extract_box(field, lattice, lo, hi)                                    # doctest: +SKIP
>>> mesh = stitch_tiles([tile], lattice)                                          # doctest: +SKIP
>>> write_mesh("city.ply", mesh)                                                  # doctest: +SKIP
"""

from geoimplicit.mesh.core import Mesh, concatenate, weld
from geoimplicit.mesh.extract import ExtractOptions, TileSurface, extract_box
from geoimplicit.mesh.heightfield import dsm_to_mesh, mesh_to_dsm, write_mesh_dsm
from geoimplicit.mesh.io import glb_to_mesh, read_obj, read_ply, write_mesh
from geoimplicit.mesh.lattice import Lattice
from geoimplicit.mesh.metrics import compare_meshes, sample_surface
from geoimplicit.mesh.stitch import stitch_tiles

__all__ = ["Mesh", "concatenate", "weld", "ExtractOptions", "TileSurface", "extract_box", "dsm_to_mesh",
           "mesh_to_dsm", "write_mesh_dsm", "glb_to_mesh", "read_obj", "read_ply", "write_mesh", "Lattice",
           "compare_meshes", "sample_surface", "stitch_tiles"]
