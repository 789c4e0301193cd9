"""Config loading: inherit_from relative to the file, deep merge, unknown keys with a suggestion."""

import pytest

from geoimplicit.dsm.occupancy.config import Config, load_config, packaged_config, save_config
from geoimplicit.errors import ConfigError


def test_packaged_configs_load_and_inherit():
    base = load_config(packaged_config("base.yaml"))
    assert base == Config()  # base.yaml spells out the dataclass defaults
    assert load_config(packaged_config("points-only.yaml")).model.variant == "points"
    stereo = load_config(packaged_config("stereo.yaml"))  # stereo -> mono -> base
    assert stereo.model.variant == "stereo"
    default = load_config(packaged_config("default.yaml"))
    assert default.model.image_dropout == 0.3 and default.train.batch_size == 32
    assert default.data.real[0].endswith(".traindata/ign_vienne_rgb/las_with_several_extra_byte_bloc.laz")
    assert "ign_montpellier" not in " ".join(default.data.real)


def test_inherit_relative_to_file_and_deep_merge(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "parent.yaml").write_text("model: {decoder_hidden: 64, decoder_blocks: 3}\ntrain: {lr: 0.01}\n")
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("inherit_from: ../parent.yaml\nmodel: {decoder_blocks: 2}\ndata: {real: [x.laz]}\n")
    cfg = load_config(child)
    assert cfg.model.decoder_hidden == 64 and cfg.model.decoder_blocks == 2 and cfg.train.lr == 0.01
    assert cfg.data.real == [str((tmp_path / "sub" / "x.laz").resolve())]
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_unknown_key_suggests_and_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("inherit_from: " + str(packaged_config("base.yaml")) + "\nmodel: {decoder_hiden: 8}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "bad.yaml" in msg and "model.decoder_hiden" in msg and "did you mean model.decoder_hidden" in msg


@pytest.mark.parametrize("text,fragment", [
    ("model: {variant: sterio}", "did you mean stereo"),
    ("train: {steps: many}", "must be a int"),
    ("inherit_from: missing.yaml", "not found"),
    ("model: [1, 2", "not valid YAML"),
])
def test_bad_configs(tmp_path, text, fragment):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(p)


def test_inherit_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("inherit_from: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit_from: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
