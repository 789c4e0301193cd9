"""The mesh product kind: tile surfaces saved and read back exactly, merged into one stitched file."""

from __future__ import annotations

import numpy as np

from geoimplicit.mesh.extract import extract_box
from geoimplicit.mesh.fields import sphere_field
from geoimplicit.mesh.io import read_ply
from geoimplicit.mesh.lattice import Lattice
from geoimplicit.mesh.product import MeshProduct, load_tile_surface, save_tile_surface
from geoimplicit.tiling.grid import TileGrid

X0, Y0 = 770000.0, 6277000.0


def test_tile_surface_round_trip(tmp_path):
    lattice = Lattice.around((X0, Y0, X0 + 20, Y0 + 20), 90.0, 0.5)
    lo = lattice.index_of(X0, Y0, 90.0, rounding=np.round)
    hi = lattice.index_of(X0 + 20, Y0 + 20, 120.0, rounding=np.round)
    s = extract_box(sphere_field((X0 + 10.3, Y0 + 10.7, 105.2), 6.0), lattice, lo, hi, crs_wkt="EPSG:2154")
    back = load_tile_surface(save_tile_surface(tmp_path / "tiles" / "r0000_c0000.npz", s))
    for name in ("vertices", "faces", "keys", "normals"):
        assert np.array_equal(getattr(back.mesh, name), getattr(s.mesh, name)), name
    assert back.box == s.box and np.array_equal(back.boundary_face, s.boundary_face)
    assert np.array_equal(back.ring_keys, s.ring_keys) and np.array_equal(back.ring_values, s.ring_values)
    assert back.mesh.crs_wkt == "EPSG:2154"
    assert not list((tmp_path / "tiles").glob(".*partial*"))


def test_product_merges_tiles_into_one_closed_mesh(tmp_path):
    tg = TileGrid.from_aoi((X0, Y0, X0 + 20, Y0 + 20), tile_size=10, overlap=2, resolution=0.5, crs="EPSG:2154")
    lattice = Lattice((X0 - 2.0, Y0 - 2.0, 80.0), 0.5)
    product = MeshProduct(lattice.to_dict(), "ply")
    field = sphere_field((X0 + 10.3, Y0 + 10.7, 105.2), 6.0)
    for t in tg.tiles:
        lo = lattice.index_of(t.core_bounds[0], t.core_bounds[1], 90.0, rounding=np.round)
        hi = lattice.index_of(t.core_bounds[2], t.core_bounds[3], 120.0, rounding=np.round)
        product.write(tmp_path, t, extract_box(field, lattice, lo, hi, crs_wkt="EPSG:2154"), {})
        assert product.finished(tmp_path, t.id)
    out = product.merge(tmp_path, [t.id for t in tg.tiles], {"mesh": tmp_path / "city.ply",
                                                             "dsm": tmp_path / "city_dsm.tif"}, tilegrid=tg)
    mesh = read_ply(out["mesh"])
    assert len(tg.tiles) == 4 and mesh.n_faces > 1000
    assert len(mesh.boundary_edges()) == 0 and len(mesh.nonmanifold_edges()) == 0  # 4 tiles, welded by key
    import rasterio

    with rasterio.open(out["dsm"]) as ds:
        dsm = ds.read(1)
        assert ds.crs.to_epsg() == 2154 and ds.res == (0.5, 0.5)
    top = dsm[dsm != ds.nodata].max()
    assert abs(top - (105.2 + 6.0)) < 0.05
    assert MeshProduct.from_dict(product.to_dict()) == product
    from geoimplicit.jobs.products import product_from_dict

    assert product_from_dict(product.to_dict()) == product  # the run index rebuilds the kind by name
