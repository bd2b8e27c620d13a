"""A training run directory: written by `train`, read by `evaluate` and `export`.

  config.json       {"flags": training flag values, "dataset": DatasetInfo fields}
  subset.json       the labelled training indices (reproducible, auditable subsets)
  classifier.keras  the best-on-validation MC-dropout classifier
  results.json      test/val metrics of that classifier
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tsynd_tf import data
from tsynd_tf.fileio import write_json

CONFIG_FILE, CLASSIFIER_FILE = "config.json", "classifier.keras"
SWEEP_RESULTS_FILE = "results.jsonl"  # one JSON line per finished cell of a sweep
# Flags that may change between a run and its resumption: they do not change the result
# (`strategy` says how to train, not what: a checkpoint restores under any strategy).
RESUMABLE_FLAGS = ("output_dir", "data_dir", "export_dir", "verbose", "strategy")


class RunDirError(ValueError):
    """A run directory that lacks a file or holds a malformed one."""


def write_config(run_dir: Path, flags: dict, info: data.DatasetInfo,
                 defaults: dict | None = None) -> None:
    """Records the run's settings; resuming a run with other settings is an error.

    A flag the recorded run does not have (it was added later) counts as unchanged when it
    has its default value in `defaults`: defaults of new flags keep the old behaviour.
    """
    path = Path(run_dir) / CONFIG_FILE
    if path.exists():
        recorded = {**(defaults or {}), **json.loads(path.read_text())["flags"]}
        changed = {k: (recorded.get(k), v) for k, v in flags.items()
                   if k not in RESUMABLE_FLAGS and recorded.get(k) != v}
        if changed:
            raise RunDirError(f"{run_dir} holds a run with other settings {changed} "
                              "(old, new): pass a new --output_dir, or the same flags to resume.")
    write_json(path, {"flags": flags, "dataset": dataclasses.asdict(info)})


@dataclasses.dataclass
class Run:
    directory: Path
    flags: dict
    info: data.DatasetInfo
    classifier: object  # keras.Model

    def load_dataset(self) -> data.Dataset:
        """The dataset the run was trained on, checked to have the same classes."""
        f = self.flags
        dataset = data.load_dataset(f["dataset"], f["size"], f.get("data_dir"),
                                    f.get("channels", 1), f.get("val_fraction", 0.1),
                                    f.get("seed", 0))
        if dataset.info.class_names != self.info.class_names:
            raise data.DataError(f"The data found has classes {list(dataset.info.class_names)}"
                                 f" but the run was trained on {list(self.info.class_names)}.")
        return dataset


def load_run(run_dir: str | Path) -> Run:
    import keras

    from tsynd_tf import models  # noqa: F401 - registers MCDropout for load_model

    run_dir = Path(run_dir).expanduser()
    config_path, classifier_path = run_dir / CONFIG_FILE, run_dir / CLASSIFIER_FILE
    for path in (config_path, classifier_path):
        if not path.is_file():
            raise RunDirError(f"{path} is missing: is {run_dir} a finished training run? A run "
                              f"directory holds {CONFIG_FILE} and {CLASSIFIER_FILE}.")
    try:
        config = json.loads(config_path.read_text())
        info = data.DatasetInfo(**{**config["dataset"],
                                   "class_names": tuple(config["dataset"]["class_names"])})
        flags = dict(config["flags"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{config_path} is not a run config ({type(e).__name__}: {e}); it "
                          "holds 'flags' and 'dataset' (name, task, class_names, size, "
                          "channels).") from e
    try:
        classifier = keras.saving.load_model(classifier_path, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad archive
        raise RunDirError(f"Could not load {classifier_path} ({type(e).__name__}: {e}).") from e
    return Run(run_dir, flags, info, classifier)
