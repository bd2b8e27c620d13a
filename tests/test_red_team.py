"""The reliability issue's cases, each run so that it cannot come back: impossible flags of
every command fail before any work (exit 2, the flag named), one process per run directory,
sweeps that take their cells' processes down with them, finished runs that are not redone,
damaged checkpoints and models, unwritable outputs.

One tiny finished run (with its export) is shared by the module; flag checks run in process
where the command's validation lives in a library (TrainConfig), and as commands where they
fail before TensorFlow is imported (a second or two each).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_TRAIN_FLAGS, reproducible, run_module, subprocess_env

from tsynd_tf import fileio, runs
from tsynd_tf.config import ConfigError, TrainConfig


def train(run_dir, medmnist_dir, *extra, **kwargs):
    return run_module("tsynd_tf.train", *TINY_TRAIN_FLAGS, f"--data_dir={medmnist_dir}",
                      f"--output_dir={run_dir}", *extra, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, medmnist_dir):
    """A tiny finished run and its export: {"run_dir", "saved", "export", "output"}."""
    root = tmp_path_factory.mktemp("red_team")
    run_dir, saved = root / "run", root / "saved"
    output = train(run_dir, medmnist_dir, f"--export_dir={saved}")
    exports = sorted(saved.glob("*/[0-9]*"))
    assert len(exports) == 1 and exports[0].name == "1", exports
    return {"run_dir": run_dir, "saved": saved, "export": exports[0], "output": output}


def copy_run(finished, destination: Path) -> Path:
    shutil.copytree(finished["run_dir"], destination)
    return destination


def usage_error(done, command: str, *fragments: str) -> None:
    """The command failed with the convention's message, naming every fragment."""
    assert done.returncode == 2, done
    assert f"{command}: error: " in done.stderr and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, (fragment, done.stderr)


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A folder this user cannot write in: a read-only one, or for root (who writes
    anywhere) a path inside /proc, where no file can be made."""
    if os.geteuid() == 0:
        return Path("/proc/tsynd-red-team")
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    return folder


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# ----------------------------------------------------------------------------- train flags


@pytest.mark.parametrize("settings, message", [
    ({"steps_per_epoch": -1}, "--steps_per_epoch must be >= 0"),  # 1: hung
    ({"learning_rate": -1.0}, "--learning_rate must be > 0"),  # 2: exited 0
    ({"ae_learning_rate": float("nan")}, "--ae_learning_rate must be a finite number"),
    ({"epsilon": float("inf")}, "--epsilon must be a finite number"),
    ({"latent_channels": 0}, "--latent_channels must be >= 1"),  # 8: Keras ValueError
    ({"ae_width": 0}, "--ae_width must be >= 1"),
    ({"dataset": "folder", "data_dir": "x", "size": 15}, "--size must be an even number"),  # 9
    ({"eval_batch_size": 0}, "--eval_batch_size must be >= 1"),  # 17: named --batch_size
    ({"dataset": "folder", "data_dir": "x", "size": 0}, "--size must be an even number"),  # 18
    ({"dataset": "folder"}, "--dataset=folder needs --data_dir"),
    ({"dataset": "nomnist"}, "--dataset must be a MedMNIST 2D dataset"),
    ({"val_fraction": 0.0}, "--val_fraction must be in (0, 1)"),
    ({"group_pattern": "(person"}, "--group_pattern '(person' is not a regular expression"),
    ({"seed": -1}, "--seed must be in [0, 2**32)"),
    ({"verbose": 3}, "--verbose must be -1, 0, 1 or 2"),
])
def test_impossible_training_settings_name_their_flag_and_value(settings, message):
    with pytest.raises(ConfigError) as raised:
        TrainConfig(**settings)
    assert str(raised.value).startswith(message), str(raised.value)


def test_a_strategy_this_machine_lacks_is_a_usage_error(monkeypatch):  # 10: 'TPU Name'
    from tsynd_tf import distribute

    with pytest.raises(ConfigError, match="--strategy=tpu found no TPU"):
        distribute.make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="--strategy=multi_worker needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")


def test_a_failed_start_leaves_no_run_directory(tmp_path):
    from tsynd_tf import run_parts
    from tsynd_tf.data import DataError

    empty = tmp_path / "images"
    empty.mkdir()
    config = TrainConfig(dataset="folder", data_dir=str(empty), verbose=0)
    with pytest.raises(DataError):
        run_parts.assemble(config, runs.RunDir(tmp_path / "run"), lock=True)
    assert not (tmp_path / "run").exists()


def test_help_texts_name_flagfiles_that_exist():  # --help named a missing flagfile
    named = set()
    for path in [REPO / "README.md", *sorted((REPO / "tsynd_tf").rglob("*.py"))]:
        named |= set(re.findall(r"\bflags/[\w/.-]+?\.cfg\b", path.read_text()))
    assert named, "the docs name no flagfile at all?"
    assert [name for name in sorted(named) if not (REPO / name).is_file()] == []


# ----------------------------------------------------------------------------- one process


def test_the_lock_names_its_holder_refuses_a_second_one_and_goes_away(tmp_path):
    run_dir = runs.RunDir(tmp_path / "run")
    with run_dir.lock():
        holder = json.loads(run_dir.lock_file.read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(runs.RunDirError, match=f"in use by PID {os.getpid()} on"):
            with run_dir.lock():
                pass
    assert not run_dir.path.exists()  # created by the lock, left empty: removed
    run_dir.path.mkdir()
    with run_dir.lock():
        (run_dir.path / "kept").write_text("")
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["kept"]


def test_a_second_train_process_on_a_run_directory_is_refused(finished, tmp_path,
                                                              medmnist_dir):  # 6
    run_dir = runs.RunDir(copy_run(finished, tmp_path / "run"))
    with run_dir.lock():
        done = train(run_dir.path, medmnist_dir, succeeds=False, timeout=300)
    usage_error(done, "train", f"is in use by PID {os.getpid()}", str(run_dir.lock_file))


def test_kill_9_of_a_sweep_takes_its_cells_process_down(tmp_path, medmnist_dir):  # 7
    config = tmp_path / "slow.cfg"
    config.write_text("\n".join([*TINY_TRAIN_FLAGS, "--ae_epochs=1000"]) + "\n")
    sweep_dir = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "tsynd_tf.experiment", f"--configs={config}",
         "--methods=tsynd_mi", "--num_seeds=1", f"--sweep_dir={sweep_dir}"],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock_file = runs.SweepDir(sweep_dir).run("slow_tsynd_mi_s0").lock_file
    child, deadline = None, time.time() + 240
    try:
        while child is None and sweep.poll() is None and time.time() < deadline:
            time.sleep(0.2)
            child = (fileio.read_json(lock_file) or {}).get("pid")
        assert child is not None, f"no cell started (sweep exit {sweep.poll()})"
        sweep.kill()
        sweep.wait()
        deadline = time.time() + 30
        while running(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not running(child), f"the cell's train process {child} outlived its sweep"
    finally:
        sweep.kill()
        if child is not None and running(child):
            os.kill(child, signal.SIGKILL)


def test_sweep_flags_are_checked_before_the_sweep_starts(tmp_path):
    config = tmp_path / "tiny.cfg"
    config.write_text("\n".join(TINY_TRAIN_FLAGS) + "\n")
    sweep_dir = tmp_path / "sweep"
    common = [f"--configs={config}", "--methods=baseline", f"--sweep_dir={sweep_dir}"]
    done = run_module("tsynd_tf.experiment", *common, "--eval_args=--seed='0",
                      succeeds=False)
    usage_error(done, "experiment", "--eval_args=")
    done = run_module("tsynd_tf.experiment", *common, "--train_args=--steps_per_epoch=-1",
                      succeeds=False, timeout=300)
    usage_error(done, "experiment", str(config), "--steps_per_epoch must be >= 0")
    assert not sweep_dir.exists()


# ----------------------------------------------------------------------------- finished runs


def test_running_a_finished_run_again_redoes_nothing_and_reuses_its_export(
        finished, medmnist_dir):  # 5: exported <run>/2, then /3
    run_dir = finished["run_dir"]
    results = (run_dir / "results.json").stat().st_mtime_ns
    output = train(run_dir, medmnist_dir, f"--export_dir={finished['saved']}")
    assert "finished before: nothing is trained or evaluated again" in output
    assert f"SavedModel:    {finished['export']}" in output
    assert sorted(p.name for p in finished["export"].parent.iterdir()) == ["1"]
    assert (run_dir / "results.json").stat().st_mtime_ns == results
    assert not (run_dir / "train.lock").exists()


def xray_folder(chest_xray_dir, root: Path, first: int) -> Path:
    """root/xray: real chest X-rays, 20 train and 5 test images per class from the
    `first`-th file of each class folder on."""
    for split, n in (("train", 20), ("test", 5)):
        for name in ("NORMAL", "PNEUMONIA"):
            (root / "xray" / split / name).mkdir(parents=True)
            for src in sorted((chest_xray_dir / split / name).iterdir())[first:first + n]:
                shutil.copy(src, root / "xray" / split / name / src.name)
    return root / "xray"


def test_other_data_under_a_runs_data_dir_is_refused_with_both_fingerprints(
        chest_xray_dir, tmp_path):  # 3: re-evaluated on the other folder, AUC 0.64 -> 0.597
    """A finished image-folder run, then a folder of the same name and classes with other
    images: resuming from it, and exporting or evaluating once the run's own folder holds
    those images, are refused before any work (exit 2), both fingerprints shown."""
    from tsynd_tf.data import DataError

    trained_on = xray_folder(chest_xray_dir, tmp_path / "a", first=0)
    other = xray_folder(chest_xray_dir, tmp_path / "b", first=20)
    run_dir = tmp_path / "run"
    folder_run = [*TINY_TRAIN_FLAGS, "--dataset=folder", "--size=28", "--train_fraction=1.0",
                  "--train_count=0", "--method=baseline", "--num_samples=2",
                  f"--output_dir={run_dir}"]
    run_module("tsynd_tf.train", *folder_run, f"--data_dir={trained_on}")
    recorded = runs.RunDir(run_dir).read_fingerprint()
    assert recorded["source"] == str(trained_on) and recorded["files"] == 50
    results = (run_dir / "results.json").read_bytes()

    done = run_module("tsynd_tf.train", *folder_run, f"--data_dir={other}", succeeds=False,
                      timeout=300)
    usage_error(done, "train", f"The data at {other} is not the data the run at {run_dir}",
                recorded["sha256"][:16], "Pass the --data_dir of the data it was trained on")
    found = re.search(r"the data found has sha256 (\w{16})", done.stderr).group(1)
    assert found != recorded["sha256"][:16]
    assert (run_dir / "results.json").read_bytes() == results  # not re-evaluated

    shutil.rmtree(trained_on)
    shutil.copytree(other, trained_on)  # the run's own --data_dir now holds other images
    fix = f"records --data_dir={trained_on}: put the data the run was trained on back there"
    done = run_module("tsynd_tf.export", f"--run_dir={run_dir}",
                      f"--export_dir={tmp_path / 'saved'}", succeeds=False, timeout=300)
    usage_error(done, "export", recorded["sha256"][:16], found, fix)
    assert not (tmp_path / "saved").exists()
    # evaluate loads the data the same way (Run.load_dataset), and cli makes a DataError exit 2
    with pytest.raises(DataError, match=recorded["sha256"][:16]) as raised:
        runs.load_run(run_dir).load_dataset()
    assert found in str(raised.value) and fix in str(raised.value)


def test_a_run_recorded_before_fingerprints_resumes_and_records_one(finished, tmp_path,
                                                                    medmnist_dir):
    run_dir = runs.RunDir(copy_run(finished, tmp_path / "run"))
    config = json.loads(run_dir.config_file.read_text())
    fingerprint = config.pop("data_fingerprint")
    assert fingerprint["source"] == str((medmnist_dir / "pneumoniamnist.npz").resolve())
    fileio.write_json(run_dir.config_file, config)
    output = train(run_dir.path, medmnist_dir)
    assert "finished before" in output
    assert run_dir.read_fingerprint() == fingerprint


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(finished, tmp_path,
                                                                  medmnist_dir):  # 11
    """The intact previous checkpoint resumes the run, which ends bitwise as it did; a lock
    file left by a killed process is taken over with a warning."""
    run_dir = copy_run(finished, tmp_path / "run")
    (run_dir / "results.json").unlink()
    newest, previous = sorted((run_dir / "checkpoints").glob("ckpt-*.index"),
                              key=lambda p: -int(p.stem.split("-")[1]))[:2]
    data = next(run_dir.glob(f"checkpoints/{newest.stem}.data-*"))
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    (run_dir / "train.lock").write_text('{"pid": 999999999, "host": "gone", "started": "x"}')
    output = train(run_dir, medmnist_dir)
    assert f"Checkpoint {data}" in output and "is damaged" in output
    assert f"Resumed from {previous.with_suffix('')}" in output
    assert "names PID 999999999 on gone (since x), which ended without releasing it" in output
    resumed = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((finished["run_dir"] / "results.json").read_text())
    assert reproducible(resumed) == reproducible(expected)


def test_no_intact_checkpoint_is_an_error_naming_the_files(finished, tmp_path):
    from tsynd_tf import run_parts

    run_dir = copy_run(finished, tmp_path / "run")
    for index in (run_dir / "checkpoints").glob("ckpt-*.index"):
        index.write_bytes(b"")
    recorded = runs.RunDir(run_dir).read_flags()
    config = TrainConfig.from_dict({**recorded, "output_dir": str(run_dir), "verbose": 0})
    with pytest.raises(runs.RunDirError, match="No checkpoint in .* can be read") as raised:
        run_parts.assemble(config, runs.RunDir(run_dir), lock=True)
    for index in (run_dir / "checkpoints").glob("ckpt-*.index"):
        assert str(index) in str(raised.value)
    assert not (run_dir / "train.lock").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_classifier_is_called_corrupt_not_missing(finished, tmp_path, damage):  # 19
    run_dir = copy_run(finished, tmp_path / "run")
    classifier = run_dir / "classifier.keras"
    content = classifier.read_bytes()
    classifier.write_bytes(b"" if damage == "empty" else content[: len(content) // 2])
    with pytest.raises(runs.RunDirError) as raised:
        runs.load_run(run_dir)
    message = str(raised.value)
    assert f"{classifier} is corrupt" in message, message
    assert "not found" not in message.lower() and "missing" not in message


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("flag, message", [
    ("--num_samples=1", "flag --num_samples=1: 1 is not integer >= 2"),  # 4: MI always 0
    ("--pgd_steps=0", "flag --pgd_steps=0"),  # 12: ZeroDivisionError after the clean metrics
    ("--max_examples=-5", "flag --max_examples=-5"),  # 13: spoke of --train_count
    ("--gaussian_sigmas=0,x", "--gaussian_sigmas must be a comma-separated list"),
])
def test_evaluate_rejects_impossible_flags_before_any_work(finished, flag, message):
    done = run_module("tsynd_tf.evaluate", f"--run_dir={finished['run_dir']}", flag,
                      succeeds=False)
    usage_error(done, "evaluate", message)


def test_evaluate_max_examples_below_the_class_count_names_the_flag(finished):  # 13
    done = run_module("tsynd_tf.evaluate", f"--run_dir={finished['run_dir']}",
                      "--max_examples=1", succeeds=False, timeout=300)
    usage_error(done, "evaluate", "--max_examples must be 0 (the whole split) or at least",
                "got 1")
    assert "train_count" not in done.stderr


def test_a_quick_evaluation_says_that_it_replaces_another(finished, tmp_path):
    run_dir = runs.RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    for name in ("config.json", "classifier.keras"):
        shutil.copy(finished["run_dir"] / name, run_dir.path / name)
    fileio.write_json(run_dir.eval_file("test"), {"settings": {"split": "test",
                                                               "num_examples": 624}})
    output = run_module("tsynd_tf.evaluate", f"--run_dir={run_dir}", "--max_examples=4",
                        "--gaussian_sigmas=0", "--fgsm_epsilons=", "--pgd_epsilons=",
                        timeout=300)
    assert "replacing an evaluation with other settings (num_examples 624 -> 4" in output
    assert run_dir.read_eval("test")["settings"]["num_examples"] == 4


# ----------------------------------------------------------------------------- export, predict


@pytest.mark.parametrize("where", ["unwritable", "under_a_file"])
def test_export_to_a_folder_it_cannot_write_is_a_usage_error(finished, unwritable_dir,
                                                             tmp_path, where):  # 14
    (tmp_path / "file").write_text("")
    target = unwritable_dir / "models" if where == "unwritable" else tmp_path / "file" / "m"
    done = run_module("tsynd_tf.export", f"--run_dir={finished['run_dir']}",
                      f"--export_dir={target}", succeeds=False)
    usage_error(done, "export", "--export_dir: ", "pass a folder you can write")


def test_an_interrupted_exports_temporary_folder_is_removed_later(tmp_path):
    """atomic_directory names its writer; the next export removes what a dead one left."""
    dead = subprocess.Popen(["true"])  # a PID that has ended
    dead.wait()
    with fileio.atomic_directory(tmp_path / "1") as own:
        (own / "saved_model.pb").write_text("")
        abandoned = tmp_path / own.name.replace(f".tmp.{os.getpid()}@", f".tmp.{dead.pid}@")
        abandoned.mkdir()
        assert fileio.remove_abandoned_directories(tmp_path) == [abandoned]
        assert own.is_dir()  # its writer runs: kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]


@pytest.mark.parametrize("output, message", [
    ("unwritable", "--output: "),  # 15: PermissionError traceback, exit 1
    ("directory.csv", "directory.csv is a folder"),  # 16: IsADirectoryError at the end
])
def test_predict_checks_its_output_before_classifying(finished, unwritable_dir, tmp_path,
                                                      output, message):
    target = unwritable_dir / "out.csv" if output == "unwritable" else tmp_path / output
    if output == "directory.csv":
        target.mkdir()
    done = run_module("tsynd_tf.predict", f"--model={finished['export']}",
                      f"--output={target}", str(tmp_path), succeeds=False)
    usage_error(done, "predict", message)
    assert "image(s) classified" not in done.stdout


def test_a_late_output_failure_still_prints_every_prediction(tmp_path):
    import io

    from tsynd_tf.predict import OutputError, open_output

    folder, fallback = tmp_path / "out", io.StringIO()
    folder.mkdir()
    row = {"file": "a.png", "class": "normal", "probability": 0.9, "entropy": 0.3, "mi": 0.01,
           "ood_score": 0.5, "refer": False}
    with pytest.raises(OutputError, match="every prediction was printed on stdout"):
        with open_output(folder / "preds.csv", ["normal", "pneumonia"], {},
                         fallback=fallback) as writer:
            writer.write(row, [0.9, 0.1])
            (folder / "preds.csv").mkdir()  # a folder takes its name while images are read
    assert fallback.getvalue().splitlines() == [
        "file,class,probability,entropy,mi,ood_score,refer,p_normal,p_pneumonia",
        "a.png,normal,0.900000,0.300000,0.010000,0.500000,0,0.900000,0.100000"]
