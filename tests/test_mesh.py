"""Mesh extraction: marching-cubes table, MISE, refinement, normals, stitching, AOI clipping (analytic fields)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoimplicit.mesh.core import concatenate, weld
from geoimplicit.mesh.extract import ExtractOptions, extract_box
from geoimplicit.mesh.fields import box_field, height_field, sphere_field
from geoimplicit.mesh.heightfield import mesh_to_dsm
from geoimplicit.mesh.lattice import Lattice
from geoimplicit.mesh.marching import marching_cubes
from geoimplicit.mesh.stitch import stitch_tiles
from geoimplicit.mesh.tables import CORNERS, triangle_table

X0, Y0 = 770000.0, 6277000.0  # Lambert-93 coordinates: float64 positions must survive them
CENTRE = (X0 + 10.3, Y0 + 10.7, 105.2)
RADIUS = 6.0


@pytest.fixture(scope="module")
def lattice():
    return Lattice.around((X0, Y0, X0 + 20, Y0 + 20), 90.0, 0.5)


def _box(lattice, x0, x1, y0=Y0, y1=Y0 + 20, z0=90.0, z1=120.0):
    return lattice.index_of(x0, y0, z0, rounding=np.round), lattice.index_of(x1, y1, z1, rounding=np.round)


def _face_set(mesh):
    return {tuple(sorted(f)) for f in mesh.keys[mesh.faces].tolist()}


def test_every_case_gives_a_closed_outward_surface():
    """Each of the 256 corner patterns, placed in one cell with everything around it outside, must give a
    closed surface (no boundary edge) enclosing a positive volume (normals outwards)."""
    from geoimplicit.mesh.core import Mesh

    assert (triangle_table()[0] < 0).all() and (triangle_table()[255] < 0).all()
    for case in range(1, 256):
        volume = torch.full((4, 4, 4), -1.0)
        for c, (i, j, k) in enumerate(CORNERS):
            if (case >> c) & 1:
                volume[1 + i, 1 + j, 1 + k] = 1.0
        verts, faces = marching_cubes(volume)
        m = Mesh(verts, faces)
        assert len(m.boundary_edges()) == 0, case
        assert m.signed_volume() > 0, case


def test_sphere_is_closed_on_the_level_set_with_field_normals(lattice):
    lo, hi = _box(lattice, X0, X0 + 20)
    mesh = extract_box(sphere_field(CENTRE, RADIUS), lattice, lo, hi).mesh
    assert len(mesh.boundary_edges()) == 0 and len(mesh.nonmanifold_edges()) == 0
    assert mesh.area() == pytest.approx(4 * np.pi * RADIUS**2, rel=0.01)
    assert mesh.signed_volume() == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.01)  # > 0: normals outwards
    r = np.linalg.norm(mesh.vertices - np.array(CENTRE), axis=1)
    assert np.abs(r - RADIUS).max() < 1e-3  # refined onto the level set (the lattice is 0.5)
    radial = (mesh.vertices - np.array(CENTRE)) / r[:, None]
    assert (radial * mesh.normals).sum(1).min() > 0.999


def test_refinement_moves_vertices_onto_a_curved_level_set(lattice):
    lo, hi = _box(lattice, X0, X0 + 20)
    f = sphere_field(CENTRE, RADIUS)
    plain = extract_box(f, lattice, lo, hi, options=ExtractOptions(refine_steps=0)).mesh
    refined = extract_box(f, lattice, lo, hi, options=ExtractOptions(refine_steps=4)).mesh
    err = [np.abs(np.linalg.norm(m.vertices - np.array(CENTRE), axis=1) - RADIUS).max() for m in (plain, refined)]
    assert err[1] < err[0] / 5


def test_mise_finds_the_same_surface_as_a_dense_pass_with_fewer_queries(lattice):
    lo, hi = _box(lattice, X0, X0 + 20)
    f = sphere_field(CENTRE, RADIUS)
    coarse = extract_box(f, lattice, lo, hi, ring=False, options=ExtractOptions(coarse_stride=8))
    dense = extract_box(f, lattice, lo, hi, ring=False, options=ExtractOptions(coarse_stride=1))
    assert _face_set(coarse.mesh) == _face_set(dense.mesh)
    assert coarse.stats["queries"] < 0.5 * dense.stats["queries"]


def test_sparse_and_dense_marching_cubes_agree(lattice):
    n = 24
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"), -1)
    volume = 7.3 - (g - 11.6).norm(dim=-1)  # inside the ball: positive
    verts, faces = marching_cubes(volume, 0.0, spacing=0.5)
    assert len(faces) and faces.max() < len(verts)
    from geoimplicit.mesh.core import Mesh

    m = Mesh(verts, faces)
    assert len(m.boundary_edges()) == 0
    assert m.area() == pytest.approx(4 * np.pi * (7.3 * 0.5) ** 2, rel=0.02)
    assert m.signed_volume() > 0


def test_flat_roof_and_walls_at_known_heights():
    lattice = Lattice.around((X0, Y0, X0 + 16, Y0 + 16), 0.0, 0.5)
    origin = (X0 + 8.0, Y0 + 8.0, 10.0)

    def height(x, y):  # a 6 x 4 m block with its roof at 12.37 m on ground at 2.1 m (local z: minus 10)
        roof = (x.abs() < 3.0) & (y.abs() < 2.0)
        return torch.where(roof, torch.full_like(x, 2.37), torch.full_like(x, -7.9))

    lo = lattice.index_of(X0, Y0, 0.0, rounding=np.round)
    hi = lattice.index_of(X0 + 16, Y0 + 16, 20.0, rounding=np.round)
    mesh = extract_box(height_field(height, origin), lattice, lo, hi).mesh
    dsm, valid = mesh_to_dsm(mesh, (X0, Y0, X0 + 16, Y0 + 16), 0.5)
    assert valid.all()
    rows, cols = np.mgrid[0:32, 0:32]
    cx, cy = (cols + 0.5) * 0.5 - 8.0, 8.0 - (rows + 0.5) * 0.5
    roof = (np.abs(cx) < 2.5) & (np.abs(cy) < 1.5)  # marching cubes bevels the edge within its last cell
    ground = (np.abs(cx) > 3.5) | (np.abs(cy) > 2.5)
    assert np.abs(dsm[roof] - 12.37).max() < 1e-4
    assert np.abs(dsm[ground] - 2.1).max() < 1e-4
    edge = ~roof & ~ground
    assert ((dsm[edge] >= 2.1 - 1e-4) & (dsm[edge] <= 12.37 + 1e-4)).all()
    normals = mesh.face_normals()
    vertical = np.abs(normals[:, 2]) < 0.1  # within the last bisection bracket (1/32 m) of vertical
    wall_area = mesh.face_areas()[vertical].sum()
    perimeter = 2 * (6 + 4)
    assert 0.9 * perimeter * (12.0 - 2.5) <= wall_area <= perimeter * (12.37 - 2.1)


def test_two_tiles_stitch_into_the_one_piece_mesh(lattice):
    f = sphere_field(CENTRE, RADIUS)
    lo, hi = _box(lattice, X0, X0 + 20)
    mid = lattice.index_of(X0 + 10.0, Y0, rounding=np.round)[0]
    one = stitch_tiles([extract_box(f, lattice, lo, hi)], lattice)
    west = extract_box(f, lattice, lo, np.array([mid, hi[1], hi[2]]))
    east = extract_box(f, lattice, np.array([mid, lo[1], lo[2]]), hi)
    two = stitch_tiles([west, east], lattice)
    assert np.array_equal(one.keys, two.keys) and _face_set(one) == _face_set(two)
    assert np.abs(one.vertices - two.vertices).max() < 1e-4
    assert len(two.boundary_edges()) == 0 and len(two.nonmanifold_edges()) == 0


def _disagreeing_tiles(lattice, colour=None):
    """2 x 2 tiles, each seeing a slightly different sphere, as neighbouring tiles' encodings differ."""
    lo, hi = _box(lattice, X0, X0 + 20)
    mid = lattice.index_of(X0 + 10.0, Y0, rounding=np.round)[0]
    midy = lattice.index_of(X0, Y0 + 10.0, rounding=np.round)[1]
    tiles, k = [], 0
    for (i0, i1) in ((lo[0], mid), (mid, hi[0])):
        for (j0, j1) in ((lo[1], midy), (midy, hi[1])):
            k += 1
            shift = np.array([0.05, -0.04, 0.03]) * k
            f = sphere_field(tuple(np.array(CENTRE) + shift), RADIUS + 0.02 * k)
            tiles.append(extract_box(f, lattice, np.array([i0, j0, lo[2]]), np.array([i1, j1, hi[2]]),
                                     colour=colour))
    return tiles


def test_tiles_whose_fields_disagree_still_have_no_cracks(lattice):
    tiles = _disagreeing_tiles(lattice)
    naive = weld(concatenate([t.mesh for t in tiles]))
    assert len(naive.boundary_edges()) > 0  # without the seam agreement there are cracks
    mesh = stitch_tiles(tiles, lattice)
    assert len(mesh.boundary_edges()) == 0 and len(mesh.nonmanifold_edges()) == 0
    assert mesh.signed_volume() > 0 and np.isfinite(mesh.normals).all()


def test_the_stitch_weld_is_the_generic_weld_of_the_pieces(lattice):
    """The stitch writes its pieces straight into the welded arrays: exactly weld(concatenate(pieces))."""
    from concurrent.futures import ThreadPoolExecutor

    from geoimplicit.mesh.stitch import _weld_parts, remake_ring, seam_consensus

    def stripes(x, y):
        return np.stack([x * 7.3 % 256, y * 5.1 % 256, (x + y) % 256], 1).astype(np.uint8)

    tiles = _disagreeing_tiles(lattice, colour=stripes)
    consensus = seam_consensus(tiles)
    parts = [m for t in tiles for m in (t.mesh.subset(~t.boundary_face), remake_ring(t, consensus, lattice))]
    with ThreadPoolExecutor(2) as pool:
        fast, no_colour = _weld_parts(parts, pool, colour=True)
    for p in parts:
        p.colours = p.colours.astype(np.float64)  # NaN where a new seam crossing has no colour yet
    ref = weld(concatenate(parts))
    assert np.array_equal(fast.keys, ref.keys) and np.array_equal(fast.faces, ref.faces)
    assert np.array_equal(fast.vertices, ref.vertices)
    assert np.array_equal(fast.normals, ref.normals, equal_nan=True) and np.isnan(ref.normals).any()
    known = np.isfinite(ref.colours).all(1)
    assert np.array_equal(no_colour, ~known) and no_colour.any()
    assert np.array_equal(fast.colours[known], np.rint(ref.colours[known]).astype(np.uint8))


def test_aoi_clip_leaves_boundary_edges_only_on_the_aoi_outline():
    import shapely

    lattice = Lattice.around((X0, Y0, X0 + 20, Y0 + 20), 0.0, 0.5)
    origin = (X0 + 10.0, Y0 + 10.0, 5.0)
    f = height_field(lambda x, y: 0.3 * torch.sin(x) + 0.1 * y, origin)
    aoi = shapely.Polygon([(X0 + 2, Y0 + 2), (X0 + 18, Y0 + 3), (X0 + 12, Y0 + 17)])
    tiles = []
    for i0, i1 in ((X0, X0 + 10), (X0 + 10, X0 + 20)):
        lo = lattice.index_of(i0, Y0, 0.0, rounding=np.round)
        hi = lattice.index_of(i1, Y0 + 20, 10.0, rounding=np.round)
        tiles.append(extract_box(f, lattice, lo, hi, cell_filter=lambda x, y: shapely.contains_xy(aoi, x, y)))
    mesh = stitch_tiles(tiles, lattice, cell_filter=lambda x, y: shapely.contains_xy(aoi, x, y))
    edges = mesh.boundary_edges()
    assert len(edges)
    mid = (mesh.vertices[edges[:, 0]] + mesh.vertices[edges[:, 1]]) / 2
    dist = shapely.distance(aoi.exterior, shapely.points(mid[:, 0], mid[:, 1]))
    assert dist.max() < 0.5 * np.sqrt(2) + 1e-6  # within one cell of the outline: no crack at the seam
    assert len(mesh.nonmanifold_edges()) == 0
    assert mesh.area() == pytest.approx(aoi.area, rel=0.1)


def test_box_field_is_closed_with_its_area():
    lattice = Lattice.around((X0, Y0, X0 + 10, Y0 + 10), 0.0, 0.25)
    f = box_field((X0 + 5.1, Y0 + 4.9, 5.05), (2.0, 1.5, 1.0))
    lo = lattice.index_of(X0, Y0, 0.0, rounding=np.round)
    hi = lattice.index_of(X0 + 10, Y0 + 10, 10.0, rounding=np.round)
    mesh = extract_box(f, lattice, lo, hi).mesh
    assert len(mesh.boundary_edges()) == 0
    assert mesh.signed_volume() == pytest.approx(4 * 3 * 2, rel=0.03)


def test_refined_field_takes_the_corrected_heights_with_vertical_walls():
    """The height refiner's corrections in the field: a raised cell becomes a 0.5 m column up to its refined
    height, a lowered one a pit down to it, both with walls half-way between nodes (the cells' edges); the
    rest of the plane is untouched and the surface stays closed."""
    from geoimplicit.mesh.occupancy import RefinedField

    lattice = Lattice.around((X0, Y0, X0 + 8, Y0 + 8), 0.0, 0.5, offset=0.5)  # nodes on the cells' centres
    origin = (X0 + 4.0, Y0 + 4.0, 10.0)
    plane = height_field(lambda x, y: torch.zeros_like(x), origin)  # ground at 10 m
    rows = cols = 16
    raw = np.full((rows, cols), 10.0, np.float32)
    refined = raw.copy()
    refined[5, 6], refined[10, 9] = 13.0, 8.0  # one cell raised by 3 m, one lowered by 2 m
    raw[2, 2] = refined[2, 2] = -9999.0  # no height there: the field is left as it is
    field = RefinedField(plane, refined, raw, X0, Y0 + 8, 0.5)
    lo = lattice.index_of(X0 + 0.25, Y0 + 0.25, 0.0, rounding=np.round)
    hi = lattice.index_of(X0 + 7.75, Y0 + 7.75, 20.0, rounding=np.round)
    surface = extract_box(field, lattice, lo, hi, options=ExtractOptions(coarse_stride=4))
    mesh = surface.mesh
    dsm, valid = mesh_to_dsm(mesh, (X0 + 0.5, Y0 + 0.5, X0 + 7.5, Y0 + 7.5), 0.5)
    expected = np.full((rows, cols), 10.0)
    expected[5, 6], expected[10, 9] = 13.0, 8.0
    assert valid.all() and np.abs(dsm - expected[1:-1, 1:-1]).max() < 1e-4
    v = mesh.vertices
    column = (np.abs(v[:, 2] - 11.5) < 1.4) & (np.abs(v[:, 0] - (X0 + 3.25)) < 0.6)
    assert column.sum() >= 8
    # its wall vertices (off the node's column) lie on the cell's edges (x = 3.0 or 3.5 m), within the last
    # bisection bracket (4 steps: 1/16 of the spacing; the last linear step cannot place a jump)
    off = np.abs(v[column, 0] - X0 - 3.25)
    wall = off > 0.1
    assert wall.sum() >= 4 and np.all(np.abs(off[wall] - 0.25) <= 0.5 / 16 + 1e-6)
    assert len(mesh.nonmanifold_edges()) == 0
    inner = ~surface.boundary_face
    assert mesh.n_faces and inner.any()


def test_facing_triangle_pairs_are_dropped_and_others_kept():
    from geoimplicit.mesh.marching import drop_cancelling

    keys = torch.tensor([[10, 20, 30], [30, 20, 10], [5, 6, 7], [6, 7, 5], [1, 2, 3], [40, 50, 60], [50, 40, 60]])
    cell = torch.arange(len(keys))
    kept_keys, kept_cell = drop_cancelling(keys, cell)
    # (10,20,30)/(30,20,10) and (40,50,60)/(50,40,60) face each other; (5,6,7)/(6,7,5) is one orientation twice
    assert kept_cell.tolist() == [2, 3, 4]
    assert torch.equal(kept_keys, keys[[2, 3, 4]])
