"""bench/camera_recovery.py: known perturbations of generated views, and their recovery by the MPI fit's
``refine_cameras`` (the slow test) measured against the true cameras after removing the gauge."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("camera_recovery", ROOT / "bench" / "camera_recovery.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_perturbed_views_move_train_cameras_by_exactly_the_known_amounts(tmp_path):
    from geoimplicit.geometry import camera_errors
    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.synthetic.views import perturbed_view_set

    cr = _bench()
    truth = cr.make_views(7301, tmp_path, 40.0, 24, 5, 1)
    pv = perturbed_view_set(truth, tmp_path / "p", 0.3, 3.0, 7301)
    t, p = ViewSet.load(truth), ViewSet.load(pv)
    err = camera_errors([p.cameras[i] for i in t.train_ids], [t.cameras[i] for i in t.train_ids])
    assert err["max_rotation_deg"] == pytest.approx(0.3, abs=1e-9) and err["mean_centre"] == pytest.approx(3.0)
    for i in t.test_ids:  # held-out cameras stay true
        np.testing.assert_allclose(p.cameras[i].P, t.cameras[i].P, atol=1e-9)


@pytest.mark.slow
def test_refinement_rounds_recover_most_of_a_known_perturbation(tmp_path):
    """0.3 deg / 3 m on 6 train views of 96 px, three rounds of 200 steps: CPU, about a minute. In the bench's
    exploration (seed 7301) the rounds took the reprojection error from 2.00 px after one round to 0.86 px after
    three (of 3.5 px given, aligned)."""
    from geoimplicit.synthetic.views import perturbed_view_set

    cr = _bench()
    truth = cr.make_views(7301, tmp_path, 64.0, 96, 8, 2)
    pv = perturbed_view_set(truth, tmp_path / "p", 0.3, 3.0, 7301)
    row = cr.run_fit("refine_0.3_3", pv, truth, tmp_path / "fits", {**cr.SMALL["fit"], "refine_rounds": 3}, "cpu")
    before, first, after = row["before_aligned"], row["rounds"][0], row["after"]
    assert row["before"]["mean_rotation_deg"] == pytest.approx(0.3) and row["before"]["mean_centre"] == pytest.approx(3.0)
    assert len(row["rounds"]) == 2
    assert after["mean_reprojection_px"] <= 0.35 * before["mean_reprojection_px"], row
    assert after["mean_reprojection_px"] <= 0.6 * first["mean_reprojection_px"], row  # the rounds, not one fit
    assert after["mean_centre"] <= 0.5 * before["mean_centre"], row
    assert after["mean_rotation_deg"] <= 1.1 * before["mean_rotation_deg"], row  # not traded for the centres
