"""Neural SDF surfaces: ray-box clipping, geometric initialisation, sphere tracing and IDR's differentiable
intersection against analytic answers, Iso-Points on a known level set, LAS export, the DSM read-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from geoimplicit.surface.box import SurfaceBox, ray_box
from geoimplicit.surface.config import SurfaceConfig
from geoimplicit.surface.networks import GridEncoding, SDFNetwork, anneal_weights, sdf_and_gradient
from geoimplicit.surface.render import render_idr, trace_rays

ORIGIN = np.array([770000.0, 6277000.0, 50.0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _box(h=(40.0, 60.0), side=40.0):
    b = (ORIGIN[0] - side / 2, ORIGIN[1] - side / 2, ORIGIN[0] + side / 2, ORIGIN[1] + side / 2)
    return SurfaceBox.from_bounds(b, h, "EPSG:2154")


def test_ray_box_column_rays():
    lo, hi = torch.tensor([-1.0, -1, -1]), torch.tensor([1.0, 1, 1])
    o = torch.tensor([[0.0, 0, 10], [0.0, 0, 10], [-5.0, 0, 0.5], [0.0, 0, 10]])
    d = torch.tensor([[0.0, 0, -1], [0.1, 0, -1], [1.0, 0, 0], [5.0, 0, -1]])
    d = d / d.norm(dim=1, keepdim=True)
    t0, t1, col = ray_box(o, d, lo, hi)
    assert col.tolist() == [True, False, False, False]  # 2: leaves by the side; 3: side entry; 4: misses
    assert float(t1[1]) > float(t0[1])  # the slanted ray crosses the box, leaving through the side (x = 1)
    assert float(t1[3]) <= float(t0[3])
    torch.testing.assert_close(t0[2], torch.tensor(4.0))


@pytest.mark.parametrize("encoding", ["frequency", "grid"])
def test_plane_initialisation_is_the_mean_height(encoding):
    box = _box()
    net = SDFNetwork(box, SurfaceConfig(encoding=encoding, grid_base_m=8.0, grid_finest_m=1.0))
    x = box.uniform(256)
    f, g, _ = sdf_and_gradient(net, x)
    z0 = 0.5 * (box.lo[2] + box.hi[2])
    torch.testing.assert_close(f, x[:, 2] - float(z0), atol=0.05, rtol=0)
    torch.testing.assert_close(g, torch.tensor([0.0, 0, 1]).expand_as(g), atol=0.05, rtol=0)


def test_sphere_initialisation():
    box = _box()
    net = SDFNetwork(box, SurfaceConfig(encoding="frequency", init="sphere"))
    x = box.uniform(128)
    expect = (x - torch.as_tensor(box.centre, dtype=torch.float32)).norm(dim=1) - 10.0  # half the 20 m height
    torch.testing.assert_close(net.sdf(x), expect, atol=0.05, rtol=0)


def test_grid_encoding_second_derivatives():
    """The eikonal loss differentiates the gradient: the grid's gradient w.r.t. its table must be exact."""
    enc = GridEncoding([4.0, 4.0, 2.0], 2, 1, 2.0, 1.0, 20)
    assert enc.hashed == [False, True]
    with torch.no_grad():
        enc.table.normal_()
    u = torch.rand(16, 3, requires_grad=True)
    (g,) = torch.autograd.grad(enc(u).sum(), u, create_graph=True)
    loss = (g**2).sum()
    (grad,) = torch.autograd.grad(loss, [enc.table])
    # finite differences on one table entry of the first level that the samples use
    first = enc.level_rows(0)
    k = first.start + int(grad[first].abs().sum(1).argmax())
    eps = 1e-2
    with torch.no_grad():
        enc.table[k, 0] += eps
    (gp,) = torch.autograd.grad(enc(u).sum(), u)
    with torch.no_grad():
        enc.table[k, 0] -= 2 * eps
    (gm,) = torch.autograd.grad(enc(u).sum(), u)
    fd = float(((gp**2).sum() - (gm**2).sum()) / (2 * eps))
    assert abs(fd - float(grad[k, 0])) < 1e-2 * max(1.0, abs(fd))


def test_grid_encoding_derivatives_match_finite_differences():
    """The analytic first and second derivatives (in the points and the table) against torch's numerical ones."""
    torch.manual_seed(0)
    enc = GridEncoding([4.0, 4.0, 2.0], 3, 2, 2.0, 0.5, 40).double()
    assert enc.hashed == [False, True, True]
    with torch.no_grad():
        enc.table.normal_()
    table = enc.table.detach().clone().requires_grad_(True)
    u = (torch.rand(7, 3, dtype=torch.float64) * 0.98 + 0.01).requires_grad_(True)
    assert torch.autograd.gradcheck(enc.lookup, (u, table))
    assert torch.autograd.gradgradcheck(enc.lookup, (u, table))


def test_grid_encoding_trilinear_is_exact_on_linear_tables():
    """Trilinear interpolation reproduces a table that is linear in the node coordinates, and its gradient."""
    enc = GridEncoding([8.0, 8.0, 4.0], 1, 1, 2.0, 2.0, 10**6)
    res = enc.res[0]
    i, j, k = torch.meshgrid(*(torch.arange(int(r)) for r in res), indexing="ij")
    with torch.no_grad():
        enc.table[:, 0] = (0.5 * i + 2.0 * j - 1.0 * k).reshape(-1).float()
    u = torch.rand(64, 3, requires_grad=True)
    f = enc(u)[:, 0]
    (g,) = torch.autograd.grad(f.sum(), u)
    scale = (res - 1).float()
    torch.testing.assert_close(f, (u * scale * torch.tensor([0.5, 2.0, -1.0])).sum(1).detach())
    torch.testing.assert_close(g, (scale * torch.tensor([0.5, 2.0, -1.0])).expand_as(g))


def test_grid_encoding_loads_models_saved_with_one_table_per_level():
    """Surfaces fitted before the single table (``tables.<level>`` parameters) load and give the same field."""
    enc = GridEncoding([8.0, 8.0, 4.0], 3, 2, 4.0, 1.0, 50)
    with torch.no_grad():
        enc.table.normal_()
    old = {k: v for k, v in enc.state_dict().items() if k in ("res", "sizes")}
    for lvl in range(enc.levels):
        old[f"tables.{lvl}"] = enc.table.detach()[enc.level_rows(lvl)].clone()
    fresh = GridEncoding([8.0, 8.0, 4.0], 3, 2, 4.0, 1.0, 50)
    fresh.load_state_dict(old)
    u = torch.rand(32, 3)
    torch.testing.assert_close(fresh(u), enc(u), rtol=0, atol=0)


def test_encoding_anneal_opens_bands_coarse_to_fine():
    """BARF's window: nothing at 0, band k half open at (k + 0.5) / bands, everything at 1; a closed band
    contributes nothing to the encoding."""
    w = anneal_weights(4, 0.0)
    assert torch.equal(w, torch.zeros(4))
    torch.testing.assert_close(anneal_weights(4, 0.375), torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert torch.equal(anneal_weights(4, 1.0), torch.ones(4))
    net = SDFNetwork(_box(), SurfaceConfig(encoding="frequency", frequencies=4))
    x = _box().uniform(16)
    net.anneal_encoding(0.0)
    enc = net.encoding(torch.rand(16, 3))
    assert torch.all(enc[:, 3:] == 0)
    f0 = net.sdf(x)
    net.anneal_encoding(1.0)
    assert torch.equal(net.encoding.band_weights, torch.ones(4)) and "band_weights" not in net.state_dict()
    assert not torch.equal(net.sdf(x), f0)


class _Plane(nn.Module):
    """f(x) = z - height (a learnable height): an exact SDF, for analytic checks."""

    def __init__(self, height: float):
        super().__init__()
        self.height = nn.Parameter(torch.tensor(height))

    def forward(self, x):
        return x[:, 2] - self.height, torch.zeros(x.shape[0], 2)

    def sdf(self, x):
        return self.forward(x)[0]


class _Colour(nn.Module):
    def forward(self, x, n, v, feat):
        return torch.sigmoid(x[:, :3] * 0 + n)


def test_sphere_tracing_finds_the_highest_crossing():
    """A roof (a slab from 2 to 4 m) over the ground at 0: a vertical ray stops at the roof top, 4 m."""

    def sdf(x):
        ground = x[:, 2]
        inside = (x[:, :2].abs() < 1).all(1)
        slab = torch.maximum((x[:, 2] - 3).abs() - 1, (x[:, :2].abs() - 1).max(1).values)
        return torch.where(inside | (slab < ground), torch.minimum(slab, ground), ground)

    o = torch.tensor([[0.0, 0, 20], [5.0, 5, 20]])
    d = torch.tensor([[0.0, 0, -1], [0.0, 0, -1]])
    t, hit, _ = trace_rays(sdf, o, d, torch.tensor([10.0, 10.0]), torch.tensor([25.0, 25.0]))
    assert hit.all()
    torch.testing.assert_close(t, torch.tensor([16.0, 20.0]), atol=1e-3, rtol=0)


def test_idr_intersection_gradients_match_the_analytic_ones():
    """x(theta, o, v) on the plane z = h: dx_z/dh = 1, and dx/do_x = (1, 0, 0) (implicit-function theorem)."""
    net = _Plane(2.0)
    o = torch.tensor([[1.0, 2.0, 12.0]], requires_grad=True)
    d = torch.nn.functional.normalize(torch.tensor([[0.3, -0.2, -1.0]]), dim=1)
    d.requires_grad_(True)
    out = render_idr(net, _Colour(), o, d, torch.tensor([0.0]), torch.tensor([30.0]), eps=1e-6)
    x = out["points"]
    torch.testing.assert_close(x[0, 2], torch.tensor(2.0), atol=1e-4, rtol=0)
    (dz_dh,) = torch.autograd.grad(x[0, 2], net.height, retain_graph=True)
    assert abs(float(dz_dh) - 1.0) < 1e-5
    (dx_do,) = torch.autograd.grad(x[0, 0], o, retain_graph=True)
    torch.testing.assert_close(dx_do[0], torch.tensor([1.0, 0.0, 0.3 / 1.0]), atol=1e-5, rtol=0)
    # moving the view direction: the hit moves along the plane by t * dv, projected along v onto the plane
    (dx_dd,) = torch.autograd.grad(x[0, 0], d)
    t = float((12.0 - 2.0) / -d[0, 2].detach())
    assert abs(float(dx_dd[0, 0]) - t) < 1e-3


def _sphere_net(box):
    return SDFNetwork(box, SurfaceConfig(encoding="frequency", init="sphere"))


def test_iso_points_project_resample_upsample():
    from geoimplicit.surface.isopoints import IsoPoints, knn, project, upsample

    box = _box()
    net = _sphere_net(box)
    centre = torch.as_tensor(box.centre, dtype=torch.float32)
    x, n = project(net, box.uniform(800), box)
    r = (x - centre).norm(dim=1)
    assert x.shape[0] > 600
    torch.testing.assert_close(r, torch.full_like(r, 10.0), atol=0.02, rtol=0)
    radial = (x - centre) / r[:, None]
    assert float((n * radial).sum(1).min()) > 0.99  # outward normals

    iso = IsoPoints(400, box, "cpu")
    iso.initialise(net)
    d_before, _ = knn(project(net, box.uniform(1600), box)[0][:400], 1)
    d_after, _ = knn(iso.points, 1)
    cv = lambda v: float(v.std() / v.mean())  # noqa: E731
    assert cv(d_after) < cv(d_before)  # repulsion spreads the points more evenly
    loss = torch.zeros(len(iso))
    loss[0] = 1.0
    new, _ = upsample(net, iso.points, loss, box, 4)
    assert new.shape[0] >= 3
    near = (new - iso.points[0]).norm(dim=1)
    assert float(near.max()) < 3 * float(d_after.mean()) + 0.5


def test_iso_points_las_export(tmp_path):
    import laspy
    import pyproj

    from geoimplicit.surface.isopoints import write_iso_points

    box = _box()
    pts = np.array([[0.0, 0.0, 1.0], [2.5, -3.0, 0.5]])
    nrm = np.array([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8]])
    path = write_iso_points(tmp_path / "iso.laz", pts, nrm, box, rgb=np.array([[1.0, 0, 0], [0, 0.5, 1]]))
    las = laspy.read(path)
    assert str(las.header.version) == "1.4"
    assert las.header.point_format.id == 7
    np.testing.assert_allclose(np.c_[las.x, las.y, las.z], pts + box.origin, atol=1e-3)
    np.testing.assert_allclose(np.c_[las.NormalX, las.NormalY, las.NormalZ], nrm, atol=1e-6)
    assert las.header.parse_crs().equals(pyproj.CRS("EPSG:2154"))
    assert int(las.red[0]) == 65535 and int(las.blue[1]) == 65535


def test_dsm_from_the_sdf_is_the_plane_height():
    from geoimplicit.surface.model import SurfaceModel
    from geoimplicit.surface.products import dsm_heights, dsm_tile, sdf_field
    from geoimplicit.tiling.grid import GridSpec

    box = _box(h=(40.0, 60.0))
    model = SurfaceModel(box, SurfaceConfig(encoding="frequency"))
    with torch.no_grad():  # geometry = the plane z = 52 (local 2) exactly
        model.sdf_net.head.weight.zero_()
        model.sdf_net.head.bias[0] = -2.0 / box.scale
    xy = np.array([[ORIGIN[0], ORIGIN[1]], [ORIGIN[0] + 5, ORIGIN[1] - 7], [ORIGIN[0] + 500, ORIGIN[1]]])
    h = dsm_heights(model, xy)
    np.testing.assert_allclose(h[:2], 52.0, atol=1e-3)
    assert np.isnan(h[2])  # outside the box
    grid = GridSpec.from_bounds((ORIGIN[0] - 30, ORIGIN[1] - 10, ORIGIN[0] + 10, ORIGIN[1] + 10), 2.0)
    height, valid = dsm_tile(model, grid)
    assert height.shape == (10, 20) and valid[:, 5:].all() and not valid[:, :5].any()  # the box starts at -20
    np.testing.assert_allclose(height[valid], 52.0, atol=1e-3)
    field = sdf_field(model)
    assert field.inside == "below" and field.level == 0.0
    p = torch.tensor([[0.0, 0.0, 5.0]])  # 5 m above the origin = 55 m: 3 m above the surface
    torch.testing.assert_close(field(p), torch.tensor([3.0]), atol=1e-3, rtol=0)
