"""Occupancy-field DSM: frame invariance, analytic surface search, training smoke, checkpoints, CLI on sample data."""

import numpy as np
import pytest
import torch

from geoimplicit.dsm.occupancy.config import Config, ModelConfig
from geoimplicit.dsm.occupancy.checkpoint import DEFAULT_WEIGHTS, load_checkpoint, save_checkpoint
from geoimplicit.dsm.occupancy.extract import search_columns
from geoimplicit.dsm.occupancy.model import OccupancyNet
from geoimplicit.dsm.occupancy.normalize import PatchFrame
from geoimplicit.errors import WeightsError


def _patch(shift=(0.0, 0.0, 0.0), metres_per_unit=1.0, seed=0):
    rng = np.random.default_rng(seed)
    n = 3000
    x = rng.uniform(0, 32, n) / metres_per_unit + shift[0]
    y = rng.uniform(0, 32, n) / metres_per_unit + shift[1]
    z = (np.where((x - shift[0]) * metres_per_unit > 16, 12.0, 2.0) + rng.normal(0, 0.1, n)) / metres_per_unit + shift[2]
    bounds = (shift[0], shift[1], shift[0] + 32 / metres_per_unit, shift[1] + 32 / metres_per_unit)
    frame = PatchFrame.from_bounds(bounds, PatchFrame.reference_height(z), metres_per_unit=metres_per_unit)
    qx = rng.uniform(0, 32, 200) / metres_per_unit + shift[0]
    qy = rng.uniform(0, 32, 200) / metres_per_unit + shift[1]
    qz = rng.uniform(0, 15, 200) / metres_per_unit + shift[2]
    return frame.points_to_local(x, y, z), frame.points_to_local(qx, qy, qz), frame


def _logits(model, pts, q, frame):
    with torch.no_grad():
        return model(torch.from_numpy(pts), torch.zeros(len(pts), dtype=torch.int64), 1, frame.shape,
                     torch.from_numpy(q)[None])[0].numpy()


def test_normalisation_invariance_shift_and_feet():
    torch.manual_seed(0)
    model = OccupancyNet(ModelConfig(variant="points", unet_channels=[8, 8], point_features=8, features=8,
                                     decoder_hidden=8, decoder_blocks=2)).eval()
    a = _logits(model, *_patch())
    b = _logits(model, *_patch(shift=(770000.0, 6277000.0, 300.0)))
    np.testing.assert_allclose(a, b, atol=1e-4)
    c = _logits(model, *_patch(shift=(770000.0, 6277000.0, 300.0), metres_per_unit=0.3048))  # the same in feet
    np.testing.assert_allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("coarse,refine", [(16, 10), (8, 14)])
def test_search_on_analytic_box_and_plane(coarse, refine):
    xs = torch.linspace(0, 40, 4001)
    roof = torch.where((xs > 10) & (xs < 20), 115.25, 100.0 + 0.3 * xs)  # a box on a sloping plane
    lo, hi = torch.full_like(xs, 95.0), torch.full_like(xs, 140.0)
    h, found, sat = search_columns(lambda z: (roof[:, None] - z) * 10, lo, hi, coarse_steps=coarse,
                                   refine_steps=refine)
    tol = (140 - 95) / (coarse - 1) / 2**refine
    assert found.all() and not sat.any()
    assert float((h - roof).abs().max()) <= tol + 1e-4
    # an empty column (nothing occupied) is reported, not invented; a full one is flagged
    h2, f2, s2 = search_columns(lambda z: -torch.ones_like(z), lo[:3], hi[:3])
    assert not f2.any()
    h3, f3, s3 = search_columns(lambda z: torch.ones_like(z), lo[:3], hi[:3])
    assert s3.all() and torch.allclose(h3, hi[:3])


def _tiny_cfg():
    cfg = Config()
    cfg.model = ModelConfig(variant="mono", unet_channels=[8, 16], point_features=8, image_features=4, features=8,
                            decoder_hidden=16, decoder_blocks=2)
    cfg.data.patch_size_m = 16.0
    cfg.data.queries_per_patch = 512
    cfg.data.synthetic_size_m = 32.0
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps = 25, 4, 1
    cfg.train.lr, cfg.train.val_every, cfg.train.checkpoint_every = 5e-3, 0, 0
    cfg.infer.tile_size_m, cfg.infer.overlap_m = 16.0, 4.0
    return cfg


def test_training_leaves_no_worker_processes(tmp_path):
    """Batches come from worker processes; they are gone when train() returns (not left to the garbage
    collector, which could run inside the next training's forked workers)."""
    import multiprocessing

    from geoimplicit.dsm.occupancy.data import synthetic_scene
    from geoimplicit.dsm.occupancy.train import train

    cfg = _tiny_cfg()
    cfg.train.steps, cfg.data.workers = 3, 2
    scenes = [synthetic_scene(0, 32.0, stereo=False, n_clouds=1)]
    summary = train(cfg, tmp_path / "run", device="cpu", scenes=scenes, val_scenes=[], real_scenes=[])
    assert summary["steps"] == 3
    assert multiprocessing.active_children() == []


def test_training_lowers_loss_and_checkpoint_round_trip(tmp_path):
    from geoimplicit.dsm.occupancy.data import synthetic_scene
    from geoimplicit.dsm.occupancy.train import train

    cfg = _tiny_cfg()
    scenes = [synthetic_scene(s, 32.0, stereo=False, n_clouds=1) for s in (0, 1)]
    summary = train(cfg, tmp_path / "run", device="cpu", scenes=scenes, val_scenes=[], real_scenes=[])
    assert summary["final_loss"] < summary["first_loss"]
    assert (tmp_path / "run" / "config.yaml").exists()
    ckpt = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert ckpt["format"] == "geoimplicit-occupancy" and ckpt["config"]["model"]["variant"] == "mono"
    assert ckpt["normalization"]["feature_cell_m"] == 0.5
    # round trip: the same logits after reload
    from geoimplicit.dsm.occupancy.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "model.pt"))
    model2 = OccupancyNet(cfg.model)
    save_checkpoint(tmp_path / "again.pt", model, cfg, step=1)
    model2.load_state_dict(torch.load(tmp_path / "again.pt", weights_only=True)["model"])
    pts, q, frame = _patch()
    np.testing.assert_array_equal(_logits(model.eval(), pts, q, frame), _logits(model2.eval(), pts, q, frame))
    # resume continues from the stored step
    cfg.train.steps = 27
    s2 = train(cfg, tmp_path / "run2", device="cpu", scenes=scenes, val_scenes=[], real_scenes=[],
               resume=tmp_path / "run" / "last.pt")
    assert s2["steps"] == 27


def test_bad_weights_are_clean_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pt"):
        load_checkpoint(bad)


def test_default_weights_load_weights_only_and_are_small():
    assert DEFAULT_WEIGHTS.stat().st_size < 5_000_000
    ckpt = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    assert ckpt["config"]["model"]["variant"] == "stereo"
    # made by the recipe the README gives: default.yaml's model and data, trained to its full number of steps
    import dataclasses

    from geoimplicit.dsm.occupancy.config import load_config, packaged_config

    recipe = load_config(packaged_config("default.yaml"))
    assert ckpt["config"]["model"] == dataclasses.asdict(recipe.model)
    data = {k: v for k, v in ckpt["config"]["data"].items() if k != "real"}
    recipe_data = {k: v for k, v in dataclasses.asdict(recipe.data).items() if k != "real"}
    # settings added after these weights were trained keep their old behaviour at their defaults
    newer = {k: v for k, v in recipe_data.items() if k not in data}
    assert newer.get("real_degradations", ["simple"]) == ["simple"] and newer.get("wall_weight", 1.0) == 1.0
    assert data == {k: v for k, v in recipe_data.items() if k not in newer}
    assert ckpt["step"] == recipe.train.steps


def test_cli_default_weights_beat_raster_on_sample(cli, sample_data, tmp_path):
    import rasterio

    city = sample_data / "synthetic_city"
    truth_ds = rasterio.open(city / "truth_dsm.tif")
    truth = truth_ds.read(1).astype(float)
    errors = {}
    occupancy = ["--ortho", city / "ortho.tif", "--true-ortho", "--device", "cpu"]  # the sample ortho is true
    for method, extra in (("occupancy", occupancy), ("raster", [])):
        out = tmp_path / f"{method}.tif"
        r = cli("dsm", "--points", city / "points.laz", "--aoi", city / "aoi.geojson", "--resolution", "0.5",
                "--method", method, "-o", out, *extra)
        assert r.exit_code == 0, r.output
        with rasterio.open(out) as ds:
            assert ds.transform == truth_ds.transform and ds.crs == truth_ds.crs
            pred = ds.read(1).astype(float)
            ok = (pred != ds.nodata) & (truth != truth_ds.nodata)
        assert ok.mean() > 0.95
        errors[method] = np.median(np.abs(pred[ok] - truth[ok]))
    assert errors["occupancy"] < 0.8 * errors["raster"], errors


def test_cli_weights_option_errors(cli, sample_data, tmp_path):
    from tests.conftest import assert_clean_error

    city = sample_data / "synthetic_city"
    r = cli("dsm", "--points", city / "points.laz", "--aoi", city / "aoi.geojson", "--resolution", "0.5",
            "--method", "occupancy", "--weights", tmp_path / "missing.pt", "-o", tmp_path / "o.tif")
    assert_clean_error(r, "missing.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with -m gpu on a GPU machine)")
def test_cpu_fallback_matches_cuda(cli, sample_data, tmp_path):
    """The same DSM on the CPU (float32) and on CUDA (bf16 decode): same nodata mask, heights within
    centimetres except a few building-edge cells where the wall can fall on either side of a cell."""
    import rasterio

    city = sample_data / "synthetic_city"
    with rasterio.open(city / "truth_dsm.tif") as truth:
        bbox = list(truth.bounds)  # --bbox, not --aoi: GPU machines may lack geopandas
    dsms = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.tif"
        r = cli("dsm", "--points", city / "points.laz", "--bbox", *bbox, "--ortho", city / "ortho.tif", "--true-ortho",
                "--resolution", "0.5", "--device", device, "-o", out)
        assert r.exit_code == 0, r.output
        with rasterio.open(out) as ds:
            dsms[device] = ds.read(1, masked=True)
    a, b = dsms["cpu"], dsms["cuda"]
    assert np.array_equal(a.mask, b.mask)
    d = np.abs(a.compressed() - b.compressed())
    assert np.median(d) < 0.02 and np.percentile(d, 99) < 0.25 and np.mean(d > 1.0) < 0.002


def test_lidar_tin_truth_of_a_generated_scene():
    """The survey-TIN truth lies below the scene's surface in tree crowns, where a survey's returns reach down
    through the crown, and is the surface on roofs and streets."""
    from geoimplicit.dsm.occupancy.data import synthetic_scene

    surf = synthetic_scene(3, 48.0, stereo=False, n_clouds=0)
    tin = synthetic_scene(3, 48.0, stereo=False, n_clouds=0, truth="lidar_tin_trees")
    full = synthetic_scene(3, 48.0, stereo=False, n_clouds=0, truth="lidar_tin")
    np.testing.assert_array_equal(surf.truth, tin.surface)
    np.testing.assert_array_equal(tin.truth[~surf.vegetation], surf.truth[~surf.vegetation])
    np.testing.assert_array_equal(full.truth[surf.vegetation], tin.truth[surf.vegetation])
    # the full survey TIN is the surface on roofs and streets: the surface within 1 cm on most non-tree cells
    assert np.mean(np.abs(full.truth - surf.truth)[~surf.vegetation] < 0.01) > 0.6
    trees = surf.vegetation
    assert trees.sum() > 20 and np.isfinite(tin.truth[trees]).all()
    assert np.median(tin.truth[trees] - surf.truth[trees]) < -0.2
    assert (tin.truth[trees] <= surf.truth[trees] + 1e-6).mean() > 0.85


def _images(frame, seed=0):
    """Two random RGB orthos on the frame's grid, as the model takes them (bands + coverage)."""
    rng = np.random.default_rng(seed)
    rgb = rng.random((1, 2, 3) + tuple(frame.shape)).astype(np.float32)
    return torch.from_numpy(np.concatenate([rgb, np.ones((1, 2, 1) + tuple(frame.shape), np.float32)], 2))


@pytest.mark.parametrize("flagged", [False, True])
def test_true_ortho_input_is_read_only_by_models_that_take_it(flagged):
    """A model trained with ``true_ortho_input`` has a fifth image channel that carries the flag: its output
    depends on it, but not when there is no ortho to flag; any other model ignores the flag."""
    torch.manual_seed(0)
    model = OccupancyNet(ModelConfig(variant="stereo", unet_channels=[8, 16], point_features=8, image_features=4,
                                     features=8, decoder_hidden=16, decoder_blocks=2, true_ortho_input=flagged)).eval()
    assert model.images.net[0].in_channels == (5 if flagged else 4)
    pts, q, frame = _patch()
    args = (torch.from_numpy(pts), torch.zeros(len(pts), dtype=torch.int64), 1, frame.shape, torch.from_numpy(q)[None])
    with torch.no_grad():
        for images in (_images(frame), None):
            yes = model(*args, images, torch.ones(1, 2))
            no = model(*args, images, torch.zeros(1, 2))
            unsaid = model(*args, images)
            assert torch.equal(no, unsaid)  # not said = not a true ortho
            assert (not torch.equal(yes, no)) == (flagged and images is not None)
