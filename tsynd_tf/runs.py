"""The run-directory contract: every file a training run holds, and its reader/writer.

`train` writes a run directory; `evaluate`, `export`, `experiment`, `report` and `bench`
read it. This is the only module that spells its file names:

  config.json            {"flags": TrainConfig fields, "dataset": DatasetInfo fields,
                         "data_fingerprint": data.fingerprint of the data it trains on}
  subset.json            the labelled training indices (reproducible, auditable subsets)
  split.json             image folders: every file of train/val/test, and the patients that
                         train and validation share (0 for a split carved by patient)
  checkpoints/           tf.train checkpoints of every stage (resume)
  synthetic/round_XX.npz each round's synthetic pool: images, targets, diagnostics
  synthetic/quality.json the pools' quality metrics (FID, KID, precision/recall, label
                         fidelity, diversity; tsynd_tf.reference), per round and in all
  generator.json         the cache record of the generator a method trained or loaded
                         (the weights live in the model cache, tsynd_tf.cache)
  best.weights.h5        the best-on-validation classifier weights so far
  selection.json         which epoch those weights are and its val AUC, written with them
  classifier.keras       the selected MC-dropout classifier, saved when training ends
  classifier_last.keras  the classifier at the end of training (the other view of a method)
  results.json           test/val metrics of both (last/... for the end of training),
                         the selected epoch and counts
  eval_<split>.json      `evaluate`'s metrics and settings for a split
  tensorboard/           summaries (training, generation, hparams)
  train.lock             while a process trains the run: its PID, host and start time (one
                         process per run directory; `RunDir.lock`)

A sweep folder (`SweepDir`) holds runs/<cell>/ run directories, logs/ and results.jsonl.
All JSON is written atomically (fileio): a crash never leaves a torn file under its name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from tsynd_tf.config import TrainConfig
from tsynd_tf.errors import ConfigError, RunDirError
from tsynd_tf.fileio import FILE_MODE, atomic_path, read_json, write_json

# tsynd_tf.data (and with it TensorFlow) is imported where it is used: the report reads run
# directories without TensorFlow.
if TYPE_CHECKING:
    from tsynd_tf import data


log = logging.getLogger(__name__)


class RunDir:
    """Paths and readers/writers of one run directory (nothing is read on construction)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ paths
    config_file = property(lambda self: self.path / "config.json")
    subset_file = property(lambda self: self.path / "subset.json")
    split_file = property(lambda self: self.path / "split.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    synthetic = property(lambda self: self.path / "synthetic")
    best_weights = property(lambda self: self.path / "best.weights.h5")
    selection_file = property(lambda self: self.path / "selection.json")
    classifier_file = property(lambda self: self.path / "classifier.keras")
    last_classifier_file = property(lambda self: self.path / "classifier_last.keras")
    results_file = property(lambda self: self.path / "results.json")
    tensorboard = property(lambda self: self.path / "tensorboard")
    lock_file = property(lambda self: self.path / "train.lock")
    # The cache record of the generator the method trained or loaded (tsynd_tf.cache).
    generator_file = property(lambda self: self.path / "generator.json")
    # The pools' quality metrics (tsynd_tf.reference), per round and for all of them.
    quality_file = property(lambda self: self.synthetic / "quality.json")

    def pool_file(self, round_index: int) -> Path:
        return self.synthetic / f"round_{round_index:02d}.npz"

    def pool_files(self) -> list[Path]:
        return sorted(self.synthetic.glob("round_*.npz"))

    def eval_file(self, split: str) -> Path:
        return self.path / f"eval_{split}.json"

    def worker(self, task_id: int) -> "RunDir":
        """A non-chief worker's own folder inside the run (multi-worker training)."""
        return RunDir(self.path / f"workertemp_{task_id}")

    # ------------------------------------------------------------------ the lock
    @contextlib.contextmanager
    def lock(self):
        """Holds the run directory for this process (created if need be): an exclusive
        flock on train.lock, which names the holder. RunDirError when another process holds
        it. A lock file left by a process that ended without releasing it (kill -9) is
        taken over with a warning. On exit the lock file is removed, and so is the
        directory if this call created it and it is empty then (a failed start leaves
        nothing behind)."""
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        fd = _acquire_lock(self)
        try:
            yield self
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.lock_file)  # before unlocking: a waiter checks the inode
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only when empty

    # ------------------------------------------------------------------ readers/writers
    def read_flags(self) -> dict | None:
        """The recorded training settings, or None when no run was started here."""
        recorded = read_json(self.config_file)
        return None if recorded is None else dict(recorded.get("flags", {}))

    def write_config(self, flags: dict, info: data.DatasetInfo,
                     fingerprint: dict | None = None) -> None:
        """config.json anew; the inputs recorded before (record_input) are kept."""
        config = {"flags": flags, "dataset": dataclasses.asdict(info)}
        if fingerprint is not None:
            config["data_fingerprint"] = fingerprint
        inputs = (read_json(self.config_file) or {}).get("inputs")
        if inputs:
            config["inputs"] = inputs
        write_json(self.config_file, config)

    def record_input(self, name: str, record: dict) -> None:
        """A file a run trains on besides its dataset (--external_pool), known by its content
        ({path, sha256}): recorded in config.json when the run starts; resuming the run
        with other content is refused (RunDirError names both)."""
        config = read_json(self.config_file) or {}
        recorded = config.get("inputs", {}).get(name)
        if recorded is not None and recorded["sha256"] != record["sha256"]:
            raise RunDirError(
                f"{self.path} was trained on --{name}={recorded['path']} (SHA-256 "
                f"{recorded['sha256'][:16]}), but {record['path']} holds other images "
                f"(SHA-256 {record['sha256'][:16]}): pass the file it was trained on to resume "
                "it, or another --output_dir for a new run.")
        config.setdefault("inputs", {})[name] = record
        write_json(self.config_file, config)

    def record_start(self, config, dataset: data.Dataset, fingerprint: dict,
                     labelled: list[int]) -> None:
        """Starting or resuming a run here (config.TrainConfig `config` on `dataset`):
        refuses other settings or other data than the recorded ones (ConfigError,
        DataError, both named), then records the config, the image folder's split and the
        labelled subset."""
        from tsynd_tf import data

        recorded = self.read_flags()
        if recorded is not None:
            config.check_resumable(recorded, self.path)
            data.check_same_data(self.read_fingerprint(), fingerprint, self,
                                 fix="Pass the --data_dir of the data it was trained on to "
                                     "resume it, or another --output_dir for a new run.")
        self.write_config(config.to_dict(), dataset.info, fingerprint)
        if dataset.files:  # an image folder: which file went where, auditable
            files = dataset.files
            self.write_split({
                "group_pattern": config.group_pattern, **files, "shared_train_val_groups":
                sorted(data.shared_groups(files["train"], files["val"], config.group_pattern))})
        self.write_subset({
            "dataset": dataset.info.name, "size": dataset.info.size, "seed": config.seed,
            "train_fraction": config.train_fraction, "train_count": config.train_count,
            "num_train": len(dataset.train), "indices": list(labelled)})

    def read_fingerprint(self) -> dict | None:
        """The recorded data.fingerprint; None for a run recorded before fingerprints."""
        return (read_json(self.config_file) or {}).get("data_fingerprint")

    def read_info(self) -> data.DatasetInfo:
        from tsynd_tf import data

        try:
            recorded = json.loads(self.config_file.read_text())["dataset"]
            return data.DatasetInfo(**{**recorded, "class_names": tuple(recorded["class_names"])})
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise RunDirError(
                f"{self.config_file} is not a run config ({type(e).__name__}: {e}); it holds "
                "'flags' and 'dataset' (name, task, class_names, size, channels).") from e

    def write_subset(self, subset: dict) -> None:
        write_json(self.subset_file, subset)

    def read_subset(self) -> dict | None:
        return read_json(self.subset_file)

    def write_split(self, split: dict) -> None:
        write_json(self.split_file, split)

    def read_split(self) -> dict | None:
        return read_json(self.split_file)

    def save_best_weights(self, classifier, epoch: int, val_auc: float) -> None:
        """The weights first, then the record naming them: a crash between the two leaves
        weights newer than their record, and the resumed run re-trains that epoch and
        writes both again (the checkpoint, saved after both, still points before it)."""
        with atomic_path(self.best_weights, ".weights.h5") as tmp:
            classifier.save_weights(tmp)
        write_json(self.selection_file, {"epoch": int(epoch), "val_auc": float(val_auc)})

    def read_selection(self) -> dict | None:
        return read_json(self.selection_file)

    def save_classifier(self, classifier, last: bool = False) -> None:
        """The selected classifier, or with `last` the one at the end of training."""
        path = self.last_classifier_file if last else self.classifier_file
        with atomic_path(path, ".keras") as tmp:
            classifier.save(tmp)

    def write_generator(self, record: dict) -> None:
        write_json(self.generator_file, record)

    def read_generator(self) -> dict | None:
        return read_json(self.generator_file)

    def write_quality(self, measured: dict) -> None:
        write_json(self.quality_file, measured)

    def read_quality(self) -> dict | None:
        return read_json(self.quality_file)

    def write_results(self, results: dict) -> None:
        write_json(self.results_file, results)

    def read_results(self) -> dict | None:
        return read_json(self.results_file)

    def write_eval(self, split: str, evaluation: dict) -> Path:
        write_json(self.eval_file(split), evaluation)
        return self.eval_file(split)

    def read_eval(self, split: str) -> dict | None:
        return read_json(self.eval_file(split))

    def write_pool(self, round_index: int, **arrays) -> None:
        import numpy as np

        with atomic_path(self.pool_file(round_index), ".npz") as tmp:
            np.savez(tmp, **arrays)

    def read_pool(self, round_index: int) -> dict | None:
        """The pool's arrays, or None when this round has not been generated."""
        import numpy as np

        path = self.pool_file(round_index)
        if not path.exists():
            return None
        with np.load(path) as pool:
            return {key: pool[key] for key in pool.files}


def _acquire_lock(run_dir: RunDir) -> int:
    """An open descriptor of run_dir's lock file, flocked by this process, naming it."""
    import fcntl

    while True:
        fd = os.open(run_dir.lock_file, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunDirError(
                f"{run_dir.path} is in use by {holder or 'another process'} (lock file "
                f"{run_dir.lock_file}): one process trains a run directory at a time. Wait "
                "for it to end or stop it, or pass another --output_dir.") from None
        try:  # the previous holder may have removed the file between open and flock
            if os.fstat(fd).st_ino == os.stat(run_dir.lock_file).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = _lock_holder(fd)
    if stale:
        log.warning("%s names %s, which ended without releasing it; PID %d on %s takes "
                    "the run directory over.", run_dir.lock_file, stale, os.getpid(),
                    socket.gethostname())
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started":
              datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)
    return fd


def _lock_holder(fd: int) -> str | None:
    """'PID 123 on host h (since ...)' from an open lock file; None when it names none."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return f"PID {holder['pid']} on {holder['host']} (since {holder['started']})"
    except (ValueError, TypeError, KeyError):
        return None


class SweepDir:
    """A sweep folder: runs/<cell>/ (run directories), logs/<cell>.log, results.jsonl, and
    cache/, the model cache its cells share (tsynd_tf.cache: each generator trained once)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    results_file = property(lambda self: self.path / "results.jsonl")
    tensorboard = property(lambda self: self.path / "tensorboard")
    cache = property(lambda self: self.path / "cache")
    # When cells' clocks ran disturbed (paused, shared cores): tsynd_tf.report.cost.
    timing_windows = property(lambda self: self.path / "timing_windows.jsonl")

    def run(self, cell: str) -> RunDir:
        return RunDir(self.path / "runs" / cell)

    def log_file(self, cell: str) -> Path:
        return self.path / "logs" / f"{cell}.log"


@dataclasses.dataclass
class Run:
    """A finished run, loaded: its settings, dataset metadata and selected classifier."""
    directory: RunDir
    config: TrainConfig
    info: data.DatasetInfo
    classifier: object  # keras.Model

    def load_dataset(self) -> data.Dataset:
        """The dataset the run was trained on, checked to have the same classes and the
        recorded fingerprint (data.check_same_data)."""
        from tsynd_tf import data

        c = self.config
        dataset = data.load_configured(c)
        if dataset.info.class_names != self.info.class_names:
            raise data.DataError(f"The data found has classes {list(dataset.info.class_names)}"
                                 f" but the run was trained on {list(self.info.class_names)}.")
        where = (f"--data_dir={c.data_dir}" if c.data_dir else
                 "no --data_dir (so $TSYND_DATA_DIR, else ~/.medmnist, is read)")
        data.check_same_data(
            self.directory.read_fingerprint(), data.fingerprint(dataset), self.directory,
            fix=f"{self.directory.config_file} records {where}: put the data the run was "
                "trained on back there, or train a new run on this data.")
        return dataset

    def labelled(self, dataset: data.Dataset) -> data.Split:
        """The labelled training images the classifier was trained on (subset.json)."""
        import numpy as np

        subset = self.directory.read_subset()
        if subset is None or "indices" not in subset:
            raise RunDirError(f"{self.directory.subset_file} is missing or holds no "
                              "'indices': is this a run directory written by train?")
        return dataset.train.subset(np.asarray(subset["indices"], dtype=np.int64))


def load_run(path: str | Path) -> Run:
    import keras

    from tsynd_tf import models  # noqa: F401 - registers MCDropout for load_model

    run_dir = RunDir(path)
    for file in (run_dir.config_file, run_dir.classifier_file):
        if not file.is_file():
            raise RunDirError(f"{file} is missing: is {run_dir} a finished training run? A run "
                              f"directory holds {run_dir.config_file.name} and "
                              f"{run_dir.classifier_file.name}.")
    info = run_dir.read_info()
    try:
        config = TrainConfig.from_dict(run_dir.read_flags() or {})
    except ConfigError as e:
        raise RunDirError(f"{run_dir.config_file}: {e}") from e
    try:
        classifier = keras.saving.load_model(run_dir.classifier_file, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad archive
        raise RunDirError(_unloadable(run_dir, e)) from e
    return Run(run_dir, config, info, classifier)


def _unloadable(run_dir: RunDir, error: Exception) -> str:
    """Why classifier.keras, which exists, did not load, and how to make it again."""
    file = run_dir.classifier_file
    remake = (f"Copy it again, or delete it and {run_dir.results_file.name} and run the same "
              "train command again: the finished run saves it anew from its best weights.")
    if not zipfile.is_zipfile(file):
        return (f"{file} is corrupt: {file.stat().st_size} bytes that are not a Keras archive "
                f"(truncated or empty, e.g. by a full disk or an interrupted copy). {remake}")
    return (f"{file} is a zip archive but not a Keras model that this version loads "
            f"({type(error).__name__}: {error}); it is corrupt or from another Keras. {remake}")
