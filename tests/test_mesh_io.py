"""Mesh files (PLY bytes per the spec, OBJ, GLB structure), heightfield meshes, mesh -> DSM, mesh metrics."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from affine import Affine

from geoimplicit.errors import OutputExistsError
from geoimplicit.mesh.core import Mesh
from geoimplicit.mesh.heightfield import dsm_to_mesh, mesh_to_dsm, write_mesh_dsm
from geoimplicit.mesh.io import glb_to_mesh, read_glb, read_obj, read_ply, write_mesh
from geoimplicit.mesh.metrics import compare_meshes, point_triangle_distance

X0, Y0 = 770549.75, 6277550.25


def _mesh(colours=True):
    h = np.full((6, 8), 30.0)
    h[2:4, 3:6] = 41.25
    tr = Affine(0.5, 0, X0, 0, -0.5, Y0)
    m = dsm_to_mesh(h, tr, crs_wkt="EPSG:2154")
    m.normals = np.tile(np.array([[0, 0, 1]], np.float32), (m.n_vertices, 1))
    if colours:
        m.colours = (np.arange(m.n_vertices * 3) % 256).astype(np.uint8).reshape(-1, 3)
    return m


def test_ply_bytes_follow_the_spec_and_read_back_exactly(tmp_path):
    import pyproj

    m = _mesh()
    path = write_mesh(tmp_path / "city.ply", m)[0]
    data = path.read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:header_end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert "comment crs EPSG:2154" in header
    assert f"element vertex {m.n_vertices}" in header and f"element face {m.n_faces}" in header
    assert [h for h in header if h.startswith("property")][:3] == ["property double x", "property double y",
                                                                   "property double z"]
    assert "property list uchar int vertex_indices" in header
    # body: per vertex 3 doubles + 3 floats + 3 uchar, per face 1 uchar + 3 int32, little-endian, no padding
    assert len(data) - header_end == m.n_vertices * (24 + 12 + 3) + m.n_faces * 13
    x0 = struct.unpack_from("<d", data, header_end)[0]
    assert x0 == m.vertices[0, 0]
    first_face = struct.unpack_from("<B3i", data, header_end + m.n_vertices * 39)
    assert first_face == (3, *m.faces[0])
    back = read_ply(path)
    assert np.array_equal(back.vertices, m.vertices) and np.array_equal(back.faces, m.faces)
    assert np.array_equal(back.colours, m.colours) and np.allclose(back.normals, m.normals)
    assert pyproj.CRS(back.crs_wkt).to_epsg() == 2154


def test_ply_without_epsg_code_records_the_wkt(tmp_path):
    import pyproj

    crs = pyproj.CRS("+proj=lcc +lat_1=45 +lat_2=49 +lat_0=46.5 +lon_0=3.2 +x_0=700000 +y_0=6600000 "
                     "+ellps=GRS80 +units=m +no_defs")
    wkt = crs.to_wkt()
    assert crs.to_epsg() is None  # a CRS without a code: the comment holds its WKT
    m = _mesh(colours=False)
    m.crs_wkt = wkt
    path = write_mesh(tmp_path / "a.ply", m)[0]
    assert b"comment crs PROJCRS[" in path.read_bytes()[:4000]
    assert pyproj.CRS(read_ply(path).crs_wkt).equals(crs)


def test_obj_has_a_local_origin_and_a_prj(tmp_path):
    import pyproj

    m = _mesh()
    paths = write_mesh(tmp_path / "city.obj", m)
    assert [p.name for p in paths] == ["city.obj", "city.prj"]
    text = paths[0].read_text()
    assert "# origin" in text
    first_v = next(line for line in text.splitlines() if line.startswith("v "))
    assert abs(float(first_v.split()[1])) < 1e4  # offsets, not 6-digit eastings
    back = read_obj(paths[0])
    assert np.abs(back.vertices - m.vertices).max() < 1e-3 and np.array_equal(back.faces, m.faces)
    assert pyproj.CRS(paths[1].read_text()).equals(pyproj.CRS("EPSG:2154"), ignore_axis_order=True)


def test_glb_structure_and_accessor_bounds(tmp_path):
    m = _mesh()
    paths = write_mesh(tmp_path / "city.glb", m)
    data = paths[0].read_bytes()
    magic, version, length = struct.unpack_from("<III", data)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A and jlen % 4 == 0
    doc = json.loads(data[20 : 20 + jlen])
    blen, btype = struct.unpack_from("<II", data, 20 + jlen)
    assert btype == 0x004E4942 and blen % 4 == 0 and 20 + jlen + 8 + blen == len(data)
    assert doc["asset"]["version"] == "2.0" and doc["buffers"][0]["byteLength"] == blen
    for view in doc["bufferViews"]:
        assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= blen
    prim = doc["meshes"][0]["primitives"][0]
    pos = doc["accessors"][prim["attributes"]["POSITION"]]
    origin = np.array(doc["nodes"][0]["extras"]["origin"])
    local = m.vertices - origin
    assert np.allclose(pos["min"], local.min(0), atol=1e-3) and np.allclose(pos["max"], local.max(0), atol=1e-3)
    assert doc["nodes"][0]["extras"]["crs"] == "EPSG:2154"
    assert doc["accessors"][prim["indices"]]["max"] == [m.n_vertices - 1]
    doc2, binary = read_glb(paths[0])
    assert doc2 == doc and len(binary) == blen
    back = glb_to_mesh(paths[0])
    assert np.abs(back.vertices - m.vertices).max() < 1e-3  # float32 offsets about the origin: millimetres
    assert np.array_equal(back.faces, m.faces) and np.array_equal(back.colours, m.colours)
    assert paths[1].suffix == ".prj"


def test_mesh_files_are_not_overwritten(tmp_path):
    m = _mesh()
    write_mesh(tmp_path / "a.ply", m)
    with pytest.raises(OutputExistsError):
        write_mesh(tmp_path / "a.ply", m)
    write_mesh(tmp_path / "a.ply", m, overwrite=True)


def test_heightfield_mesh_round_trips_through_the_zbuffer():
    rng = np.random.default_rng(3)
    h = rng.uniform(10, 20, (12, 9)).round(2)
    valid = rng.random((12, 9)) > 0.1
    tr = Affine(0.5, 0, X0, 0, -0.5, Y0)
    m = dsm_to_mesh(h, tr, valid)
    back, ok = mesh_to_dsm(m, (X0, Y0 - 6.0, X0 + 4.5, Y0), 0.5)
    assert np.array_equal(ok, valid)
    assert np.abs(back[valid] - h[valid]).max() < 1e-4
    # every wall faces its lower neighbour
    n = m.face_normals()
    c = m.vertices[m.faces].mean(1)
    walls = np.abs(n[:, 2]) < 1e-9
    probe = c[walls] + 0.1 * n[walls]
    back_side = c[walls] - 0.1 * n[walls]
    col = lambda p: np.floor((p[:, 0] - X0) / 0.5).astype(int)  # noqa: E731
    row = lambda p: np.floor((Y0 - p[:, 1]) / 0.5).astype(int)  # noqa: E731
    assert (h[row(probe), col(probe)] < h[row(back_side), col(back_side)]).all()


def test_zbuffer_takes_the_highest_surface_and_interpolates():
    tri = Mesh([[0, 0, 1.0], [4, 0, 5.0], [0, 4, 9.0]], [[0, 1, 2]])
    high = Mesh([[0, 0, 3.0], [2, 0, 3.0], [0, 2, 3.0]], [[0, 1, 2]])
    from geoimplicit.mesh.core import concatenate

    d, ok = mesh_to_dsm(concatenate([tri, high]), (0, 0, 4, 4), 1.0)
    # cell centre (0.5, 0.5): plane z = 1 + x + 2 y = 2.5, below the flat triangle at 3
    assert d[3, 0] == pytest.approx(3.0) and d[3, 2] == pytest.approx(1 + 2.5 + 1.0)
    assert not ok[0, 3]


def test_mesh_dsm_geotiff_is_scored_by_eval(tmp_path):
    import rasterio

    from geoimplicit.evaluate.pipeline import evaluate_dsm
    from geoimplicit.io.raster import write_geotiff

    h = np.full((40, 40), 50.0)
    h[10:25, 12:30] = 61.5
    tr = Affine(0.5, 0, X0, 0, -0.5, Y0)
    truth = write_geotiff(tmp_path / "truth.tif", h.astype(np.float32), tr, "EPSG:2154")
    m = dsm_to_mesh(h + 0.2, tr, crs_wkt="EPSG:2154")
    out = write_mesh_dsm(tmp_path / "mesh_dsm.tif", m, (X0, Y0 - 20, X0 + 20, Y0), 0.5)
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 2154 and ds.nodata == -9999
    report = evaluate_dsm(out, truth, tmp_path / "report")
    stats = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report is not None
    assert abs(stats["overall"]["bias"] - 0.2) < 1e-4


def test_point_triangle_distance_in_every_region():
    a, b, c = np.array([0.0, 0, 0]), np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
    cases = [([0.2, 0.2, 0.7], 0.7), ([-1, -1, 0], np.sqrt(2)), ([2, 0, 0], 1.0), ([0, 3, 0], 2.0),
             ([0.5, -2, 0], 2.0), ([-3, 0.5, 0], 3.0), ([1, 1, 0], np.sqrt(2) / 2)]
    p = np.array([q for q, _ in cases], float)
    n = len(p)
    d = point_triangle_distance(p, np.tile(a, (n, 1)), np.tile(b, (n, 1)), np.tile(c, (n, 1)))
    assert np.allclose(d, [e for _, e in cases])


def test_chamfer_and_normal_consistency_have_their_known_values():
    h = np.full((20, 20), 10.0)
    tr = Affine(0.5, 0, X0, 0, -0.5, Y0)
    flat = dsm_to_mesh(h, tr)
    same = compare_meshes(flat, flat, samples=5000)
    assert same["chamfer_l1"] < 1e-3 and same["normal_consistency"] == pytest.approx(1.0)
    up = compare_meshes(dsm_to_mesh(h + 0.1, tr), flat, samples=5000)
    assert up["chamfer_l1"] == pytest.approx(0.1, abs=1e-4)
    assert up["fscore_0.25"] == 1.0 and up["fscore_0.5"] == 1.0
