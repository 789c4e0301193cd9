"""View configurations of the synthetic view sets (aerial / oblique) and the plane-sweep density start."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geoimplicit.synthetic import generate_city, scene_bounds
from geoimplicit.synthetic.views import held_out_view_ids, track_cameras, view_cameras


@pytest.fixture(scope="module")
def scene():
    return generate_city(3, bounds=scene_bounds(64.0, crs="EPSG:2154"), building_density=0.3)


def _off_nadir_deg(cam):
    # optical axis in world coordinates = third row of R; nadir = (0, 0, -1)
    return math.degrees(math.acos(max(-1.0, min(1.0, -cam.R[2, 2]))))


def test_aerial_views_stay_in_the_cone_and_test_views_are_interleaved(scene):
    cams = view_cameras(scene, n_views=20, size=32, seed=4, config="aerial", max_off_nadir_deg=25.0)
    off = np.array([_off_nadir_deg(c) for c in cams])
    assert off[0] < 1e-6  # the first view looks straight down
    assert off.max() <= 26.0 + 1.5  # 25 deg + jitter (targets near, not at, the centre)
    test = held_out_view_ids(20, 4, "aerial")
    assert test == [2, 6, 11, 15]
    train = [i for i in range(20) if i not in test]
    # every held-out view is nearer nadir than the outermost train views: inside the train views' span
    assert off[test].max() < off[train].max() - 1.0
    for c in track_cameras(scene, n=8, size=32, config="aerial"):
        assert 9.0 < _off_nadir_deg(c) < 21.0


def test_oblique_configuration_kept(scene):
    cams = view_cameras(scene, n_views=20, size=32, seed=4, config="oblique")
    off = np.array([_off_nadir_deg(c) for c in cams])
    assert off.max() > 40.0  # the 45-degree-elevation ring
    assert held_out_view_ids(20, 4, "oblique") == [7, 11, 15, 19]
    with pytest.raises(ValueError, match="oblique"):
        view_cameras(scene, n_views=4, size=32, config="sideways")


@pytest.mark.parametrize("n", [2, 3, 4, 6, 20])
def test_held_out_ids_never_nadir_nor_duplicated(n):
    ids = held_out_view_ids(n, max(1, n // 5))
    assert ids and 0 not in ids and len(set(ids)) == len(ids) and max(ids) < n


def test_sweep_density_picks_the_most_consistent_plane():
    from geoimplicit.mpi.fit import sweep_density

    D, h, w = 6, 9, 11
    var = torch.full((D, h, w), 0.2)
    var[3, :, :6] = 0.001  # left part: views agree on plane 3
    var[1, :, 6:] = 0.002  # right part: on plane 1
    cnt = torch.full((D, h, w), 4.0)
    cnt[:, 0, 0] = 1.0  # a texel seen once: its window is not fully seen twice -> falls back
    dens = sweep_density(var, cnt, window=1)
    assert torch.all(dens[3, 1:, :6] == 3.0) and torch.all(dens[1, :, 6:] == 3.0)
    assert dens[5, 0, 0] == 3.0  # fallback: the last plane
    assert torch.allclose(dens.sum(0), torch.full((h, w), 3.0 + 0.02 * (D - 1)))


def test_colour_share_bakes_into_the_grids():
    from geoimplicit.mpi.model import DirectMPI

    torch.manual_seed(0)
    m = DirectMPI(5, 17, 13, density_scale=2.0)
    with torch.no_grad():
        for g in m.grids:
            g.normal_()
    m.colour_share = 1.0
    out = m()
    # shared: every plane has the same colour
    assert torch.allclose(out[:, :3], out[:1, :3].expand_as(out[:, :3]), atol=1e-6)
    m.bake_colour_share()
    assert m.colour_share == 0.0
    fresh = DirectMPI(5, 17, 13, density_scale=2.0)
    fresh.load_state_dict(m.state_dict())  # a saved model renders the same without the setting
    assert torch.allclose(fresh(), out, atol=1e-5)


def test_supersampled_view_keeps_the_centre_ray_depth(scene):
    from geoimplicit.synthetic.views import render_view

    cam = view_cameras(scene, n_views=3, size=24, seed=1)[2]
    img1, d1 = render_view(scene, cam)
    img3, d3 = render_view(scene, cam, 3)
    assert img3.shape == img1.shape and img3.dtype == np.uint8
    np.testing.assert_allclose(d3, d1, atol=1e-3)
    # box filtering: the supersampled image is smoother (less pixel-to-pixel variation) than point samples
    def tv(a):
        return np.abs(np.diff(a.astype(float), axis=1)).mean()
    assert tv(img3) < tv(img1)
    with pytest.raises(ValueError, match="odd"):
        render_view(scene, cam, 2)
