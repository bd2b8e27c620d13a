"""Shared fixtures and helpers. Tests run on the real files in ../shared/data (see its
README); $TSYND_TEST_DATA overrides that folder; it must hold medmnist/ and chest_xray/.

Importable by test modules (`from conftest import ...`):
  TINY_TRAIN_FLAGS, TINY_TRAIN_COUNT  a complete but tiny training run (every stage once)
  run_command(command, ...)           a subprocess with the test environment; checks its exit
  run_module(module, *args, ...)      the same for `python -m module args`
  subprocess_env(**extra)             that environment, for Popen
  reproducible(results)               a results.json dict less what differs between equal runs
  count_traces(model)                 how many times fit traced model.train_step
  TINY_SWEEP_CONFIG, TINY_SWEEP_METHODS, TINY_EVAL_ARGS, run_tiny_sweep(config, sweep_dir,
  data_dir)                           the tiny sweep of tiny_sweep, and running it again
Fixtures: medmnist_dir, chest_xray_dir, small_xray_dir, pneumonia, breast, trained_classifier,
write_run_dir (a run directory holding trained_classifier), breast_meter (BreastMNIST's
default quality reference, trained once per session into a cache of its own) and tiny_sweep
(a real tiny sweep, run once per session: read it, copy its results file, never change it).
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


# A sweep of TINY_TRAIN_FLAGS cells (~15 s each) evaluated in seconds: tiny_sweep.
TINY_SWEEP_CONFIG = "\n".join([*TINY_TRAIN_FLAGS, "--rendering=residual"]) + "\n"
TINY_SWEEP_METHODS = ("baseline", "tsynd_mi")
TINY_EVAL_ARGS = ("--gaussian_sigmas=0,0.1 --fgsm_epsilons=0.01 --pgd_epsilons=0.01 "
                  "--pgd_steps=1 --max_examples=64")


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


# ----------------------------------------------------------------------------- tracing


def count_traces(model) -> list:
    """A list that grows by one each time `model.train_step` runs in Python: once per trace
    of the step (a traced step runs as a graph), so after `fit` its length is the number of
    times the step was traced."""
    step = model.train_step
    traces = []
    model.train_step = lambda batch: (traces.append(1), step(batch))[1]
    return traces


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


def run_tiny_sweep(config: Path, sweep_dir: Path, data_dir: Path) -> str:
    """tsynd_tf.experiment of TINY_SWEEP_METHODS x 1 seed on `config`; its output."""
    return run_module("tsynd_tf.experiment", f"--configs={config}",
                      f"--methods={','.join(TINY_SWEEP_METHODS)}", "--num_seeds=1",
                      f"--sweep_dir={sweep_dir}", f"--eval_args={TINY_EVAL_ARGS}",
                      data_dir=data_dir)


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


@pytest.fixture(scope="session")
def breast(medmnist_dir):
    from tsynd_tf.data import load_medmnist

    return load_medmnist("breastmnist", 28, str(medmnist_dir), download=False)


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


@pytest.fixture(scope="session")
def breast_meter(breast, tmp_path_factory):
    """(reference.PoolQuality, its cache_dir): BreastMNIST's default reference, trained into
    an empty model cache of its own when first asked for (its record says loaded False), and
    found there by whatever else measures BreastMNIST with --cache_dir at that folder (the
    guidance scan, a run of test_pool_quality): the ~minute of training happens once."""
    from tsynd_tf import reference

    cache_dir = str(tmp_path_factory.mktemp("breast_reference_cache"))
    return reference.PoolQuality(breast, cache_dir), cache_dir


# ----------------------------------------------------------------------------- workers

# `make test` runs the tests in two pytest-xdist workers, a group at a time (--dist
# loadgroup). A group is a test file, so its module fixtures are made once; files that use
# one of these costly session fixtures are one group, so that fixture is made once too, in
# one worker, instead of in each (about 70 s for tiny_sweep, 90 s for breast_meter).
SHARED_SESSION_FIXTURES = ("tiny_sweep", "breast_meter")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into nodeids
def pytest_collection_modifyitems(items):
    group_of_file = {}
    for item in items:
        shared = [name for name in SHARED_SESSION_FIXTURES if name in item.fixturenames]
        if shared:
            group_of_file.setdefault(item.path, shared[0])
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of_file.get(item.path, str(item.path))))


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest alone does not know it
def pytest_xdist_node_collection_finished(node, ids):
    """Under --dist loadgroup, stops the run when a worker's collection lacks the groups in
    the nodeids that the scheduler groups by (`path::test@group`): the tests would be dealt
    out one by one and every module fixture made in both workers, silently. That happened
    with pytest 9.2.0 (pytest-xdist issue #1386), hence pytest 9.1.1 (BUILD.md)."""
    if node.config.getoption("dist") == "loadgroup" and any("@" not in id_ for id_ in ids):
        pytest.exit("--dist loadgroup: pytest-xdist did not add the tests' groups to their "
                    "nodeids (pytest-xdist issue #1386, pytest >= 9.2): install the pinned "
                    "pytest (make install, requirements.txt) or run with --dist loadfile.",
                    returncode=pytest.ExitCode.USAGE_ERROR)


# ----------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, medmnist_dir) -> dict:
    """{'config', 'sweep_dir', 'log', 'data_dir'}: a real sweep of the TINY_SWEEP_CONFIG
    config (named tiny) x TINY_SWEEP_METHODS x seed 0, run once per session (test_experiment
    and test_pools_figure read it). Tests must not change it: one that writes results lines
    or reports copies its results file to a sweep folder of its own (run_dir is absolute)."""
    root = tmp_path_factory.mktemp("sweep")
    config = root / "tiny.cfg"
    config.write_text(TINY_SWEEP_CONFIG)
    sweep_dir = root / "sweep"
    log = run_tiny_sweep(config, sweep_dir, medmnist_dir)
    return {"config": config, "sweep_dir": sweep_dir, "log": log, "data_dir": medmnist_dir}
