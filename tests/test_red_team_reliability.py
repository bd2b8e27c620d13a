"""Issue 28's cases ("Reliability"), each run so that it cannot come back: a sweep that cannot
mislabel its cells, every output and cache path checked before any work (exit 2, the flag
named, nothing written), report lines it cannot use skipped with a warning, and one answer
per image in evaluate, the SavedModel and predict whatever else is in the batch.

Flag checks run as commands (they fail before TensorFlow does any work); the MC-dropout
cases run in process on the session's trained classifier (conftest.trained_classifier) and
on its export.
"""

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN_FLAGS, run_module
from test_red_team import usage_error

# ----------------------------------------------------------------------------- the sweep


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    config = tmp_path / "tiny.cfg"
    config.write_text("\n".join(TINY_TRAIN_FLAGS) + "\n")
    return config


def sweep(tmp_path, *flags):
    """`experiment` on the sweep folder tmp_path/sweep, expected to fail."""
    return run_module("tsynd_tf.experiment", "--methods=baseline",
                      f"--sweep_dir={tmp_path / 'sweep'}", *flags, succeeds=False,
                      timeout=300)


def test_two_configs_of_one_file_name_are_refused(tmp_path, tiny_config):  # 1
    other = tmp_path / "b" / "tiny.cfg"
    other.parent.mkdir()
    other.write_text(tiny_config.read_text().replace("pneumoniamnist", "breastmnist"))
    done = sweep(tmp_path, f"--configs={tiny_config},{other}")
    usage_error(done, "experiment", "--configs: ", str(tiny_config), str(other),
                "share the file name 'tiny'")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("train_args, flag", [
    ("--seed=7", "--seed"),  # 2: both cells trained seed 7, recorded as seeds 0 and 1
    ("--method=tsynd_mi", "--method"),  # 3: the line said baseline
    ("--rounds=1 --output_dir=elsewhere", "--output_dir"),  # 3: evaluate failed after
    ("--export_dir=saved", "--export_dir"),
    ("--cache_dir=cache", "--cache_dir"),
])
def test_train_args_that_set_what_the_sweep_sets_are_refused(tmp_path, tiny_config,
                                                             train_args, flag):
    done = sweep(tmp_path, f"--configs={tiny_config}", "--num_seeds=2",
                 f"--train_args={train_args}")
    usage_error(done, "experiment", f"--train_args sets {flag},",
                "which the sweep sets for each cell")
    assert not (tmp_path / "sweep").exists() and not Path("elsewhere").exists()


@pytest.mark.parametrize("eval_args, message", [
    ("--pgd_steps=0", "flag --pgd_steps=0: 0 is not"),  # 4: failed after every training
    ("--fgsm_epsilons=0.1,x", "--fgsm_epsilons must be a comma-separated list of numbers"),
    ("--num_samples=1", "flag --num_samples=1"),
    ("--no_such_flag=1", "no_such_flag"),
    ("--seed=3", "--eval_args sets --seed,"),
    ("--run_dir=.", "--eval_args sets --run_dir,"),
])
def test_eval_args_are_checked_before_the_sweep_starts(tmp_path, tiny_config, eval_args,
                                                       message):
    done = sweep(tmp_path, f"--configs={tiny_config}", f"--eval_args={eval_args}")
    usage_error(done, "experiment", "--eval_args", message)
    assert not (tmp_path / "sweep").exists()


def test_a_bad_robustness_grid_of_a_config_is_named(tmp_path, tiny_config):
    grid = tiny_config.parent / "robustness" / tiny_config.name
    grid.parent.mkdir()
    grid.write_text("--pgd_epsilons=0.5,2\n")
    done = sweep(tmp_path, f"--configs={tiny_config}")
    usage_error(done, "experiment", f"--eval_args (with {grid})", "--pgd_epsilons values")
    assert not (tmp_path / "sweep").exists()


# ----------------------------------------------------------------------------- outputs


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder\n")
    return path


def train(tmp_path, medmnist_dir, *extra, **env):
    return run_module("tsynd_tf.train", *TINY_TRAIN_FLAGS, f"--data_dir={medmnist_dir}",
                      f"--output_dir={tmp_path / 'run'}", *extra, succeeds=False,
                      timeout=300, **env)


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_a_cache_dir_that_is_no_folder_is_refused_before_the_run_starts(
        tmp_path, medmnist_dir, a_file, where):  # 9: NotADirectoryError from cache.py
    cache_dir = a_file if where == "file" else a_file / "cache"
    done = train(tmp_path, medmnist_dir, f"--cache_dir={cache_dir}")
    usage_error(done, "train", "--cache_dir: ", f"{a_file} is not a folder")
    assert not (tmp_path / "run").exists()


def test_a_tsynd_cache_dir_that_is_no_folder_is_refused(tmp_path, medmnist_dir, a_file):  # 9
    done = train(tmp_path, medmnist_dir, TSYND_CACHE_DIR=str(a_file / "cache"))
    usage_error(done, "train", "--cache_dir ($TSYND_CACHE_DIR): ", f"{a_file} is not a folder")
    assert not (tmp_path / "run").exists()


def test_an_output_dir_name_too_long_is_a_usage_error(tmp_path, medmnist_dir):  # 13
    long_name = tmp_path / ("r" * 300)
    done = train(tmp_path, medmnist_dir, f"--output_dir={long_name}")
    usage_error(done, "train", "--output_dir: ", "File name too long")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def report(tmp_path, *flags):
    return run_module("tsynd_tf.report", f"--sweep_dir={tmp_path / 'sweep'}", *flags,
                      succeeds=False, timeout=300)


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """A sweep folder whose results file holds a plan line, a line without a cell's keys and
    a torn line: no finished cell."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "results.jsonl").write_text(
        '{"plan": [["tiny", "baseline", 0]], "sweep_command": "x", "written": "y"}\n'
        '{"cell": "x"}\n{"cell": "torn", "met')
    return folder


def test_report_skips_a_line_without_a_cells_keys_with_a_warning(tmp_path, sweep_dir):  # 10
    done = report(tmp_path, f"--output={tmp_path / 'page.md'}")
    usage_error(done, "report", "holds no finished cell yet")
    results = sweep_dir / "results.jsonl"
    assert f"{results} line 2 skipped: it lacks config, dataset" in done.stderr
    assert "line 3" not in done.stderr  # a torn line is the sweep's, skipped silently
    assert not (tmp_path / "page.md").exists()


@pytest.mark.parametrize("flag, where, message", [  # 11: traceback after the whole page
    ("output", "folder", "is a folder"),
    ("output", "under_file", "is not a folder"),
    ("figures_dir", "under_file", "is not a folder"),
    ("figures_dir", "file", "is not a folder"),
])
def test_report_outputs_are_checked_before_the_page_is_computed(tmp_path, sweep_dir, a_file,
                                                                flag, where, message):
    target = {"folder": tmp_path, "file": a_file, "under_file": a_file / "x"}[where]
    done = report(tmp_path, f"--{flag}={target}")
    usage_error(done, "report", f"--{flag}: ", message)
    assert "holds no finished cell" not in done.stderr
    assert a_file.read_text() == "not a folder\n"


def test_report_of_a_missing_sweep_dir_says_so(tmp_path):  # was "holds no finished cell"
    done = report(tmp_path, f"--output={tmp_path / 'page.md'}")
    usage_error(done, "report", f"--sweep_dir: {tmp_path / 'sweep'} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, message", [
    ("--num_samples=1", "flag --num_samples=1: 1 is not"),  # 8: accepted
    ("--pgd_steps=0", "flag --pgd_steps=0: 0 is not"),  # 12: ZeroDivisionError after 1 min
])
def test_choose_grid_refuses_what_evaluate_refuses(tmp_path, flag, message):
    done = run_module("tsynd_tf.choose_grid", f"--run_dir={tmp_path}",
                      f"--output={tmp_path / 'grid.cfg'}", flag, succeeds=False)
    usage_error(done, "choose_grid", message)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_choose_grid_checks_its_output_before_measuring(tmp_path, write_run_dir, a_file):  # 12
    run_dir = write_run_dir(tmp_path / "run")
    done = run_module("tsynd_tf.choose_grid", f"--run_dir={run_dir}",
                      f"--output={a_file / 'grid.cfg'}", succeeds=False, timeout=300)
    usage_error(done, "choose_grid", "--output: ", f"{a_file} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "run"]


# ----------------------------------------------------------------------------- one answer


def repeated(images: np.ndarray) -> np.ndarray:
    """The first image at positions 0, 3 and 5, among three others: with batches of two it
    is first, second and first in its batch, in batches 1, 2 and 3."""
    return images[[0, 1, 2, 0, 3, 0]]


def test_evaluation_gives_an_image_one_answer_whatever_its_batch(trained_classifier,
                                                                 pneumonia):  # 7
    from tsynd_tf import evaluation, uncertainty

    images = repeated(pneumonia.test.images[:4])
    predictor = evaluation.MCPredictor(trained_classifier, 4, False, batch_size=2, seed=0)
    out = predictor.predict(images)
    for key in ("probs", "mutual_information", "predictive_entropy"):
        np.testing.assert_allclose(out[key][[3, 5]], out[key][[0, 0]], atol=1e-6, err_msg=key)
    assert out["mutual_information"][0] > 1e-4  # the passes' masks differ: MI is not 0
    alone = predictor.predict(images[:1])
    np.testing.assert_allclose(alone["probs"][0], out["probs"][0], atol=1e-6)
    # The masks of training (one per row, advancing) are what made answers differ: the same
    # batch through them gives the copies other answers, so the check above can fail.
    batches = [evaluation.to_unit_float(images[i:i + 2]) for i in range(0, 6, 2)]
    with evaluation.seeded_dropout(trained_classifier, 0):
        per_row = uncertainty.mc_predict(trained_classifier, batches, 4)["probs"]
    assert np.abs(per_row[[3, 5]] - per_row[[0, 0]]).max() > 1e-3


def test_predict_and_the_saved_model_give_an_image_one_answer(trained_classifier, pneumonia,
                                                              tmp_path):  # 7
    """The same file three times among others, in batches of two: one row, repeated, and
    the answer evaluate (seed 0, serving.MASK_SEED) gives that image."""
    import json

    from PIL import Image

    from tsynd_tf import evaluation, serving

    export = serving.export_trained(
        trained_classifier, pneumonia, pneumonia.train.subset(np.arange(1000)), 4,
        tmp_path / "saved", name="pneumonia")
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(repeated(pneumonia.test.images[:4])):
        Image.fromarray(image[..., 0]).save(folder / f"{index}.png")
    output = tmp_path / "predictions.json"
    run_module("tsynd_tf.predict", f"--model={export}", "--batch_size=2", f"--output={output}",
               str(folder), timeout=300)
    rows = {Path(row["file"]).name: row for row in json.loads(output.read_text())["predictions"]}
    first = rows["0.png"]
    for copy in ("3.png", "5.png"):
        for key in ("class", "probability", "mi", "entropy", "refer"):
            assert rows[copy][key] == pytest.approx(first[key], abs=1e-6), (copy, key)
    assert first["mi"] > 1e-4
    evaluated = evaluation.MCPredictor(trained_classifier, 4, False, seed=0).predict(
        pneumonia.test.images[:1])
    assert first["mi"] == pytest.approx(evaluated["mutual_information"][0], abs=1e-5)
    assert first["probability"] == pytest.approx(evaluated["probs"][0].max(), abs=1e-5)


# ----------------------------------------------------------------------------- smaller


def test_a_cell_another_sweep_process_runs_is_not_run_into_its_log(tmp_path, tiny_config):
    """Two sweep processes on one folder: the second is told, and writes nothing."""
    import fcntl
    import os

    from tsynd_tf import experiment, runs

    sweep_dir = runs.SweepDir(tmp_path / "sweep")
    log_path = sweep_dir.log_file(experiment.cell_name(str(tiny_config), "baseline", 0))
    log_path.parent.mkdir(parents=True)
    settings = experiment.CellSettings(str(sweep_dir.path), (), (), 1, os.getcwd(), "test")
    with open(log_path, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # the first sweep process, running the cell
        with pytest.raises(RuntimeError, match=f"another sweep process is running this cell "
                                               f"\\(it holds {log_path}\\)"):
            experiment.run_cell((str(tiny_config), "baseline", 0), settings)
    assert log_path.read_text() == ""
    assert not (sweep_dir.path / "runs").exists()


def test_a_process_waiting_for_a_cached_model_says_who_trains_it(tmp_path, caplog):
    import logging
    import os
    import socket
    import threading

    from tsynd_tf import cache

    entry = cache.entry(tmp_path, "toy", {"steps": 3})

    def wait_for_the_entry():
        with entry.hold():
            pass

    with caplog.at_level(logging.INFO, logger="tsynd_tf.cache"), entry.hold():
        waiter = threading.Thread(target=wait_for_the_entry)
        waiter.start()
        waiter.join(2)
        assert waiter.is_alive()  # blocked on the lock this thread holds
    waiter.join(10)
    assert not waiter.is_alive()
    assert (f"Waiting for {entry}, which PID {os.getpid()} on {socket.gethostname()} is "
            "training.") in caplog.text


def test_a_subset_larger_than_asked_is_logged(pneumonia, caplog):
    from tsynd_tf.data import subsample_indices

    indices = subsample_indices(pneumonia.train.targets, count=1, seed=0)
    assert len(indices) == 2  # one image of each of the two classes
    assert "The labelled subset holds 2 images, not the 1 asked for" in caplog.text


def test_export_under_a_name_taken_by_a_file_is_refused(tmp_path, a_file):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "model").write_text("")
    done = run_module("tsynd_tf.export", f"--run_dir={tmp_path}", f"--export_dir={saved}",
                      "--name=model", succeeds=False)
    usage_error(done, "export", f"--name: {saved / 'model'} is not a folder",
                "pass another --name or --export_dir")
    assert sorted(p.name for p in saved.iterdir()) == ["model"]
