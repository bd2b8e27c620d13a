"""The typed training config: defaults, validation, JSON round-trip, flags made from it."""

import dataclasses
import json

import pytest

from tsynd_tf.config import RESUMABLE, ConfigError, TrainConfig


def test_json_round_trip_gives_an_equal_config():
    config = TrainConfig(method="baseline", seed=3, train_count=50, data_dir="/data")
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.to_dict() == config.to_dict()


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().seed = 1


@pytest.mark.parametrize("values, message", [
    ({"method": "vae"}, "--method must be one of"),
    ({"classifier": "vit"}, "--classifier must be one of"),
    ({"train_fraction": 0.0}, "--train_fraction"),
    ({"batch_size": 1}, "--batch_size must be >= 2"),
    ({"ae_width": 0}, "--ae_width"),
    ({"dataset": "folder", "data_dir": "/x", "size": 30}, None),  # valid: any even size >= 14
    ({"dataset": "folder", "size": 30}, "--dataset=folder needs --data_dir"),
])
def test_validation_names_the_flag(values, message):
    if message is None:
        TrainConfig(**values)
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TrainConfig(**values)


def test_unknown_recorded_setting_is_an_error():
    with pytest.raises(ConfigError, match="unknown training settings"):
        TrainConfig.from_dict({"seed": 0, "no_such_setting": 1})


def test_run_name_and_resumable_settings():
    assert TrainConfig().run_name() == "pneumoniamnist_28_f0.1_tsynd_mi_s0"
    assert TrainConfig(dataset="folder", data_dir="/x/chest", size=64, train_count=9,
                       method="baseline").run_name() == "chest_64_n9_baseline_s0"
    assert RESUMABLE <= {f.name for f in dataclasses.fields(TrainConfig)}
    changed = TrainConfig(seed=1, verbose=0)
    with pytest.raises(ConfigError, match="seed"):
        changed.check_resumable(TrainConfig().to_dict(), "run")
    TrainConfig(verbose=0, strategy="mirrored").check_resumable(TrainConfig().to_dict(), "run")


def test_flags_are_the_config_fields_with_their_defaults():
    from absl import flags

    from tsynd_tf.config import define_flags, from_flags

    flag_values = flags.FlagValues()  # not the global FLAGS other modules' flags share
    define_flags(flag_values)
    flag_values(["train", "--seed=7", "--method=baseline", "--data_dir=/d"])
    for field in dataclasses.fields(TrainConfig):
        flag = flag_values[field.name]
        assert flag.default == field.default
        assert flag.help.endswith(field.metadata["help"])  # enums prefix their choices
    assert from_flags(flag_values) == TrainConfig(seed=7, method="baseline", data_dir="/d")
