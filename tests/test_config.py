import pytest

from reprlearn.config import ConfigError, config_from_dict, load_config, save_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# reprlearn train c.yaml\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["train.learning_rate=0.01", "data.train_classes=[1, 2]", "model.hidden=[8]"])
    assert cfg.train.epochs == 3 and cfg.train.learning_rate == 0.01
    assert cfg.data.train_classes == [1, 2] and cfg.model.hidden == [8]
    assert cfg.loss.name == "contrastive"


def test_int_is_accepted_for_float():
    assert config_from_dict({"train": {"learning_rate": 1}}).train.learning_rate == 1.0


@pytest.mark.parametrize("raw, message", [
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
    ({"trian": {}}, "unknown section 'trian'"),
    ({"train": {"epochs": "five"}}, "train.epochs must be a int. Received: train.epochs='five'"),
    ({"train": {"epochs": True}}, "train.epochs must be a int"),
    ({"model": {"l2_normalize": "yes"}}, "model.l2_normalize must be a bool"),
    ({"model": {"filters": [32, "x"]}}, r"model.filters\[1\]"),
    ({"data": {"protocol": "random"}}, "data.protocol must be one of"),
    ({"train": {"epochs": 0}}, "train.epochs must be > 0"),
    ({"train": {"examples_per_class": 1}}, "examples_per_class must be >= 2"),
    ({"data": {"validation_fraction": 1.5}}, "validation_fraction"),
    ({"loss": {"name": "am_softmax", "scale": 0}}, "loss.scale must be > 0. Received: loss.scale=0"),
    ({"train": {"strategy": "tpu"}}, "train.strategy must be one of"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision must be one of"),
    ({"loss": {"cross_replica": "yes"}}, "loss.cross_replica must be a bool"),
])
def test_bad_configs_name_the_key_and_value(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(_write(tmp_path), ["epochs=3"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_every_shipped_config_loads_and_starts_with_its_command():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)
        assert path.read_text().startswith("# "), path


def test_saved_config_round_trips(tmp_path):
    cfg = config_from_dict({"train": {"epochs": 2}, "model": {"tower": "mlp"}})
    save_config(cfg, tmp_path / "config.yaml", "reprlearn train x.yaml")
    assert (tmp_path / "config.yaml").read_text().startswith("# reprlearn train x.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def _write(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    return path
