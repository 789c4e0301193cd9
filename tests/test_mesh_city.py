"""Meshes of generated cities: the generator's true surface, a field given by it, and the occupancy network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoimplicit.mesh.heightfield import dsm_to_mesh, mesh_to_dsm
from geoimplicit.mesh.metrics import compare_meshes
from geoimplicit.synthetic import VEGETATION, generate_city, sample_points, scene_bounds
from geoimplicit.synthetic.mesh import scene_height, truth_mesh


@pytest.fixture(scope="module")
def scene():
    return generate_city(3, bounds=scene_bounds(48, crs="EPSG:2154"))


@pytest.fixture(scope="module")
def truth(scene):
    return truth_mesh(scene)


def _outer_boundary_only(mesh, bounds, tol):
    e = mesh.boundary_edges()
    mid = (mesh.vertices[e[:, 0]] + mesh.vertices[e[:, 1]]) / 2
    left, bottom, right, top = bounds
    d = np.minimum.reduce([mid[:, 0] - left, right - mid[:, 0], mid[:, 1] - bottom, top - mid[:, 1]])
    return len(e), float(d.max()) if len(e) else 0.0


def test_truth_mesh_is_the_truth_dsm_with_walls(scene, truth):
    dsm, valid = mesh_to_dsm(truth, scene.bounds, scene.resolution)
    inner = np.zeros(scene.shape, bool)
    inner[1:-1, 1:-1] = True  # the mesh spans the pixel centres: the outer half pixel is not covered
    assert valid[inner].all()
    roofs_and_ground = inner & (scene.classes != VEGETATION)  # a crown over a roof keeps the roof
    assert np.abs(dsm - scene.dsm)[roofs_and_ground].max() < 1e-4
    n = truth.face_normals()
    walls = np.abs(n[:, 2]) < 1e-6
    wall_area = truth.face_areas()[walls].sum()
    eaves = sum(2 * (p["a"] + p["b"]) * 2 * b["eave_height"] for b in scene.buildings for p in b["parts"][:1])
    assert wall_area > 0.25 * eaves  # every building stands on walls, not on a ramp
    assert (n[:, 2] > -1e-6).all()  # nothing faces down in a 2.5D city
    assert truth.crs_wkt and "Lambert-93" in truth.crs_wkt


def test_generate_writes_the_truth_mesh(tmp_path, cli):
    from geoimplicit.mesh.io import read_ply

    r = cli("generate", tmp_path / "city", "--size", 32, "--seed", 2, "--no-points")
    assert r.exit_code == 0, r.output
    m = read_ply(tmp_path / "city" / "truth_mesh.ply")
    assert m.n_faces > 1000 and m.normals is not None
    import pyproj

    assert pyproj.CRS(m.crs_wkt).to_epsg() == 2154


def _truth_field(scene):
    from geoimplicit.mesh.fields import height_field

    H = scene_height(scene)
    c = scene.center
    z0 = float(scene.dtm.mean())

    def height(px, py):
        return torch.from_numpy(H(px.double().numpy() + c[0], py.double().numpy() + c[1]) - z0).float()

    return height_field(height, (c[0], c[1], z0))


def test_mesh_of_the_true_field_matches_the_truth_and_stitches(scene, truth):
    from geoimplicit.mesh.extract import extract_box
    from geoimplicit.mesh.lattice import Lattice
    from geoimplicit.mesh.occupancy import tile_box
    from geoimplicit.mesh.stitch import stitch_tiles

    field = _truth_field(scene)
    left, bottom, right, top = scene.bounds
    core = (left + 8, bottom + 8, right - 16, top - 16)  # 24 m, in 2 x 2 tiles
    lattice = Lattice.around(scene.bounds, scene.dtm.min() - 2, 0.5)
    z = (scene.dtm.min() - 2, scene.dsm.max() + 2)
    midx, midy = left + 20.0, bottom + 20.0
    tiles = []
    for x0, x1 in ((core[0], midx), (midx, core[2])):
        for y0, y1 in ((core[1], midy), (midy, core[3])):
            lo, hi = tile_box(lattice, (x0, y0, x1, y1), *z)
            tiles.append(extract_box(field, lattice, lo, hi))
    mesh = stitch_tiles(tiles, lattice)
    n_edges, worst = _outer_boundary_only(mesh, core, 0.5)
    assert n_edges and worst < 1e-6  # boundary edges only on the AOI outline: no cracks at the seams
    assert len(mesh.nonmanifold_edges()) == 0
    scored = compare_meshes(mesh, truth, samples=60000, bounds=core)
    raster = compare_meshes(dsm_to_mesh(scene.dsm, scene.transform), truth, samples=60000, bounds=core)
    assert scored["chamfer_l1"] < 0.05 and scored["normal_consistency"] > 0.93
    assert scored["chamfer_l1"] < 0.5 * raster["chamfer_l1"]  # a true raster DSM's cells are steps


def test_occupancy_mesh_of_a_generated_city(scene, truth):
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor
    from geoimplicit.mesh.occupancy import mesh_from_points

    pts = sample_points(scene, 3, density=10, holes=0.05, outliers=0.005)
    predictor = OccupancyPredictor(None, "cpu")
    left, bottom, right, top = scene.bounds
    area = (left + 8, bottom + 8, right - 8, top - 8)
    mesh = mesh_from_points(predictor, pts, area, 0.5, images=[(scene.ortho, scene.transform)],
                            true_ortho=True, tile_size=16, overlap=16, crs_wkt=scene.crs.to_wkt())
    n_edges, worst = _outer_boundary_only(mesh, area, 0.5)
    assert n_edges and worst <= 0.25 + 1e-6  # 4 tiles, each its own encoding: no crack at the seams (cells are
    # centred on the grid's cell corners: the mesh ends half a cell inside the area)
    assert len(mesh.nonmanifold_edges()) == 0
    core = (area[0] + 1, area[1] + 1, area[2] - 1, area[3] - 1)
    scored = compare_meshes(mesh, truth, samples=40000, bounds=core)
    assert scored["chamfer_l1"] < 0.3 and scored["normal_consistency"] > 0.85
    # field normals agree with the faces they sit on
    fn = mesh.face_normals()
    vn = mesh.normals[mesh.faces].mean(1)
    assert np.einsum("ij,ij->i", fn, vn / np.linalg.norm(vn, axis=1, keepdims=True).clip(1e-9)).mean() > 0.8
    # colours come from the ortho at the vertices' x, y
    row, col = scene.pixel_of(mesh.vertices[:, 0], mesh.vertices[:, 1])
    ok = (row >= 0) & (row < scene.shape[0]) & (col >= 0) & (col < scene.shape[1])
    expected = scene.ortho[:, row[ok], col[ok]].T
    assert (np.abs(mesh.colours[ok].astype(int) - expected).max(1) == 0).mean() > 0.95


@pytest.mark.parametrize("roof", ["flat", "gabled", "hipped"])
@pytest.mark.parametrize("a,b", [(8.0, 4.0), (4.0, 6.5), (5.0, 5.0)])
def test_roof_envelope_equals_the_generators_roof_function(roof, a, b):
    """The polygon roof of a part, also with the short side along u (a < b: L-shapes' second parts), against the
    generator's own roof height formula at random points."""
    import shapely

    from geoimplicit.synthetic.city import _inside, _local_uv, _roof_rel
    from geoimplicit.synthetic.mesh import roof_regions

    part = {"cx": 770010.0, "cy": 6277020.0, "a": a, "b": b, "angle": 0.4}
    slope = 0.0 if roof == "flat" else 0.7
    building = {"base": 30.0, "eave_height": 6.0, "roof": roof, "roof_slope": slope, "parts": [part],
                "structure": None}
    c0 = (770000.0, 6277000.0)
    regions = roof_regions(building, c0)
    rng = np.random.default_rng(0)
    x = rng.uniform(part["cx"] - 9, part["cx"] + 9, 4000)
    y = rng.uniform(part["cy"] - 9, part["cy"] + 9, 4000)
    u, v = _local_uv(x, y, part)
    inside = _inside(u, v, part) & (np.minimum(a - np.abs(u), b - np.abs(v)) > 1e-6)
    expected = 36.0 + _roof_rel(u, v, part, roof, slope)
    got = np.full(len(x), np.nan)
    for region, plane in regions:
        hit = shapely.contains_xy(region, x - c0[0], y - c0[1])
        got[hit] = plane[0] + plane[1] * (x[hit] - c0[0]) + plane[2] * (y[hit] - c0[1])
    assert np.isfinite(got[inside]).all() and np.isnan(got[~_inside(u, v, part)]).all()
    assert np.abs(got[inside] - expected[inside]).max() < 1e-6


@pytest.mark.gpu
def test_occupancy_mesh_on_cuda_matches_the_cpu(scene):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor
    from geoimplicit.mesh.occupancy import mesh_from_points

    pts = sample_points(scene, 3, density=10, holes=0.05, outliers=0.005)
    left, bottom, right, top = scene.bounds
    area = (left + 8, bottom + 8, right - 8, top - 8)
    meshes = [mesh_from_points(OccupancyPredictor(None, dev), pts, area, 0.5, images=[(scene.ortho, scene.transform)],
                               true_ortho=True, tile_size=16, overlap=16) for dev in ("cpu", "cuda")]
    assert len(meshes[1].boundary_edges()) and len(meshes[1].nonmanifold_edges()) == 0
    apart = compare_meshes(meshes[1], meshes[0], samples=20000)
    assert apart["chamfer_l1"] < 0.05  # bf16 decoding on CUDA: centimetres, as for the DSM


def test_occupancy_mesh_takes_the_refiners_heights(scene):
    """Where the height refiner moves a cell of the DSM, the mesh's top moves with it: re-rasterized, the mesh
    is much nearer the refined DSM (computed on its own, tile by tile as ``geoimplicit dsm`` does) than the
    unrefined one is."""
    from geoimplicit.dsm.occupancy.infer import OccupancyPredictor, predict_dsm
    from geoimplicit.mesh.occupancy import mesh_from_points

    pts = sample_points(scene, 3, density=10, holes=0.05, outliers=0.005)
    predictor = OccupancyPredictor(None, "cpu")
    assert predictor.refiner is not None  # the shipped refiner goes with the shipped weights
    left, bottom, right, top = scene.bounds
    area = (left + 8, bottom + 8, right - 8, top - 8)
    images = [(scene.ortho, scene.transform)]
    refined, valid = predict_dsm(predictor, pts, area, 0.5, images=images, true_ortho=True)
    mesh = mesh_from_points(predictor, pts, area, 0.5, images=images, true_ortho=True, tile_size=16, overlap=16)
    refiner, predictor.refiner = predictor.refiner, None
    raw, raw_valid = predict_dsm(predictor, pts, area, 0.5, images=images, true_ortho=True)
    predictor.refiner = refiner
    mesh_dsm, mesh_valid = mesh_to_dsm(mesh, area, 0.5)
    both = valid & raw_valid & mesh_valid
    moved = both & (np.abs(refined - raw) > 0.25)
    assert moved.sum() >= 10
    to_mesh = np.median(np.abs(mesh_dsm - refined)[moved])
    to_raw = np.median(np.abs(raw - refined)[moved])
    assert to_mesh < 0.3 * to_raw, (to_mesh, to_raw)
    assert len(mesh.nonmanifold_edges()) == 0
