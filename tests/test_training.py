"""The training CLI end to end on real PneumoniaMNIST: run, kill, resume, summaries."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN_FLAGS, reproducible, run_module, subprocess_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Small but complete: every stage runs, two generation rounds of 64-image pools.
TINY = [*TINY_TRAIN_FLAGS, "--train_count=64", "--ae_epochs=2", "--initial_epochs=2",
        "--rounds=2", "--epochs_per_round=2", "--synthetic_multiple=2"]


def train(run_dir, medmnist_dir, *extra, wait=True):
    args = [f"--data_dir={medmnist_dir}", f"--output_dir={run_dir}", *TINY, *extra]
    if not wait:
        return subprocess.Popen([sys.executable, "-m", "tsynd_tf.train", *args],
                                env=subprocess_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return run_module("tsynd_tf.train", *args)


def own_cache(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, medmnist_dir):
    """The reference run, with a model cache of its own: it trains its autoencoder (and
    writes its summaries) whatever other tests trained."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    output = train(run_dir, medmnist_dir, f"--cache_dir={own_cache(run_dir)}")
    return run_dir, output


def test_run_writes_results_subset_and_pools(uninterrupted):
    run_dir, output = uninterrupted
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["test/acc"] <= 1.0 and 0.0 <= results["test/auc"] <= 1.0
    assert results["num_synthetic"] == 2 * 64 and results["classifier_epochs"] == 6
    subset = json.loads((run_dir / "subset.json").read_text())
    assert len(subset["indices"]) == 64
    assert sorted(p.name for p in (run_dir / "synthetic").iterdir()) == [
        "round_00.npz", "round_01.npz"]
    assert (run_dir / "classifier.keras").is_file()
    assert "test ACC" in output


def test_tensorboard_events_read_back(uninterrupted):
    run_dir, _ = uninterrupted
    events = EventAccumulator(str(run_dir / "tensorboard"),
                              size_guidance={"tensors": 0}).Reload()
    tags = set(events.Tags()["tensors"])
    for tag in ("train/loss", "val/auc", "val/mi", "train/ae_loss", "val/ae_psnr",
                "generation/mi_real", "generation/mi_reconstruction", "generation/mi_synthetic",
                "generation/relative_latent_distance", "test/acc", "test/auc",
                "generation/original_reconstruction_synthetic_difference",
                "pools/round_grid"):
        assert tag in tags, (tag, sorted(tags))
    assert len(events.Tensors("val/auc")) == 6  # one per classifier epoch
    assert len(events.Tensors("generation/mi_synthetic")) == 2  # one per round
    assert len(events.Tensors("pools/round_grid")) == 2


def test_selected_epoch_is_the_first_best_val_auc(uninterrupted):
    """results.json names the epoch whose weights classifier.keras holds (the report reads
    it there): the first epoch whose val AUC beat every earlier one."""
    from tensorboard.util import tensor_util

    run_dir, _ = uninterrupted
    events = EventAccumulator(str(run_dir / "tensorboard"),
                              size_guidance={"tensors": 0}).Reload()
    aucs = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors("val/auc")]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["selected_epoch"] == 1 + aucs.index(max(aucs))
    selection = json.loads((run_dir / "selection.json").read_text())
    assert selection["epoch"] == results["selected_epoch"]
    assert selection["val_auc"] == pytest.approx(max(aucs))


def test_in_process_run_equals_the_command_line_run(uninterrupted, tmp_path, medmnist_dir):
    """A TrainConfig built in Python trains the same run as the flags do."""
    from tsynd_tf import run_parts, training
    from tsynd_tf.config import TrainConfig
    from tsynd_tf.runs import RunDir

    reference, _ = uninterrupted
    config = TrainConfig(train_count=64, ae_epochs=2, initial_epochs=2, rounds=2,
                         epochs_per_round=2, ascent_steps=2, num_samples=4, export_dir="",
                         verbose=0, synthetic_multiple=2, pool_quality=False,
                         data_dir=str(medmnist_dir), output_dir=str(tmp_path))
    results = training.Trainer(run_parts.assemble(config, RunDir(tmp_path))).run()
    expected = json.loads((reference / "results.json").read_text())
    assert reproducible(results) == reproducible(expected)


def _pool_written(run_dir: Path) -> bool:
    return (run_dir / "synthetic" / "round_00.npz").exists()


def _checkpointed(run_dir: Path, number: int) -> bool:
    # The manager's pointer file names the latest checkpoint (one per epoch of any stage).
    state = run_dir / "checkpoints" / "checkpoint"
    return state.exists() and f'model_checkpoint_path: "ckpt-{number}"' in state.read_text()


def _generating_round_0(run_dir: Path) -> bool:
    # After 2 autoencoder + 2 classifier epochs, before round 0's pool is on disk: inside
    # the latent ascent or the pool's measures.
    return _checkpointed(run_dir, 4) and not _pool_written(run_dir)


def _epoch_3_checkpointed(run_dir: Path) -> bool:
    return _checkpointed(run_dir, 5)  # 2 autoencoder + 3 classifier epochs


@pytest.mark.parametrize("killed_when, resumed_at", [
    (_generating_round_0, "classifier epoch 2"),  # the pool is made again, the same
    (_pool_written, "classifier epoch 2"),  # right after round 0's generation
    (_epoch_3_checkpointed, "classifier epoch 3"),  # inside round 0's training stage
])
def test_killed_run_resumes_and_matches_an_uninterrupted_one(uninterrupted, tmp_path,
                                                             medmnist_dir, killed_when,
                                                             resumed_at):
    reference, _ = uninterrupted
    # A model cache of its own: this run trains its autoencoder (2 checkpointed epochs), so
    # checkpoint 5 is classifier epoch 3 whatever other tests cached.
    cache = f"--cache_dir={own_cache(tmp_path)}"
    process = train(tmp_path, medmnist_dir, cache, wait=False)
    deadline = time.time() + 300
    while not killed_when(tmp_path) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed_when(tmp_path), process.communicate()[0]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "results.json").exists()
    first_pool = tmp_path / "synthetic" / "round_00.npz"
    pool_mtime = first_pool.stat().st_mtime_ns if first_pool.exists() else None

    output = train(tmp_path, medmnist_dir, cache)
    assert f"Resumed from {tmp_path}" in output and resumed_at in output
    assert "older tsynd-tf" not in output
    if pool_mtime is not None:
        assert first_pool.stat().st_mtime_ns == pool_mtime  # a finished pool is not redone
    # The same run, bitwise: every metric of the selected classifier and the next pool.
    resumed = json.loads((tmp_path / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert reproducible(resumed) == reproducible(expected)
    # The autoencoder's cost, which the earlier session paid, is still reported.
    generator = json.loads((tmp_path / "generator.json").read_text())
    assert resumed["generator_seconds"] == generator["seconds"] > 0
    for name in ("round_00.npz", "round_01.npz"):
        with np.load(tmp_path / "synthetic" / name) as got, \
                np.load(reference / "synthetic" / name) as want:
            assert sorted(got.files) == sorted(want.files)
            for key in want.files:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}:{key}")
    # A finished run started again redoes nothing: test_red_team checks that, once.


def test_image_folder_run_with_a_relative_data_dir_evaluates_from_elsewhere(
        small_xray_dir, tmp_path):
    """The path users with their own images take: train on a folder given relative to the
    working directory, then evaluate the run from another one."""
    import os
    import shutil

    work = tmp_path / "work"
    shutil.copytree(small_xray_dir, work / "xray")
    env = subprocess_env()
    env.pop("TSYND_DATA_DIR")
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    run_module("tsynd_tf.train", *TINY_TRAIN_FLAGS, "--dataset=folder", "--data_dir=xray",
               "--size=28", "--train_fraction=1.0", "--train_count=0", "--ascent_steps=1",
               "--num_samples=2", "--output_dir=run", cwd=work, env=env)
    flags = json.loads((work / "run" / "config.json").read_text())["flags"]
    assert flags["data_dir"] == str(work / "xray")
    # The split is recorded file by file, carved by patient: no patient on both sides.
    split = json.loads((work / "run" / "split.json").read_text())
    assert split["shared_train_val_groups"] == []
    assert len(split["train"]) + len(split["val"]) == 40 and len(split["test"]) == 10
    assert {Path(f).parts[1] for f in split["val"]} == {"NORMAL", "PNEUMONIA"}
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["num_labelled"] == results["num_synthetic"] == len(split["train"])

    run_module("tsynd_tf.evaluate", f"--run_dir={work / 'run'}", "--gaussian_sigmas=0",
               "--fgsm_epsilons=", "--pgd_epsilons=", cwd=tmp_path, env=env)
    evaluation = json.loads((work / "run" / "eval_test.json").read_text())
    assert evaluation["settings"]["num_examples"] == 10
    assert evaluation["metrics"]["test/acc"] == pytest.approx(results["test/acc"])


def test_resuming_with_other_flags_is_refused(uninterrupted, medmnist_dir):
    run_dir, _ = uninterrupted
    done = run_module("tsynd_tf.train", f"--data_dir={medmnist_dir}",
                      f"--output_dir={run_dir}", *TINY, "--seed=5", exit_code=2, timeout=300)
    assert "other settings" in done.stderr and "seed" in done.stderr


@pytest.mark.parametrize("flags, message", [
    (["--train_fraction=1.5"], "--train_fraction must be in (0, 1]"),
    (["--size=32"], "--size must be one of"),
    (["--num_samples=1"], "--num_samples must be >= 2"),
    (["--synthetic_ratio=1"], "--synthetic_ratio must be a number in (0, 1) or 'proportional'"),
    (["--steps_per_epoch=-1"], "--steps_per_epoch must be >= 0"),
    (["--learning_rate=-1"], "--learning_rate must be > 0"),
    (["--latent_channels=0"], "--latent_channels must be >= 1"),
    (["--dataset=folder", "--data_dir=x", "--size=15"], "even number >= 14"),
    (["--method=vae"], "value should be one of"),
    (["stray_argument"], "unexpected arguments ['stray_argument']"),
])
def test_impossible_flags_fail_before_any_work_with_a_message(flags, message, tmp_path):
    done = run_module("tsynd_tf.train", *flags, f"--output_dir={tmp_path / 'run'}",
                      exit_code=2, timeout=120)
    assert "train: error: " in done.stderr and message in done.stderr
    assert not (tmp_path / "run").exists()  # nothing was written


def test_same_seed_repeats_the_run_exactly_on_cpu(uninterrupted, tmp_path, medmnist_dir):
    """Also with the autoencoder loaded from the model cache that the first run filled."""
    reference, _ = uninterrupted
    train(tmp_path / "run", medmnist_dir, f"--cache_dir={own_cache(reference)}")
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert expected["generator_loaded"] is False and again["generator_loaded"] is True
    assert reproducible(again) == reproducible(expected)
    with np.load(tmp_path / "run" / "synthetic" / "round_01.npz") as got, \
            np.load(reference / "synthetic" / "round_01.npz") as want:
        np.testing.assert_array_equal(got["images"], want["images"])


def test_a_run_recorded_before_a_flag_existed_resumes_while_the_flag_keeps_its_default(
        tmp_path):
    from tsynd_tf.config import ConfigError, TrainConfig

    recorded = {"seed": 0}  # written before 'rendering' existed
    TrainConfig(rendering="decode").check_resumable(recorded, tmp_path)  # the default: fine
    with pytest.raises(ConfigError, match="rendering"):
        TrainConfig(rendering="residual").check_resumable(recorded, tmp_path)
    TrainConfig(verbose=0, data_dir="/elsewhere").check_resumable(recorded, tmp_path)


def test_a_run_recorded_under_the_old_name_synthesis_resumes_as_its_rendering(tmp_path):
    from tsynd_tf.config import ConfigError, TrainConfig

    recorded = {"seed": 0, "synthesis": "residual"}  # the field's name before 'rendering'
    assert TrainConfig.from_dict(recorded).rendering == "residual"
    TrainConfig(rendering="residual").check_resumable(recorded, tmp_path)
    with pytest.raises(ConfigError, match="rendering"):
        TrainConfig(rendering="decode").check_resumable(recorded, tmp_path)


def test_a_checkpoint_without_dropout_seeds_resumes_with_a_warning(uninterrupted, tmp_path,
                                                                   caplog):
    """Checkpoints of older versions (no dropout seed state in them) still resume."""
    import logging

    import tensorflow as tf

    from tsynd_tf import run_parts
    from tsynd_tf.config import TrainConfig
    from tsynd_tf.runs import RunDir

    reference, _ = uninterrupted
    flags = json.loads((reference / "config.json").read_text())["flags"]
    config = TrainConfig.from_dict({**flags, "output_dir": str(tmp_path), "verbose": 0})
    old = run_parts.assemble(config, RunDir(tmp_path))
    progress = old.checkpoint
    progress.classifier_epoch.assign(3)
    progress.best_val_auc.assign(0.75)
    kernel = old.classifier.trainable_variables[0]
    kernel.assign(kernel * 2.0)  # unlike the fresh initialisation of the next run's parts
    old_format = tf.train.Checkpoint(  # what tsynd-tf wrote before it kept dropout seeds
        autoencoder=old.autoencoder, ae_optimizer=old.autoencoder.optimizer,
        classifier=old.classifier, optimizer=old.classifier.optimizer,
        ae_epoch=progress.ae_epoch, classifier_epoch=progress.classifier_epoch,
        best_val_auc=progress.best_val_auc)
    tf.train.CheckpointManager(old_format, tmp_path / "checkpoints", max_to_keep=1).save()

    with caplog.at_level(logging.WARNING, logger="tsynd_tf"):
        resumed = run_parts.assemble(config, RunDir(tmp_path))
    assert "written by an older tsynd-tf, without dropout seeds" in caplog.text
    assert (int(resumed.checkpoint.classifier_epoch) == 3 and
            float(resumed.checkpoint.best_val_auc) == 0.75)
    for want, got in zip(old.classifier.weights, resumed.classifier.weights):
        if "seed_generator_state" not in got.path:
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.path)
