"""Shared fixtures and helpers. Tests run on the real files in ../shared/data (see its
README); $TSYND_TEST_DATA overrides that folder; it must hold medmnist/ and chest_xray/.

Importable by test modules (`from conftest import ...`):
  TINY_TRAIN_FLAGS, TINY_TRAIN_COUNT  a complete but tiny training run (every stage once)
  run_command(command, ...)           a subprocess with the test environment; checks its exit
  run_module(module, *args, ...)      the same for `python -m module args`
  subprocess_env(**extra)             that environment, for Popen
  reproducible(results)               a results.json dict less what differs between equal runs
Fixtures: medmnist_dir, chest_xray_dir, small_xray_dir, pneumonia, trained_classifier and
write_run_dir (a run directory holding trained_classifier).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(os.environ.get("TSYND_TEST_DATA", REPO.parent / "shared" / "data"))

# Every stage of a TSynD run once (autoencoder, classifier, one generation round of 2 ascent
# steps) on TINY_TRAIN_COUNT labelled PneumoniaMNIST images: ~15 s on 2 cores. A test adds
# or overrides flags after it (absl: the last value of a flag wins).
TINY_TRAIN_COUNT = 32
TINY_TRAIN_FLAGS = [
    "--dataset=pneumoniamnist", f"--train_count={TINY_TRAIN_COUNT}", "--ae_epochs=1",
    "--initial_epochs=1", "--rounds=1", "--epochs_per_round=1", "--ascent_steps=2",
    "--num_samples=4", "--export_dir=", "--verbose=2", "--synthetic_multiple=1",
    "--pool_quality=false",
]


# Generators and reference classifiers that tests train go to a model cache of the session's
# own (tsynd_tf.cache), shared by its tests and subprocesses, never the user's.
os.environ["TSYND_CACHE_DIR"] = tempfile.mkdtemp(prefix="tsynd-test-cache-")
atexit.register(shutil.rmtree, os.environ["TSYND_CACHE_DIR"], ignore_errors=True)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"Test data {path} is missing: the tests use the real MedMNIST files and "
                    "chest X-ray folder; set $TSYND_TEST_DATA to the folder holding "
                    "medmnist/ and chest_xray/.")
    return path


def reproducible(results: dict) -> dict:
    """results.json less the keys that differ between two runs that trained the same: the
    seconds (this session's, per stage, the generator's) and whether the generator came
    from the cache."""
    return {k: v for k, v in results.items() if "seconds" not in k and k != "generator_loaded"}


# ----------------------------------------------------------------------------- subprocesses


def subprocess_env(**extra: str) -> dict:
    """os.environ with TensorFlow's C++ logs quiet and $TSYND_DATA_DIR at the test data,
    updated by `extra`."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
            "TSYND_DATA_DIR": str(TEST_DATA / "medmnist"), **extra}


class Output(str):
    """stdout + stderr of a finished command, with .stdout, .stderr and .returncode."""

    def __new__(cls, done: subprocess.CompletedProcess):
        output = super().__new__(cls, done.stdout + done.stderr)
        output.stdout, output.stderr, output.returncode = done.stdout, done.stderr, done.returncode
        return output


def run_command(command: list, *, succeeds: bool = True, exit_code: int | None = None,
                timeout: float = 600, data_dir: Path | None = None, cwd: Path = REPO,
                env: dict | None = None, **extra_env: str) -> Output:
    """Runs `command` (paths are fine) in `cwd` (the repository) with `env` (default
    subprocess_env(**extra_env)),
    $TSYND_DATA_DIR at `data_dir` if given, and asserts that it succeeded (exit 0), or with
    succeeds=False that it failed, or that it exited with `exit_code`; the assertion message
    holds the end of its output."""
    if data_dir is not None:
        extra_env["TSYND_DATA_DIR"] = str(data_dir)
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env or subprocess_env(**extra_env))
    if exit_code is not None:
        ok, expected = done.returncode == exit_code, exit_code
    else:
        ok, expected = (done.returncode == 0) == succeeds, "0" if succeeds else "not 0"
    assert ok, (f"{command[:4]} exited {done.returncode}, expected {expected}:\n"
                f"{done.stdout[-5000:]}\n{done.stderr[-5000:]}")
    return Output(done)


def run_module(module: str, *args, **kwargs) -> Output:
    """`python -m module args` through run_command (same keywords)."""
    return run_command([sys.executable, "-m", module, *args], **kwargs)


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    return _require(TEST_DATA / "medmnist")


@pytest.fixture(scope="session")
def chest_xray_dir() -> Path:
    return _require(TEST_DATA / "chest_xray")


@pytest.fixture(scope="session")
def small_xray_dir(chest_xray_dir, tmp_path_factory) -> Path:
    """A copy of the first real JPEGs of each class: 20 per class in train, 5 in test."""
    root = tmp_path_factory.mktemp("small_xray")
    for split, n in (("train", 20), ("test", 5)):
        for name in ("NORMAL", "PNEUMONIA"):
            (root / split / name).mkdir(parents=True)
            for src in sorted((chest_xray_dir / split / name).iterdir())[:n]:
                shutil.copy(src, root / split / name / src.name)
    return root


@pytest.fixture(scope="session")
def pneumonia(medmnist_dir):
    from tsynd_tf.data import load_medmnist

    return load_medmnist("pneumoniamnist", 28, str(medmnist_dir), download=False)


# ----------------------------------------------------------------------------- models

TRAINED_IMAGES = 1000  # the first training images of PneumoniaMNIST


@pytest.fixture(scope="session")
def trained_classifier(pneumonia):
    """small_cnn (MC dropout) trained for 2 epochs on the first 1000 PneumoniaMNIST training
    images (a few seconds): test accuracy > 0.7, so attacks and referrals have a real
    classifier to act on. Shared by the session: a test that draws MC samples moves its
    dropout RNG, so tests compare numbers under evaluation.seeded_dropout or pinned states.
    """
    import keras

    from tsynd_tf.data import make_pipeline
    from tsynd_tf.models import build_classifier, recompute_batch_norm_statistics

    keras.utils.set_random_seed(0)
    images = pneumonia.train.images[:TRAINED_IMAGES]
    targets = pneumonia.train.targets[:TRAINED_IMAGES]
    model = build_classifier("small_cnn", 28, 1, pneumonia.info.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(make_pipeline(images, targets, 32, shuffle=True), epochs=2, verbose=0,
              shuffle=False)
    # After 64 steps the BatchNorm moving averages still lag the weights: the inference-mode
    # model would predict one class. Precise BN over the training images, as training does.
    recompute_batch_norm_statistics(model, [images.astype("float32") / 255.0])
    return model


@pytest.fixture(scope="session")
def write_run_dir(trained_classifier, pneumonia, medmnist_dir):
    """write_run_dir(path, **settings) -> runs.RunDir: a finished run of trained_classifier
    (its config, labelled subset and classifier) at `path`, its TrainConfig with `settings`
    changed."""
    from tsynd_tf.config import TrainConfig
    from tsynd_tf.runs import RunDir

    def write(path, **settings) -> RunDir:
        config = TrainConfig(dataset="pneumoniamnist", size=28, data_dir=str(medmnist_dir),
                             train_count=TRAINED_IMAGES, classifier="small_cnn", **settings)
        run_dir = RunDir(path)
        run_dir.write_config(config.to_dict(), pneumonia.info)
        run_dir.write_subset({"dataset": "pneumoniamnist", "size": 28, "seed": config.seed,
                              "train_fraction": config.train_fraction,
                              "train_count": TRAINED_IMAGES, "num_train": len(pneumonia.train),
                              "indices": list(range(TRAINED_IMAGES))})
        run_dir.save_classifier(trained_classifier)
        return run_dir

    return write
