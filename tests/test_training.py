"""The training CLI end to end on real PneumoniaMNIST: run, kill, resume, summaries."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Small but complete: every stage runs, two generation rounds.
TINY = ["--train_count=64", "--ae_epochs=2", "--initial_epochs=2", "--rounds=2",
        "--epochs_per_round=2", "--ascent_steps=2", "--num_samples=4", "--export_dir=",
        "--verbose=2"]


def train(run_dir, medmnist_dir, *extra, wait=True):
    command = [sys.executable, "-m", "tsynd_tf.train", f"--data_dir={medmnist_dir}",
               f"--output_dir={run_dir}", *TINY, *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, medmnist_dir):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    output = train(run_dir, medmnist_dir)
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
                "generation/original_reconstruction_synthetic_difference"):
        assert tag in tags, (tag, sorted(tags))
    assert len(events.Tensors("val/auc")) == 6  # one per classifier epoch
    assert len(events.Tensors("generation/mi_synthetic")) == 2  # one per round


def _pool_written(run_dir: Path) -> bool:
    return (run_dir / "synthetic" / "round_00.npz").exists()


def _epoch_3_checkpointed(run_dir: Path) -> bool:
    # 2 autoencoder + 3 classifier epochs; the manager's pointer file names the latest one.
    state = run_dir / "checkpoints" / "checkpoint"
    return state.exists() and 'model_checkpoint_path: "ckpt-5"' in state.read_text()


@pytest.mark.parametrize("killed_when, resumed_at", [
    (_pool_written, "classifier epoch 2"),  # right after round 0's generation
    (_epoch_3_checkpointed, "classifier epoch 3"),  # inside round 0's training stage
])
def test_killed_run_resumes_and_matches_an_uninterrupted_one(uninterrupted, tmp_path,
                                                             medmnist_dir, killed_when,
                                                             resumed_at):
    reference, _ = uninterrupted
    process = train(tmp_path, medmnist_dir, wait=False)
    deadline = time.time() + 300
    while not killed_when(tmp_path) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed_when(tmp_path), process.communicate()[0]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "results.json").exists()
    first_pool = tmp_path / "synthetic" / "round_00.npz"
    pool_mtime = first_pool.stat().st_mtime_ns

    output = train(tmp_path, medmnist_dir)
    assert f"Resumed from {tmp_path}" in output and resumed_at in output
    assert "older tsynd-tf" not in output
    assert first_pool.stat().st_mtime_ns == pool_mtime  # the finished pool was not redone
    # The same run, bitwise: every metric of the selected classifier and the next pool.
    resumed = json.loads((tmp_path / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    resumed.pop("seconds_this_session"), expected.pop("seconds_this_session")
    assert resumed == expected
    for name in ("round_00.npz", "round_01.npz"):
        with np.load(tmp_path / "synthetic" / name) as got, \
                np.load(reference / "synthetic" / name) as want:
            assert sorted(got.files) == sorted(want.files)
            for key in want.files:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}:{key}")
    # Running a finished run again trains nothing more.
    train(tmp_path, medmnist_dir)
    assert json.loads((tmp_path / "results.json").read_text())["classifier_epochs"] == 6


def test_image_folder_run_with_a_relative_data_dir_evaluates_from_elsewhere(
        small_xray_dir, tmp_path):
    """The path users with their own images take: train on a folder given relative to the
    working directory, then evaluate the run from another one."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(small_xray_dir, work / "xray")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TSYND_DATA_DIR", None)
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "tsynd_tf.train", "--dataset=folder", "--data_dir=xray",
         "--size=28", "--train_fraction=1.0", "--ae_epochs=1", "--initial_epochs=1",
         "--rounds=1", "--epochs_per_round=1", "--ascent_steps=1", "--num_samples=2",
         "--output_dir=run", "--export_dir=", "--verbose=2"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    flags = json.loads((work / "run" / "config.json").read_text())["flags"]
    assert flags["data_dir"] == str(work / "xray")
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["num_labelled"] == 36 and results["num_synthetic"] == 36  # 40 - 4 val

    done = subprocess.run(
        [sys.executable, "-m", "tsynd_tf.evaluate", f"--run_dir={work / 'run'}",
         "--gaussian_sigmas=0", "--fgsm_epsilons=", "--pgd_epsilons="],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    evaluation = json.loads((work / "run" / "eval_test.json").read_text())
    assert evaluation["settings"]["num_examples"] == 10
    assert evaluation["metrics"]["test/acc"] == pytest.approx(results["test/acc"])


def test_resuming_with_other_flags_is_refused(uninterrupted, medmnist_dir):
    run_dir, _ = uninterrupted
    command = [sys.executable, "-m", "tsynd_tf.train", f"--data_dir={medmnist_dir}",
               f"--output_dir={run_dir}", *TINY, "--seed=5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "other settings" in done.stderr and "seed" in done.stderr


@pytest.mark.parametrize("flag, message", [
    ("--train_fraction=1.5", "--train_fraction must be in (0, 1]"),
    ("--size=32", "--size must be one of"),
    ("--num_samples=1", "--num_samples must be >= 2"),
    ("--synthetic_ratio=1", "--synthetic_ratio must be in (0, 1)"),
    ("--method=gan", "value should be one of"),
])
def test_impossible_flags_fail_with_a_message(flag, message):
    done = subprocess.run([sys.executable, "-m", "tsynd_tf.train", flag],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert message in done.stderr


def test_same_seed_repeats_the_run_exactly_on_cpu(uninterrupted, tmp_path, medmnist_dir):
    reference, _ = uninterrupted
    train(tmp_path, medmnist_dir)
    again = json.loads((tmp_path / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    for key in ("seconds_this_session",):
        again.pop(key), expected.pop(key)
    assert again == expected


def test_a_run_recorded_before_a_flag_existed_resumes_while_the_flag_keeps_its_default(
        tmp_path, pneumonia):
    from tsynd_tf import runs

    defaults = {"seed": 0, "synthesis": "decode"}
    for name in ("kept", "changed"):
        (tmp_path / name).mkdir()
        runs.write_config(tmp_path / name, {"seed": 0}, pneumonia.info)  # no 'synthesis' yet
    runs.write_config(tmp_path / "kept", {"seed": 0, "synthesis": "decode"}, pneumonia.info,
                      defaults)
    with pytest.raises(runs.RunDirError, match="synthesis"):
        runs.write_config(tmp_path / "changed", {"seed": 0, "synthesis": "residual"},
                          pneumonia.info, defaults)


def test_a_checkpoint_without_dropout_seeds_resumes_with_a_warning(uninterrupted, tmp_path,
                                                                   caplog):
    """Checkpoints of older versions (no dropout seed state in them) still resume."""
    import logging
    import types

    import tensorflow as tf

    from tsynd_tf import training

    reference, _ = uninterrupted
    flags = json.loads((reference / "config.json").read_text())["flags"]
    flags.update(output_dir=str(tmp_path), verbose=0)
    config = types.SimpleNamespace(**flags)
    old = training.Trainer(config, flags)
    old.classifier_epoch.assign(3)
    old.best_val_auc.assign(0.75)
    kernel = old.classifier.trainable_variables[0]
    kernel.assign(kernel * 2.0)  # unlike the fresh initialisation of the next Trainer
    old_format = tf.train.Checkpoint(  # what tsynd-tf wrote before it kept dropout seeds
        autoencoder=old.autoencoder, ae_optimizer=old.autoencoder.optimizer,
        classifier=old.classifier, optimizer=old.classifier.optimizer, ae_epoch=old.ae_epoch,
        classifier_epoch=old.classifier_epoch, best_val_auc=old.best_val_auc)
    tf.train.CheckpointManager(old_format, tmp_path / "checkpoints", max_to_keep=1).save()

    with caplog.at_level(logging.WARNING, logger="tsynd_tf"):
        resumed = training.Trainer(config, flags)
    assert "written by an older tsynd-tf, without dropout seeds" in caplog.text
    assert int(resumed.classifier_epoch) == 3 and float(resumed.best_val_auc) == 0.75
    for want, got in zip(old.classifier.weights, resumed.classifier.weights):
        if "seed_generator_state" not in got.path:
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.path)
