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


# ----------------------------------------------------------------------------- the package


def test_every_registry_is_keyed_by_the_configs_names():
    """config holds the names (it imports no registry); each registry must match them."""
    from tsynd_tf import config, distribute, models, synthesis

    assert tuple(synthesis.METHODS) == config.METHODS
    assert models.CLASSIFIERS is config.CLASSIFIERS and distribute.STRATEGIES is config.STRATEGIES
    from tsynd_tf.synthesis.diffusion_model import SIZES  # "auto" resolves to one of them

    assert ("auto", *SIZES) == config.GENERATOR_SIZES
    for name in config.CLASSIFIERS:  # every name builds
        assert models.build_classifier(name, 28, 1, 2, 0.3).output_shape == (None, 2)
    with pytest.raises(ValueError, match="Unknown classifier"):
        models.build_classifier("vit", 28, 1, 2, 0.3)


def test_the_config_loads_no_tensorflow_and_the_package_has_no_import_cycle():
    import subprocess
    import sys

    probe = ("import sys, tsynd_tf.config, tsynd_tf.cli, tsynd_tf.errors\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('tensorflow', 'keras', 'tsynd_tf')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout
    assert "tensorflow" not in loaded and "keras" not in loaded and "tsynd_tf.config" in loaded
    assert import_cycles() == []


def import_cycles() -> list[list[str]]:
    """The package's import cycles: strongly connected groups of modules in the graph of
    every `import` of a tsynd_tf module, deferred (in a function) ones included."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (root / "tsynd_tf").rglob("*.py")}

    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {resolve(a.name) for a in node.names if a.name.startswith("tsynd_tf")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tsynd_tf"):
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                          else resolve(node.module) for a in node.names}
        graph[name] = edges - {name}
    # Tarjan's strongly connected components.
    index, low, stack, cycles = {}, {}, [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles
