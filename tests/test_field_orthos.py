"""Orthos as they come in the field: relief displacement (non-true orthos), the false-colour infrared (IRC) ortho,
the data.second_images / data.image_lean settings, and the training patches that draw from them."""

import math

import numpy as np
import pytest
from scipy import ndimage

from geoimplicit.dsm.occupancy.config import Config, config_from_dict, load_config, packaged_config
from geoimplicit.dsm.occupancy import data as occ_data
from geoimplicit.dsm.occupancy.data import PatchSampler, synthetic_scene
from geoimplicit.errors import ConfigError
from geoimplicit.synthetic.city import generate_city, scene_bounds
from geoimplicit.synthetic.ortho import relief_displacement, render_irc, render_ortho

# ------------------------------------------------------------------------------------------ relief displacement
RES = 0.5  # CRS units per pixel
GROUND_Z = 100.0  # flat terrain well above 0: the shift must follow the height above the ground, not the DSM
HIGH_ROOF, HIGH_FACADE = (200, 60, 100), (140, 63, 85)  # facade = roof * 0.55 + 30, worked out by hand
LOW_ROOF, LOW_FACADE = (180, 40, 220), (129, 52, 151)


def _ground(shape=(40, 40), seed=0):
    """A textured ground (every pixel its own random colour, none a roof's): any stray shift of it shows."""
    return np.random.default_rng(seed).integers(20, 121, (3,) + shape).astype(np.uint8)


def _block_scene(h=6.0):
    """One flat-roofed block of height ``h`` at rows 15:21, cols 10:16 of a 40 x 40 scene."""
    img = _ground()
    dtm = np.full((40, 40), GROUND_Z)
    dsm = dtm.copy()
    dsm[15:21, 10:16] += h
    img[:, 15:21, 10:16] = np.array(HIGH_ROOF, np.uint8)[:, None, None]
    return img, dsm, dtm


def _paint(img, rows, cols, colour):
    img[:, rows, cols] = np.array(colour, np.uint8)[:, None, None]


@pytest.mark.parametrize("k,shift", [(0.25, 3), (0.2, 2), (0.3, 4)])  # k * 6 / 0.5 = 3, 2.4, 3.6 pixels
def test_block_roof_shifts_east_by_rounded_lean_times_height(k, shift):
    img, dsm, dtm = _block_scene(6.0)
    assert shift == round(k * 6.0 / RES)
    out = relief_displacement(img, dsm, dtm, RES, (k, 0.0))
    expected = img.copy()
    _paint(expected, slice(15, 21), slice(10, 10 + shift), HIGH_FACADE)  # the vacated strip: the facade
    _paint(expected, slice(15, 21), slice(10 + shift, 16 + shift), HIGH_ROOF)  # the roof, moved east
    np.testing.assert_array_equal(out, expected)  # everything else (ground) untouched
    assert out.dtype == np.uint8 and img[0, 15, 10] == HIGH_ROOF[0]  # the input is not modified


@pytest.mark.parametrize("lean,roof,facade", [
    ((0.0, 0.25), (slice(12, 18), slice(10, 16)), (slice(18, 21), slice(10, 16))),  # north: rows decrease
    ((0.0, -0.25), (slice(18, 24), slice(10, 16)), (slice(15, 18), slice(10, 16))),  # south: rows increase
    ((-0.25, 0.0), (slice(15, 21), slice(7, 13)), (slice(15, 21), slice(13, 16))),  # west: columns decrease
    ((0.25, 0.25), (slice(12, 18), slice(13, 19)), None),  # north-east: both at once
])
def test_block_roof_shifts_with_the_lean_direction(lean, roof, facade):
    img, dsm, dtm = _block_scene(6.0)  # 3 pixels per 0.25 of lean
    out = relief_displacement(img, dsm, dtm, RES, lean)
    expected = img.copy()
    if facade is None:  # diagonal: the footprint minus the moved roof
        _paint(expected, slice(15, 21), slice(10, 16), HIGH_FACADE)
    else:
        _paint(expected, *facade, HIGH_FACADE)
    _paint(expected, *roof, HIGH_ROOF)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("lean", [(0.0, 0.0), (0.04, 0.0), (0.0, -0.04)])  # 0 and 0.48 px: below half a pixel
def test_no_lean_or_sub_half_pixel_lean_leaves_the_image_identical(lean):
    img, dsm, dtm = _block_scene(6.0)
    out = relief_displacement(img, dsm, dtm, RES, lean)
    np.testing.assert_array_equal(out, img)
    assert out is not img


@pytest.mark.parametrize("mirror", [False, True])
def test_higher_roof_wins_where_displaced_roofs_overlap(mirror):
    """A stepped block: high part (8) at cols 10:16, low part (4) at cols 16:22. Lean 0.5 east: the high roof
    moves 8 px to 18:24, the low roof 4 px to 20:26; they overlap at 20:24, where the high one must show. The
    mirrored scene leaning west checks the same whatever order the pixels are written in."""
    img = _ground()
    dtm = np.full((40, 40), GROUND_Z)
    dsm = dtm.copy()
    dsm[15:21, 10:16] += 8.0
    dsm[15:21, 16:22] += 4.0
    _paint(img, slice(15, 21), slice(10, 16), HIGH_ROOF)
    _paint(img, slice(15, 21), slice(16, 22), LOW_ROOF)
    expected = img.copy()
    _paint(expected, slice(15, 21), slice(10, 16), HIGH_FACADE)
    _paint(expected, slice(15, 21), slice(16, 18), LOW_FACADE)  # low footprint left bare by both roofs
    _paint(expected, slice(15, 21), slice(18, 24), HIGH_ROOF)
    _paint(expected, slice(15, 21), slice(24, 26), LOW_ROOF)
    lean = (0.5, 0.0)
    if mirror:
        img, dsm, dtm, expected = (np.ascontiguousarray(a[..., ::-1]) for a in (img, dsm, dtm, expected))
        lean = (-0.5, 0.0)
    np.testing.assert_array_equal(relief_displacement(img, dsm, dtm, RES, lean), expected)


# ------------------------------------------------------------------------------------------ IRC ortho
@pytest.fixture(scope="module")
def city():
    return generate_city(3, bounds=scene_bounds(48.0, crs="EPSG:2154"), tree_density=60)


def test_irc_red_green_are_the_rgb_red_green_outside_shadows(city):
    irc = render_irc(city, np.random.default_rng([city.seed, 1]))
    rgb = render_ortho(city, np.random.default_rng([city.seed, 1]))
    assert irc.shape == rgb.shape and irc.dtype == np.uint8
    lit = ~city.shadow
    assert lit.mean() > 0.3 and (~lit).mean() > 0.05
    np.testing.assert_array_equal(irc[1][lit], rgb[0][lit])  # same albedo, same shading
    np.testing.assert_array_equal(irc[2][lit], rgb[1][lit])
    # in cast shadows the RGB is tinted (sky light), the IRC is not: the comparison above has to leave them out
    assert (irc[1][~lit] != rgb[0][~lit]).mean() > 0.5


def test_irc_vegetation_is_bright_in_near_infrared(city):
    irc = render_irc(city, np.random.default_rng([city.seed, 1])).astype(float)
    trees, road = city.classes == 5, city.street == 1
    assert trees.sum() > 200 and road.sum() > 200
    # unlit: tree NIR = 0.5 (52 + 60) + 4 (88 - 52) = 200, asphalt 0.5 (80 + 81.3) = 81: about 2.5 times
    assert irc[0][trees].mean() > 1.7 * irc[0][road].mean()
    assert (irc[0][trees] > irc[1][trees]).all()  # NIR above red in every tree cell (red trees in IRC)


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("key,value", [
    ("second_images", ["sun", "ir"]),
    ("second_images", []),
    ("image_lean", [0.3, 0.1]),
    ("image_lean", [-0.1, 0.2]),
    ("image_lean", [0.1]),
    ("neighbour_fraction", 1.5),
    ("neighbour_fraction", -0.1),
    ("neighbour_radius_m", 0.0),
])
def test_bad_second_images_and_image_lean_raise(key, value):
    with pytest.raises(ConfigError, match=f"data.{key}"):
        config_from_dict({"data": {key: value}})


def test_bad_image_lean_in_a_file_names_key_and_file(tmp_path):
    p = tmp_path / "lean.yaml"
    p.write_text("inherit_from: package:base.yaml\ndata: {image_lean: [0.5, 0.2]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "data.image_lean" in str(e.value) and "lean.yaml" in str(e.value)


def test_good_second_images_and_image_lean_load():
    cfg = config_from_dict({"data": {"second_images": ["irc"], "image_lean": [0.2, 0.2]}})
    assert cfg.data.second_images == ["irc"] and cfg.data.image_lean == [0.2, 0.2]
    cfg = config_from_dict({"data": {"second_images": ["irc", "sun"], "image_lean": [0, 1]}})
    assert cfg.data.image_lean == [0, 1]


def test_default_and_base_second_images_and_image_lean():
    default = load_config(packaged_config("default.yaml"))
    assert default.data.second_images == ["sun", "irc"]
    assert default.data.image_lean == [0.0, 0.3]
    base = load_config(packaged_config("base.yaml"))
    assert base.data.second_images == ["sun"] and base.data.image_lean == [0.0, 0.0]
    assert Config().data.second_images == ["sun"] and Config().data.image_lean == [0.0, 0.0]


# ------------------------------------------------------------------------------------------ field images
SEED, SIZE_M, LEAN = 3, 48.0, (0.1, 0.3)


@pytest.fixture(scope="module")
def field_scene():
    return synthetic_scene(SEED, size_m=SIZE_M, n_clouds=0, second_images=("sun", "irc"), image_lean=LEAN)


def test_field_images_true_versions_are_the_scene_images(field_scene):
    s = field_scene
    fi = s.field_images
    assert set(fi) == {"rgb", "sun", "irc"}
    for kind in fi:
        assert len(fi[kind]) == 2  # true and leaning
        for arr, tr in fi[kind]:
            assert tr == s.transform and arr.shape == s.images[0][0].shape and arr.dtype == np.uint8
    np.testing.assert_array_equal(fi["rgb"][0][0], s.images[0][0])
    np.testing.assert_array_equal(fi["sun"][0][0], s.images[1][0])
    # the true IRC is the IRC render of the same city (same materials as its RGB: seed [seed, 1])
    city = generate_city(SEED, bounds=scene_bounds(SIZE_M, crs="EPSG:2154"), crs="EPSG:2154")
    np.testing.assert_array_equal(city.ortho, s.images[0][0])  # the same city indeed
    np.testing.assert_array_equal(fi["irc"][0][0], render_irc(city, np.random.default_rng([SEED, 1])))


def test_field_images_leaning_versions_differ_only_near_raised_cells(field_scene):
    s = field_scene
    res = s.transform.a
    hag = s.surface - s.dtm
    raised = hag > 1e-6
    assert raised.any() and (~raised).mean() > 0.3
    # a raised cell q lands at most reach(q) = lean_max * hag(q) / res + 0.71 (rounding) pixels from itself:
    # the pixels no raised cell can reach (ground, far enough from anything raised) must stay as they are
    reach = np.where(raised, LEAN[1] * hag / res + 0.75, -1.0)
    reachable = raised.copy()
    for j in range(math.ceil(reach.max()) + 1):  # cells with reach in (j, j + 1] cover a disc of radius j + 1
        if (reach > j).any():
            reachable |= ndimage.distance_transform_edt(~(reach > j)) <= j + 1
    assert (~reachable).mean() > 0.05, "the test city has no open ground far from buildings and trees"
    for kind, versions in s.field_images.items():
        true, lean = versions[0][0], versions[1][0]
        changed = (true != lean).any(axis=0)
        assert changed.sum() > 0.1 * raised.sum(), kind  # it does lean (>= 0.1: >= 0.5 px from 2.5 m up)
        assert not changed[~reachable].any(), kind
        assert changed[raised].any() and changed[~raised].any(), kind  # roofs and crowns land on the ground


def test_field_images_empty_with_defaults_one_version_without_lean():
    s = synthetic_scene(SEED, size_m=SIZE_M, n_clouds=0)
    assert s.field_images == {}
    s = synthetic_scene(SEED, size_m=SIZE_M, n_clouds=0, second_images=("sun", "irc"))
    assert set(s.field_images) == {"rgb", "sun", "irc"}
    assert all(len(v) == 1 for v in s.field_images.values())
    np.testing.assert_array_equal(s.field_images["rgb"][0][0], s.images[0][0])
    s = synthetic_scene(SEED, size_m=SIZE_M, n_clouds=0, image_lean=(0.1, 0.3))  # sun only, leaning
    assert set(s.field_images) == {"rgb", "sun"}
    assert all(len(v) == 2 for v in s.field_images.values())


# ------------------------------------------------------------------------------------------ patch sampler
def _is_one_of(item, versions):
    """``item`` (array, transform, is_true_ortho) is exactly one of ``versions`` (the true one first), and its
    flag says whether it is that true one."""
    hits = [i for i, v in enumerate(versions) if item[0] is v[0] and item[1] is v[1]]
    return len(hits) == 1 and item[2] == (hits[0] == 0)


def _sampler(scene, second_images):
    cfg = config_from_dict({"data": {"second_images": second_images, "image_lean": list(LEAN),
                                     "patch_size_m": 16.0, "queries_per_patch": 64}})
    return PatchSampler([scene], [], cfg)


def test_choose_images_irc_only_draws_true_and_leaning(field_scene):
    fi = field_scene.field_images
    sampler = _sampler(field_scene, ["irc"])
    rng = np.random.default_rng(0)
    n = 200
    leaning = np.zeros(2)
    for _ in range(n):
        first, second = sampler.choose_images(field_scene, rng)
        assert _is_one_of(first, fi["rgb"])
        assert _is_one_of(second, fi["irc"])
        leaning += [first[0] is fi["rgb"][1][0], second[0] is fi["irc"][1][0]]
    assert (leaning >= 0.25 * n).all() and (leaning <= 0.75 * n).all(), leaning


def test_choose_images_draws_every_kind_and_scene_images_without_field_images(field_scene):
    fi = field_scene.field_images
    sampler = _sampler(field_scene, ["sun", "irc"])
    rng = np.random.default_rng(1)
    n = 200
    irc = 0
    for _ in range(n):
        second = sampler.choose_images(field_scene, rng)[1]
        assert _is_one_of(second, fi["sun"]) != _is_one_of(second, fi["irc"])
        irc += _is_one_of(second, fi["irc"])
    assert 0.25 * n <= irc <= 0.75 * n
    plain = synthetic_scene(SEED, size_m=SIZE_M, n_clouds=0)  # its own images: true orthos
    chosen = sampler.choose_images(plain, rng)
    same = [(a is pa, t is pt, flag) for (a, t, flag), (pa, pt) in zip(chosen, plain.images)]
    assert same == [(True, True, True)] * 2


def test_training_patches_see_field_images_evaluation_patches_the_true_ones(field_scene, monkeypatch):
    """make_patch feeds the chosen orthos (training) or the scene's own (not training) to the image channels."""
    fi = field_scene.field_images
    fed = []
    real_resample = occ_data.resample_image_to_frame

    def spy(arr, tr, frame):
        out = real_resample(arr, tr, frame)
        fed.append((arr, out))
        return out

    monkeypatch.setattr(occ_data, "resample_image_to_frame", spy)
    sampler = _sampler(field_scene, ["irc"])
    rng = np.random.default_rng(2)
    for training in (True, False):
        for _ in range(6):
            fed.clear()
            patch = sampler.sample(rng, training=training)
            assert len(fed) == 2  # image_dropout is 0 in the base config
            if training:
                assert any(fed[0][0] is a for a, _ in fi["rgb"]) and any(fed[1][0] is a for a, _ in fi["irc"])
            else:
                assert fed[0][0] is field_scene.images[0][0] and fed[1][0] is field_scene.images[1][0]
            for k in range(2):
                np.testing.assert_array_equal(patch["images"][k], fed[k][1])
            # the flag the model reads: 1 exactly for the true orthos (all of them outside training)
            true_arrays = (fi["rgb"][0][0], fi["irc"][0][0], field_scene.images[1][0])
            expected = [float(any(fed[k][0] is a for a in true_arrays)) for k in range(2)]
            assert patch["true_ortho"].tolist() == expected
            if not training:
                assert expected == [1.0, 1.0]


def test_mono_scenes_lean_their_one_ortho():
    """A mono training scene (no stereo partner) with a lean range gets its RGB true and leaning, and a patch
    gets one of them and no second image."""
    scene = synthetic_scene(SEED, size_m=SIZE_M, n_clouds=0, stereo=False, second_images=("sun", "irc"),
                            image_lean=(0.1, 0.3))
    fi = scene.field_images
    assert set(fi) == {"rgb"} and len(fi["rgb"]) == 2
    assert fi["rgb"][0][0] is scene.images[0][0] and not np.array_equal(fi["rgb"][1][0], scene.images[0][0])
    sampler = _sampler(scene, ["sun", "irc"])
    rng = np.random.default_rng(5)
    for _ in range(20):
        chosen = sampler.choose_images(scene, rng)
        assert len(chosen) == 1 and _is_one_of(chosen[0], fi["rgb"])


# ------------------------------------------------------------------------------------------ neighbour queries
def _step_scene():
    """A 24 m x 24 m scene at 0.5 m: ground at 100 m, a 10 m high block over x in [8, 16) m (all y)."""
    from affine import Affine

    truth = np.full((48, 48), 100.0)
    truth[:, 16:32] = 110.0
    return occ_data.TrainScene("step", truth, Affine(0.5, 0, 0, 0, -0.5, 24.0), 1.0)


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_neighbour_queries_sit_at_the_other_side_of_a_wall_with_their_own_labels(fraction):
    """With ``neighbour_fraction``, near-surface queries within 1 m of the wall also go to the height of the other
    side (ground columns get queries at roof height, roof columns at ground height); labels stay those of the
    query's own column. Without it, every near query is at its own surface."""
    from geoimplicit.dsm.occupancy.normalize import PatchFrame

    scene = _step_scene()
    cfg = config_from_dict({"model": {"variant": "points"},
                            "data": {"patch_size_m": 24.0, "queries_per_patch": 4000, "near_surface_fraction": 1.0,
                                     "neighbour_fraction": fraction, "neighbour_radius_m": 1.0}})
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 24, 3000), rng.uniform(0, 24, 3000)
    z = scene.truth_at(x, y)
    patch = PatchSampler([scene], [], cfg).make_patch(scene, scene.bounds, x, y, z, rng)
    frame = PatchFrame.from_bounds(scene.bounds, PatchFrame.reference_height(z), cell_m=cfg.model.feature_cell_m,
                                   height_scale_m=cfg.model.height_scale_m)
    q = patch["queries"].astype(np.float64)
    qx, qy = q[:, 0] + frame.origin[0], q[:, 1] + frame.origin[1]  # local metres -> CRS (metres here)
    qz = frame.z_from_local(q[:, 2])
    own = scene.truth_at(qx, qy)
    np.testing.assert_array_equal(patch["labels"], (qz < own).astype(np.float32))  # own column's label
    other = 210.0 - own  # the height across the wall (100 m <-> 110 m)
    near_wall = (np.abs(qx - 8.0) < 0.9) | (np.abs(qx - 16.0) < 0.9)
    far = (np.abs(qx - 8.0) > 1.1) & (np.abs(qx - 16.0) > 1.1)
    across = np.abs(qz - other) < 3.0  # at the height of the other side (10 m away from its own)
    assert not across[far].any()  # beyond 1 m of a wall nothing but its own surface
    if fraction == 0:
        assert not across.any()
    else:
        # a neighbour query lands across the wall when its offset crosses it: about a quarter of the near-wall
        # ones for x uniform within 0.9 m of the wall and offsets uniform within 1 m (half of fraction 0.5)
        share = across[near_wall].mean()
        assert 0.08 < share < 0.3, share
        assert (patch["labels"][across & near_wall & (own > 105)] == 1).all()  # roof columns at ground height
        assert (patch["labels"][across & near_wall & (own < 105)] == 0).all()  # ground columns at roof height
