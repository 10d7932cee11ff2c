"""Configuration files: typed sections, unknown keys, wrong types, bad values."""

import pytest
import yaml

from equipot.config import Config, ConfigError, config_from_dict, load_config


def write_yaml(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_and_round_trip(tmp_path):
    config = config_from_dict({})
    assert isinstance(config, Config)
    assert config.training.loss.forces == 100.0
    values = config.to_dict()
    values["model"]["channels"] = 7
    values["training"]["loss"]["stress"] = 2.5
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    again = load_config(str(path))
    assert again.model.channels == 7
    assert again.training.loss.stress == 2.5
    assert again.to_dict() == values


@pytest.mark.parametrize(
    "text, key, suggestion",
    [
        ("training:\n  max_epoch: 3\n", "training.max_epoch", "max_epochs"),
        ("modle:\n  channels: 4\n", "modle", "model"),
        ("data:\n  valid_fracton: 0.2\n", "data.valid_fracton", "valid_fraction"),
        ("training:\n  loss:\n    force: 10\n", "training.loss.force", "forces"),
    ],
)
def test_unknown_key_names_key_file_and_closest(tmp_path, text, key, suggestion):
    path = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert path in message
    assert repr(key) in message
    assert f"did you mean {suggestion!r}" in message


def test_unknown_key_without_close_match_lists_known_keys(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", "training:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert path in message and "'training.learning_rate'" in message
    assert "lr" in message.split("known keys:")[1].replace(" ", "").split(",")


@pytest.mark.parametrize(
    "text, path_in_message",
    [
        ("training:\n  batch_size: five\n", "training.batch_size"),
        ("training:\n  max_epochs: 2.5\n", "training.max_epochs"),
        ("training:\n  max_epochs: true\n", "training.max_epochs"),  # bool is not an int
        ("model:\n  channels: [4]\n", "model.channels"),
        ("model:\n  radial_hidden: [8, x]\n", "model.radial_hidden[1]"),
        ("data:\n  valid: [one.xyz]\n", "data.valid"),
        ("data:\n  keys: {energy: 5}\n", "data.keys.energy"),
        ("training:\n  lr: fast\n", "training.lr"),
        ("seed: 1.5\n", "seed"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path, text, path_in_message):
    path = write_yaml(tmp_path / "typed.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert path in message
    assert path_in_message in message
    assert "wrong type" in message


def test_section_must_be_a_mapping(tmp_path):
    path = write_yaml(tmp_path / "m.yaml", "model: 5\n")
    with pytest.raises(ConfigError, match="model must be a mapping"):
        load_config(path)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as the string "1e-3"; the config must still accept it.
    path = write_yaml(tmp_path / "lr.yaml", "training:\n  lr: 1e-3\n  max_minutes: 5e-1\n")
    config = load_config(path)
    assert config.training.lr == pytest.approx(1e-3)
    assert config.training.max_minutes == pytest.approx(0.5)


def test_ints_become_floats_and_optional_none():
    config = config_from_dict({"training": {"lr": 1, "max_minutes": None, "ema_decay": None},
                               "model": {"r_max": 4}})
    assert isinstance(config.training.lr, float) and config.training.lr == 1.0
    assert isinstance(config.model.r_max, float)
    assert config.training.ema_decay is None


def test_e0s_mapping_or_string():
    assert config_from_dict({"data": {"e0s": {"H": -13.6, "O": -2000}}}).data.e0s == {"H": -13.6, "O": -2000.0}
    assert config_from_dict({"data": {"e0s": "atoms.xyz"}}).data.e0s == "atoms.xyz"
    with pytest.raises(ConfigError, match="data.e0s"):
        config_from_dict({"data": {"e0s": 5}})


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"training": {"dtype": "float16"}}, "training.dtype"),
        ({"model": {"lmax": 5}}, "model.lmax"),
        ({"model": {"r_max": 0.0}}, "model.r_max"),
        ({"model": {"sh_lmax": 7}}, "model.sh_lmax"),
        ({"model": {"parity": "odd"}}, "model.parity"),
        ({"training": {"scheduler": "step"}}, "training.scheduler"),
        ({"training": {"lr": -1.0}}, "training.lr"),
        ({"data": {"valid_fraction": 1.5}}, "data.valid_fraction"),
        ({"data": {"keys": {"energy": "E", "charges": "q"}}}, "data.keys"),
    ],
)
def test_invalid_values(values, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict(values, "my.yaml")
    assert fragment in str(err.value)
    assert "my.yaml" in str(err.value)


def test_valid_file_replaces_valid_fraction():
    config = config_from_dict({"data": {"valid": "v.xyz", "valid_fraction": 0.0}})
    assert config.data.valid == "v.xyz"


def test_missing_and_unparsable_files(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_config(missing)
    assert missing in str(err.value)
    broken = write_yaml(tmp_path / "broken.yaml", "training: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(broken)
    assert broken in str(err.value)


def test_shipped_demo_config_is_valid():
    import os

    from equipot.demo import demo_data_dir

    data = demo_data_dir()
    config = load_config(os.path.join(data, "demo.yaml"))
    for name in (config.data.train, config.data.e0s):
        assert os.path.isfile(os.path.join(data, name)), name
    assert config.model.lmax == 1 and config.training.max_epochs > 0
