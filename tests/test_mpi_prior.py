"""The across-scene MPI prior: surface -> MPI (analytic), plane-sweep features (known ground height), tiled
inference, weights (weights_only, clean errors), training (learns, resumes, reuses its scenes), the fit started
from it, the fit presets and the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tests.conftest import assert_clean_error

from geoimplicit.errors import ConfigError, WeightsError
from geoimplicit.geometry import camera_tensors
from geoimplicit.mpi.composite import render_mpi
from geoimplicit.mpi.demo import look_at_camera
from geoimplicit.mpi.planes import geo_planes

ORIGIN = np.array([770000.0, 6277000.0, 50.0])
TINY = {"arch": {"sweep_planes": 8, "feature_channels": 2, "width": 4, "refine_width": 4},
        "scene": {"size_m": [40.0, 44.0], "views": [5, 5], "image_px": [40], "supersample": 1},
        "scenes": 2, "val_scenes": 1, "workers": 0, "steps": 4, "log_every": 2, "targets": 2, "max_texture": 64,
        "checkpoint_seconds": 0, "sources": [2, 3]}


def _cam(offset=(0.0, 0.0), size=32, alt=100.0, f=40.0):
    c = ORIGIN + np.array([offset[0], offset[1], alt])
    return look_at_camera(c, ORIGIN + np.array([0.0, 0.0, 0.0]), f, size, size, (80.0, 120.0))


# ------------------------------------------------------------------------------------------- surface -> MPI
def test_surface_between_planes_renders_at_its_height():
    from geoimplicit.mpi.prior.surface import surface_alpha, surface_mpi, surface_weights

    planes = geo_planes((-20, -20, 20, 20), 1.0, 0.0, 10.0, 6)  # heights 10, 8, 6, 4, 2, 0
    height = torch.full((40, 40), 5.0)
    height[:, 20:] = 8.0  # exactly on a plane
    w = surface_weights(planes.values, height)
    torch.testing.assert_close(w.sum(0), torch.ones(40, 40))
    assert torch.allclose(w[2, 0, 0], torch.tensor(0.5)) and torch.allclose(w[1, 0, 30], torch.tensor(1.0))
    alpha = surface_alpha(planes.values, height)
    assert float(alpha[:2, :, :20].max()) == 0.0  # nothing above the surface
    colour = torch.rand(3, 40, 40)
    mpi = surface_mpi(planes, height, colour)
    cam = look_at_camera(ORIGIN + [0, 0, 100.0], ORIGIN, 100.0, 32, 32, (80.0, 120.0))  # 30 m wide at 95 m
    out = render_mpi(mpi, planes.A, camera_tensors(cam, ORIGIN))
    # camera 100 m above local height 0: depth 95 m on the left half (height 5), 92 m on the right (8)
    depth = out["depth"].numpy()
    np.testing.assert_allclose(depth[:, 4:12], 95.0, atol=0.6)
    np.testing.assert_allclose(depth[:, 20:28], 92.0, atol=0.6)
    assert float(out["opacity"].min()) > 0.99


def test_fit_start_from_surface_matches_its_alphas():
    from geoimplicit.mpi.model import DirectMPI
    from geoimplicit.mpi.prior.surface import init_from_surface, plane_gaps

    planes = geo_planes((-8, -8, 8, 8), 1.0, 0.0, 6.0, 4)
    height = torch.linspace(0.5, 5.5, 16)[None].expand(16, -1).contiguous()
    colour = torch.rand(3, 16, 16) * 0.8 + 0.1
    model = DirectMPI(4, 16, 16, 1.0 / planes.spacing)
    init_from_surface(model, planes, height, colour)
    mpi = model()
    gaps = torch.as_tensor(plane_gaps(planes), dtype=torch.float32)[:, None, None]
    alpha = 1 - torch.exp(-mpi[:, 3] * gaps)
    from geoimplicit.mpi.prior.surface import surface_alpha

    torch.testing.assert_close(alpha, surface_alpha(planes.values, height, 0.02, 0.95), atol=1e-4, rtol=0)
    torch.testing.assert_close(mpi[:, :3], colour[None].expand(4, -1, -1, -1).clamp(0.02, 0.98), atol=1e-4, rtol=0)


def test_views_colour_at_the_surface_is_the_views_colour():
    """Views rendered from a coloured surface give that colour back at its height (the fit's colour start from
    the prior), and the fallback where no view sees the texture."""
    from geoimplicit.mpi.prior.surface import surface_mpi, views_colour_at_surface

    planes = geo_planes((-8, -8, 8, 8), 0.5, 0.0, 6.0, 5)  # 32 x 32 texels, heights 6, 4.5, 3, 1.5, 0
    height = torch.full((32, 32), 2.0)
    height[8:20, 10:24] = 4.5  # a roof
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    colour = torch.stack([0.2 + 0.6 * xx, 0.8 - 0.6 * yy, 0.3 + 0.4 * xx * yy])
    mpi = surface_mpi(planes, height, colour)
    cams = [camera_tensors(_cam(o, size=48, f=240.0), ORIGIN) for o in ((0, 0), (12, 0), (0, -12))]
    imgs = [render_mpi(mpi, planes.A, c)["rgb"].detach() for c in cams]
    grey = torch.full_like(colour, 0.5)
    got = views_colour_at_surface(planes, cams, imgs, height, grey)
    inner = (slice(None), slice(4, 28), slice(4, 28))
    assert float((got - colour)[inner].abs().mean()) < 0.02  # the grey fallback is 0.15 away
    # a texture beyond every view's footprint: the fallback
    far = geo_planes((200, 200, 216, 216), 0.5, 0.0, 6.0, 5)
    torch.testing.assert_close(views_colour_at_surface(far, cams, imgs, height, grey), grey)


# ------------------------------------------------------------------------------------------- plane sweep
def test_sweep_features_agree_at_the_ground_height():
    """Two views of a textured plane at local height 3: the colour spread across the views is least on the
    sweep plane at 3 m, and a texel seen by both has share 1 there."""
    from geoimplicit.mpi.prior.network import sweep_features

    ground = geo_planes((-30, -30, 30, 30), 0.5, 3.0, 3.0, 1)
    torch.manual_seed(0)
    tex = torch.nn.functional.interpolate(torch.rand(1, 4, 30, 30), size=(120, 120), mode="bicubic")
    tex[:, 3] = 1e3
    cams = [_cam((-12.0, 0.0), 48, f=200.0), _cam((12.0, 4.0), 48, f=200.0)]  # 0.5 m pixels, 24 m baseline
    imgs = [render_mpi(tex, ground.A, camera_tensors(c, ORIGIN))["rgb"] for c in cams]
    sweep = geo_planes((-10, -10, 10, 10), 0.5, -5.0, 11.0, 9)  # 11, 9, ..., -5 m: 3 m is plane 4
    ctens = [camera_tensors(c, ORIGIN) for c in cams]
    vol, share = sweep_features(sweep, ctens, imgs)
    std = vol[:, 3:6].mean(1)  # colour standard deviation per plane (S, h, w)
    inner = (slice(None), slice(8, 32), slice(8, 32))
    spread = std[inner].mean((1, 2))
    assert int(spread.argmin()) == 4, spread
    assert float(spread[4]) < 0.3 * float(spread[[0, 8]].min())
    assert float(share[4][8:32, 8:32].min()) == 1.0


def test_tiled_prediction_covers_every_texel_once():
    from geoimplicit.mpi.prior.network import PriorArch, PriorNet, predict_tiled, tiles_1d

    for n, tile, overlap in ((10, 16, 4), (100, 40, 8), (97, 33, 5)):
        wins = tiles_1d(n, tile, overlap)
        keep = np.zeros(n, int)
        for s0, s1, k0, k1 in wins:
            assert s0 <= k0 < k1 <= s1 and s1 - s0 <= tile
            keep[k0:k1] += 1
        assert (keep == 1).all()
    torch.manual_seed(0)
    net = PriorNet(PriorArch(sweep_planes=6, feature_channels=2, width=4, refine_width=4)).eval()
    planes = geo_planes((-12, -10, 12, 10), 0.5, -4.0, 8.0, 5)
    cams = [camera_tensors(_cam((-5.0, 0.0), 40), ORIGIN), camera_tensors(_cam((6.0, 3.0), 40), ORIGIN)]
    imgs = [torch.rand(3, 40, 40), torch.rand(3, 40, 40)]
    with torch.no_grad():
        whole = net(planes, cams, imgs)
    one = predict_tiled(net, planes, cams, imgs, tile=64)
    torch.testing.assert_close(one["height"], whole["height"])
    tiled = predict_tiled(net, planes, cams, imgs, tile=24, overlap=6)
    assert tiled["height"].shape == (40, 48)
    assert float(tiled["height"].min()) >= -4.0 - 1e-4 and float(tiled["height"].max()) <= 8.0 + 1e-4


# ------------------------------------------------------------------------------------------- weights
def test_weights_round_trip_and_clean_errors(tmp_path):
    from geoimplicit.mpi.prior.checkpoint import load_prior, load_prior_checkpoint, save_prior
    from geoimplicit.mpi.prior.network import PriorArch, PriorNet

    net = PriorNet(PriorArch(sweep_planes=6, feature_channels=2, width=4, refine_width=4))
    path = save_prior(tmp_path / "p.pt", net, config={"x": 1}, step=3, elapsed_s=1.5)
    blob = torch.load(path, weights_only=True)  # plain types only
    assert blob["format"] == "geoimplicit-mpi-prior" and blob["step"] == 3
    back = load_prior(path)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pt.*cannot read"):
        load_prior(tmp_path / "bad.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a geoimplicit MPI prior"):
        load_prior_checkpoint(tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not found"):
        load_prior(tmp_path / "missing.pt")
    arch = dict(blob["arch"], width=6)
    torch.save(dict(blob, arch=arch), tmp_path / "mismatch.pt")
    with pytest.raises(WeightsError, match="do not fit"):
        load_prior(tmp_path / "mismatch.pt")


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from geoimplicit.mpi.prior.train import PriorTrainConfig, train_prior

    run = tmp_path_factory.mktemp("prior") / "run"
    cfg = PriorTrainConfig.from_dict(TINY)
    summary = train_prior(cfg, run, device="cpu")
    return run, cfg, summary


def test_training_writes_a_resumable_run(trained):
    from geoimplicit.mpi.prior.train import PriorTrainConfig, train_prior

    run, cfg, summary = trained
    assert summary["steps"] == 4 and (run / "model.pt").exists() and (run / "last.pt").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert "val_psnr" in rows[-1] and np.isfinite(rows[-1]["val_height_mae"])
    scene_dirs = sorted((run / "scenes").iterdir())
    assert len(scene_dirs) == 3  # two training scenes, one validation scene
    stamps = {p.name: (p / "truth.npz").stat().st_mtime_ns for p in scene_dirs}
    more = PriorTrainConfig.from_dict({**TINY, "steps": 6})
    resumed = train_prior(more, run, device="cpu", resume=True)
    assert resumed["steps"] == 6  # continued from step 4, not from 0
    assert {p.name: (p / "truth.npz").stat().st_mtime_ns for p in sorted((run / "scenes").iterdir())} == stamps
    other = PriorTrainConfig.from_dict({**TINY, "arch": {**TINY["arch"], "width": 6}})
    with pytest.raises(ConfigError, match="another network"):
        train_prior(other, run, device="cpu", resume=True)


def test_training_warm_starts_from_weights(trained, tmp_path):
    """``init``: a new run starts from given weights (not from a random network); another network is refused."""
    from geoimplicit.mpi.prior.checkpoint import load_prior_checkpoint
    from geoimplicit.mpi.prior.train import PriorTrainConfig, train_prior

    run, _, _ = trained
    cfg = PriorTrainConfig.from_dict({**TINY, "steps": 0, "val_scenes": 0, "scenes": 1})
    out = train_prior(cfg, tmp_path / "warm", device="cpu", init=run / "model.pt")
    got, want = load_prior_checkpoint(out["model"])["model"], load_prior_checkpoint(run / "model.pt")["model"]
    assert out["steps"] == 0 and all(torch.equal(got[k], want[k]) for k in want)
    cold = load_prior_checkpoint(train_prior(cfg, tmp_path / "cold", device="cpu")["model"])["model"]
    assert not all(torch.equal(cold[k], want[k]) for k in want)
    other = PriorTrainConfig.from_dict({**TINY, "steps": 0, "arch": {**TINY["arch"], "width": 6}})
    with pytest.raises(WeightsError, match="another network"):
        train_prior(other, tmp_path / "other", device="cpu", init=run / "model.pt")


def test_training_learns_heights():
    """Repeating one example, the height loss through the whole network (features, sweep, cost U-Net,
    refinement) must fall: the gradients reach every part."""
    from geoimplicit.mpi.prior.data import load_scene, render_scene, scene_spec
    from geoimplicit.mpi.prior.network import PriorNet
    from geoimplicit.mpi.prior.train import PriorTrainConfig, _example, _losses

    cfg = PriorTrainConfig.from_dict({**TINY, "height_weight": 1.0})
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = render_scene(scene_spec(5, cfg.scene), os.path.join(tmp, "s"))
        scene = load_scene(folder, torch.device("cpu"))
    torch.manual_seed(0)
    net = PriorNet(cfg.arch)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    example = _example(scene, cfg, np.random.default_rng(1), torch.device("cpu"))
    maes = []
    for _ in range(20):
        out = _losses(net, scene, example, cfg, False, torch.device("cpu"))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        maes.append(float(out["height_mae"]))
    assert min(maes[8:]) < 0.8 * maes[0], maes


def test_train_config_errors(tmp_path):
    from geoimplicit.mpi.prior.train import load_train_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: {sweep_planes: 8}\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*learning_rate"):
        load_train_config(bad)
    bad.write_text("scene: {size: [1, 2]}\n")
    with pytest.raises(ConfigError, match="unknown scene settings: size"):
        load_train_config(bad)
    shipped = load_train_config(os.path.join(os.path.dirname(__file__), "..", "geoimplicit", "configs",
                                             "mpi_prior_cpu.yaml"))
    assert shipped.arch.width == 8 and shipped.lr == 0.001  # inherited from mpi_prior.yaml


# ------------------------------------------------------------------------------------------- the fit
@pytest.fixture(scope="module")
def city_views(trained):
    """A generated view set never trained on (seed 77, EPSG:2975 - not a training CRS)."""
    from geoimplicit.synthetic import generate_city, scene_bounds
    from geoimplicit.synthetic.views import render_view_set

    run, _, _ = trained
    city = generate_city(77, bounds=scene_bounds(40, crs="EPSG:2975", resolution=0.5), resolution=0.5,
                         crs="EPSG:2975")
    return render_view_set(city, run.parent / "views", seed=77, n_views=6, size=40, n_track=2, supersample=1), city


def test_fit_starts_from_the_prior(trained, city_views, tmp_path):
    """With no steps the fitted MPI is the prior's surface: its planes at the surface heights' quantiles, and
    along every texel the first nearly opaque plane within one plane gap of the prior's height."""
    from geoimplicit.io.cameras import ViewSet
    from geoimplicit.mpi.fit import FitConfig, fit_mpi, scene_geometry
    from geoimplicit.mpi.prior import predict_surface
    from geoimplicit.mpi.prior.surface import plane_gaps, planes_at_surface, views_colour_at_surface
    from geoimplicit.mpi.scene import MPIScene

    run, _, _ = trained
    views, _ = city_views
    cfg = FitConfig(layout="geo", planes=8, steps=0, colour_share=0.8, prior=str(run / "model.pt"), device="cpu")
    fit_mpi(views, tmp_path / "m", cfg)
    scene = MPIScene.load(tmp_path / "m")
    vs = ViewSet.load(views)
    planes0 = scene_geometry(vs, cfg, vs.train_ids)
    cams = [camera_tensors(vs.cameras[i], planes0.origin) for i in vs.train_ids]
    imgs = [torch.from_numpy(vs.read_image(i)).permute(2, 0, 1) for i in vs.train_ids]
    surf = predict_surface(run / "model.pt", planes0, cams, imgs)
    expected = planes_at_surface(planes0, surf["height"], cfg.adaptive_mix, surf["seen"])
    np.testing.assert_allclose(scene.planes.values, expected.values, atol=1e-6)
    assert not np.allclose(expected.values, planes0.values)  # moved from the uniform heights
    with torch.no_grad():
        mpi = scene.model()
    gaps = torch.as_tensor(plane_gaps(scene.planes), dtype=torch.float32)[:, None, None]
    alpha = 1 - torch.exp(-mpi[:, 3] * gaps)
    first = torch.as_tensor(scene.planes.values, dtype=torch.float32)[(alpha > 0.5).float().argmax(0)]
    assert float((first - surf["height"]).abs().max()) <= float(gaps[:-1].max()) + 1e-3
    # colours: the train views' at the prior's surface (not the network's), on every plane (colour_share baked)
    colour = views_colour_at_surface(scene.planes, cams, imgs, surf["height"]).clamp(0.02, 0.98)
    torch.testing.assert_close(mpi[:, :3], colour[None].expand_as(mpi[:, :3]), atol=2e-3, rtol=0)
    assert float((colour - surf["colour"]).abs().mean()) > 0.01  # the network's colour would fail the check
    with pytest.raises(ConfigError, match="geo layout"):
        fit_mpi(views, tmp_path / "f", FitConfig(layout="fronto", prior=str(run / "model.pt"), device="cpu"))


def test_presets():
    from geoimplicit.mpi.fit import CPU_IMAGE_SIDE, FitConfig, preset_settings

    name, s = preset_settings("auto", "cpu", 384)
    assert name == "cpu" and s["image_scale"] == pytest.approx(CPU_IMAGE_SIDE / 384) and s["layout"] == "geo"
    name, s = preset_settings("best", "cpu", 384)
    assert s == {"layout": "geo", "planes": 96, "extent": "union", "colour_share": 0.8, "steps": 1500}
    assert preset_settings("cpu", "cpu", 100)[1].get("image_scale") is None  # small images stay as they are
    FitConfig(**s).validate()
    with pytest.raises(ConfigError, match="unknown fit preset"):
        preset_settings("fastest", "cpu")


def test_cli_fit_preset_and_prior(trained, city_views, cli, tmp_path):
    run, _, _ = trained
    views, _ = city_views
    r = cli("nvs", "fit", views, "-o", tmp_path / "a", "--steps", "2", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "'cpu' preset" in r.stderr and "planes 24" in r.stderr
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (saved["layout"], saved["planes"], saved["steps"], saved["colour_share"]) == ("geo", 24, 2, 0.8)
    assert saved["prior"] == "none"
    r = cli("nvs", "fit", views, "-o", tmp_path / "b", "--steps", "2", "--planes", "6", "--device", "cpu",
            "--prior", run / "model.pt")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["prior"] == str(run / "model.pt")
    r = cli("nvs", "fit", views, "-o", tmp_path / "c", "--layout", "fronto", "--planes", "4", "--steps", "1",
            "--image-scale", "1", "--device", "cpu", "--prior", run / "model.pt")
    assert_clean_error(r, "geo layout", "--prior none")
    r = cli("nvs", "fit", views, "-o", tmp_path / "d", "--preset", "fast", "--steps", "1", "--planes", "4",
            "--device", "cpu", "--prior", tmp_path / "missing.pt")
    assert_clean_error(r, "missing.pt", "not found")
    assert not (tmp_path / "d" / "model.pt").exists()


def test_cli_default_prior_is_there_or_says_how_to_make_it(city_views, cli, tmp_path):
    from geoimplicit.mpi.prior import DEFAULT_WEIGHTS

    views, _ = city_views
    r = cli("nvs", "fit", views, "-o", tmp_path / "m", "--preset", "cpu", "--steps", "1", "--planes", "4",
            "--device", "cpu", "--prior", "default")
    if DEFAULT_WEIGHTS.exists():
        assert r.exit_code == 0, r.output
    else:
        assert_clean_error(r, "no default MPI prior", "train-prior")


def test_cli_train_prior(cli, tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "steps": 2, "val_scenes": 0, "scenes": 1}))
    export = tmp_path / "w" / "prior.pt"
    r = cli("nvs", "train-prior", cfg, "-o", tmp_path / "run", "--device", "cpu", "--export", export)
    assert r.exit_code == 0, r.output
    assert export.exists() and "steps: 2" in r.stdout
    r = cli("nvs", "train-prior", cfg, "-o", tmp_path / "run_w", "--device", "cpu", "--init", export, "--steps", "1")
    assert r.exit_code == 0 and "steps: 1" in r.stdout, r.output
    r = cli("nvs", "train-prior", cfg, "-o", tmp_path / "run2", "--device", "cpu", "--export", export)
    assert_clean_error(r, "prior.pt", "--overwrite")
    assert not (tmp_path / "run2").exists()  # refused before anything was written
    r = cli("nvs", "train-prior", cfg, "-o", tmp_path / "run", "--device", "cpu")
    assert_clean_error(r, "model.pt", "--resume")
    (tmp_path / "bad.yaml").write_text("steps: [1, 2\n")
    assert_clean_error(cli("nvs", "train-prior", tmp_path / "bad.yaml", "-o", tmp_path / "r3"), "bad.yaml", "YAML")
