"""The sweep runner, its report and Grad-CAM, on real PneumoniaMNIST.

One tiny sweep (2 methods x 1 seed, conftest.tiny_sweep) is shared by the module and by the
pools figure's page test (test_pools_figure). The report runs as a
subprocess: tsynd_tf.report and tsynd_tf.experiment both define --sweep_dir, so the two
cannot be imported into one process.
"""

import json
import re
import struct
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import (TINY_EVAL_ARGS, TINY_SWEEP_CONFIG, TINY_SWEEP_METHODS,
                      TINY_TRAIN_COUNT, run_command, run_module, run_tiny_sweep)
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tsynd_tf import evaluation, explain, fileio, machine, runs

# The tiny sweep (conftest.tiny_sweep, shared with test_pools_figure): TINY_SWEEP_CONFIG,
# every stage (autoencoder, classifier, one generation round) in ~15 s per cell.
TINY_CONFIG = TINY_SWEEP_CONFIG
EVAL_ARGS = TINY_EVAL_ARGS
METHODS = TINY_SWEEP_METHODS
FIGURES = ("accuracy_vs_fraction.png", "robustness.png", "pools_tiny.png", "mi_histograms.png",
           "synthetic_tiny.png", "grad_cam_tiny.png")
run_sweep = run_tiny_sweep


@pytest.fixture(scope="module")
def sweep(tiny_sweep):
    return tiny_sweep


def results_lines(sweep_dir: Path) -> list[str]:
    return runs.SweepDir(sweep_dir).results_file.read_text().splitlines()


# ----------------------------------------------------------------------------- runner


def test_sweep_writes_its_plan_then_one_result_line_per_cell(sweep):
    assert "0 cells finished, 2 to run" in sweep["log"]
    plan, *records = [json.loads(line) for line in results_lines(sweep["sweep_dir"])]
    assert plan["plan"] == [["tiny", "baseline", 0], ["tiny", "tsynd_mi", 0]]
    assert plan["sweep_command"] == records[0]["sweep_command"]
    assert sorted(r["cell"] for r in records) == ["tiny_baseline_s0", "tiny_tsynd_mi_s0"]
    for record in records:
        assert record["dataset"] == "pneumoniamnist"
        assert record["train_count"] == TINY_TRAIN_COUNT
        assert record["seed"] == 0 and set(record["seconds"]) == {"train", "evaluate"}
        assert Path(record["run_dir"]) == runs.SweepDir(sweep["sweep_dir"]).run(
            record["cell"]).path
        for key in ("test/acc", "test/auc", "test/ece", "gaussian_0.1/acc", "fgsm_0.01/acc",
                    "pgd_0.01/acc"):
            assert 0.0 <= record["metrics"][key] <= 1.0, key
        assert record["training"]["num_labelled"] == TINY_TRAIN_COUNT
        assert record["started"] <= record["finished"]  # UTC ISO strings sort by time
        assert record["resumed"] is False  # a fresh run directory: its clock is its cost
        assert record["sweep_command"].startswith("python -m tsynd_tf.experiment --configs=")
        # The line carries the settings (run directories stay on the machine that ran them).
        assert (record["flags"]["method"], record["flags"]["seed"]) == (record["method"], 0)
        assert record["flags"]["ae_epochs"] == 1 and record["evaluation"]["pgd_steps"] == 1
        # ... and the machine type that ran it (this one: the cells run here).
        assert record["machine"] == machine.describe()


def test_restarted_sweep_runs_nothing(sweep):
    run_dirs = sorted((sweep["sweep_dir"] / "runs").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for d in run_dirs for p in d.rglob("*")}
    lines = results_lines(sweep["sweep_dir"])
    log = run_sweep(sweep["config"], sweep["sweep_dir"], sweep["data_dir"])
    assert "2 cells finished, 0 to run" in log
    assert results_lines(sweep["sweep_dir"]) == lines  # nothing to run: no plan line either
    assert {p: p.stat().st_mtime_ns for d in run_dirs for p in d.rglob("*")} == mtimes


# The launchers' flag checks come before TensorFlow is imported: seconds each.
BLOCK_RAY = ("import runpy, sys; sys.modules['ray'] = None; "  # as if Ray were not installed
             "runpy.run_module('tsynd_tf.experiment', run_name='__main__', alter_sys=True)")


@pytest.mark.parametrize("flags, message", [
    (["--cell_gpus=1", "--ray_address=auto"],
     "--cell_gpus, --ray_address: only for --launcher=ray."),
    (["--launcher=ray", "--workers=2"], "--workers is --launcher=local's"),
    (["--launcher=ray", "--cell_cpus=0"], "--cell_cpus must be >= 1"),
    (["--launcher=ray", "--ray_address=127.0.0.1:1"],  # no cluster there
     "--ray_address=127.0.0.1:1: nothing accepts connections there"),
    (["--launcher=ray"], "--launcher=ray needs Ray, an optional dependency that is not "
                         "installed"),
])
def test_launcher_flags_are_checked_before_any_work(flags, message, tmp_path):
    config = tmp_path / "tiny.cfg"
    config.write_text(TINY_CONFIG)
    output = run_command([sys.executable, "-c", BLOCK_RAY, f"--configs={config}",
                          f"--sweep_dir={tmp_path / 'sweep'}", *flags], exit_code=2)
    assert output.stderr.startswith("experiment: error: ") and message in output.stderr
    if "needs Ray" in message:
        assert "pip install -e '.[ray]' (or make install-ray)" in output.stderr
    assert not (tmp_path / "sweep").exists()


def test_torn_last_line_is_ignored_and_next_append_starts_a_new_line(tmp_path):
    path = runs.SweepDir(tmp_path).results_file
    fileio.append_json_line(path, {"cell": "a", "metrics": {}})
    fileio.append_json_line(path, {"cell": "b", "metrics": {}})
    with open(path, "a") as f:
        f.write('{"cell": "c", "metr')  # a crash mid-write
    assert [r["cell"] for r in fileio.read_json_lines(path)] == ["a", "b"]
    fileio.append_json_line(path, {"cell": "d", "metrics": {}})
    lines = path.read_text().splitlines()
    assert lines[2] == '{"cell": "c", "metr' and json.loads(lines[3])["cell"] == "d"
    assert [r["cell"] for r in fileio.read_json_lines(path)] == ["a", "b", "d"]
    assert fileio.read_json_lines(tmp_path / "missing.jsonl") == []


def test_a_lines_file_in_a_folder_not_made_yet_is_written(tmp_path):
    path = tmp_path / "new" / "folder" / "rows.jsonl"
    assert fileio.unwritable(path, directory=False) is None  # what the commands check first
    fileio.append_json_line(path, {"row": 1})
    assert fileio.read_json_lines(path) == [{"row": 1}]


# ----------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    """The report of the sweep's records plus a torn line, from a copied results file (the
    run directories are found through the records' run_dir)."""
    root = tmp_path_factory.mktemp("report")
    copied = root / "copied_sweep"
    copied.mkdir()
    lines = results_lines(sweep["sweep_dir"])
    runs.SweepDir(copied).results_file.write_text("\n".join(lines) + '\n{"cell": "torn", "met')
    page_path = root / "docs" / "RESULTS.md"
    log = run_module("tsynd_tf.report", f"--sweep_dir={copied}", f"--output={page_path}",
                     "--title=Tiny sweep", data_dir=sweep["data_dir"])
    return {"page": page_path.read_text(), "page_path": page_path, "log": log,
            "sweep_dir": copied,
            "records": [r for r in map(json.loads, lines) if "cell" in r]}


def test_report_tables_have_a_row_per_method(report):
    page = report["page"]
    assert page.startswith("# Tiny sweep\n")
    assert "python -m tsynd_tf.report --sweep_dir=" in page
    assert "Cells finished: **2 of 2**" in page  # the torn line is not a cell
    assert "no GPU" in page or "GPU(s)" in page
    assert "### pneumoniamnist, 32 labelled images" in page
    for method in METHODS:
        rows = [line for line in page.splitlines() if line.startswith(f"| `{method}` | 1 |")]
        assert len(rows) == 1, method  # clean-metrics table: one row, n = 1 seed
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert len(cells) == 11  # method, n, 6 metrics, val AUC, pre-synth., min/cell
        record = next(r for r in report["records"] if r["method"] == method)
        assert cells[8] == f"{record['training']['val/auc']:.3f}"  # selection criterion
        # pre-synth.: the recorded selected epoch against the one initial (real-only) epoch.
        epoch = record["training"]["selected_epoch"]
        assert cells[9] == ("–" if method == "baseline" else f"{int(epoch <= 1)}/1")
    overview = [line for line in page.splitlines() if line.startswith("| `tiny` | 32 |")]
    assert [row.split("|")[3].strip() for row in overview] == [f"`{m}`" for m in METHODS]
    assert "Gaussian σ=0.1" in page and "FGSM ε=0.01" in page and "PGD ε=0.01" in page
    assert "Gaussian σ=0 " not in page  # identical to clean accuracy by construction
    assert "Full-data reference" not in page  # no config with train_fraction 1.0


def test_report_names_the_planned_cells_a_stopped_sweep_left(sweep, tmp_path):
    """A restart that plans a second seed whose cells fail (more labelled images than the
    data has: valid flags, a failure once the data is read) leaves them unfinished; the page
    counts them from the plan line and names them."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    runs.SweepDir(sweep_dir).results_file.write_text(
        "\n".join(results_lines(sweep["sweep_dir"])) + "\n")
    log = run_module("tsynd_tf.experiment", f"--configs={sweep['config']}",
                     f"--methods={','.join(METHODS)}", "--num_seeds=2",
                     f"--sweep_dir={sweep_dir}", "--train_args=--train_count=10000000",
                     data_dir=sweep["data_dir"], succeeds=False)
    assert "2 cell(s) failed" in log
    page_path = tmp_path / "RESULTS.md"
    run_module("tsynd_tf.report", f"--sweep_dir={sweep_dir}", f"--output={page_path}",
               "--model_figures=false", data_dir=sweep["data_dir"])
    page = page_path.read_text()
    assert "Cells finished: **2 of 4** (1 config," in page and "tiny 2×2" in page
    assert "- Not finished: tiny/baseline/s1, tiny/tsynd_mi/s1\n" in page


def test_report_claims_table_pairs_the_methods_it_has(report):
    page, records = report["page"], report["records"]
    rows = [line for line in page.splitlines() if line.startswith("| ") and "| `tiny` |" in line
            and "`tsynd_mi` − `baseline`" in line]
    claims = [tuple(c.strip() for c in row.split("|")[1:3]) for row in rows]
    # Only tsynd_mi and baseline ran: no latent_noise or entropy claims. New runs record the
    # end of training: a row beside each clean claim; robustness only best on validation.
    assert claims == [("more accurate with few labels", "best on val."),
                      ("more accurate with few labels", "end of training"),
                      ("higher AUC with few labels", "best on val."),
                      ("higher AUC with few labels", "end of training"),
                      ("more robust to noise and attacks", "best on val.")]
    assert "2 of 2 cells record it" in page
    by = {r["method"]: r for r in records}

    def robust_area(method):  # mean over families of the normalised balanced-ACC area
        metrics, areas = by[method]["metrics"], []
        for family in ("gaussian", "fgsm", "pgd"):
            points = [(0.0, metrics["test/balanced_acc"])]
            for key, value in metrics.items():
                match = re.fullmatch(rf"{family}_([0-9.]+)/balanced_acc", key)
                if match and float(match[1]) > 0:  # σ=0: the clean point
                    points.append((float(match[1]), value))
            x, y = map(np.array, zip(*sorted(points)))
            areas.append(np.trapezoid(y, x) / x.max())
        return np.mean(areas)

    def delta(key, source="metrics"):
        return by["tsynd_mi"][source][key] - by["baseline"][source][key]

    expected = [delta("test/acc"), delta("last/test/acc", "training"), delta("test/auc"),
                delta("last/test/auc", "training"), robust_area("tsynd_mi") - robust_area(
                    "baseline")]
    for row, value in zip(rows, expected):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == "1" and cells[5] == f"{value:+.3f}", row
        assert cells[6:] == ["n/a", "n/a", "no test (fewer than 2 pairs, or all differences "
                                           "equal)"], row
    # The config's robustness-area table.
    assert "| method | Gaussian ACC | Gaussian bal. ACC | FGSM ACC |" in page


def test_report_settings_come_from_the_lines_when_the_runs_are_gone(report, tmp_path):
    """A committed results file read on another machine: no run directory is there."""
    gone = tmp_path / "sweep"
    gone.mkdir()
    lines = [{**r, "run_dir": str(tmp_path / "elsewhere" / r["cell"])}
             for r in report["records"]]
    runs.SweepDir(gone).results_file.write_text("".join(json.dumps(r) + "\n" for r in lines))
    page_path = tmp_path / "RESULTS.md"
    run_module("tsynd_tf.report", f"--sweep_dir={gone}", f"--output={page_path}",
               "--nomodel_figures")
    page = page_path.read_text()
    assert "--ae_epochs=1 " in page and '"pgd_steps": 1' in page


def test_report_states_the_sweep_command_and_wall_time(report):
    import datetime

    page, records = report["page"], report["records"]
    assert records[0]["sweep_command"] in page
    # One worker: the cells ran one after the other, so the wall time is their sum.
    spans = [datetime.datetime.fromisoformat(r["finished"]) -
             datetime.datetime.fromisoformat(r["started"]) for r in records]
    hours = sum(span.total_seconds() for span in spans) / 3600
    assert re.search(rf"- Wall time: {hours:.2f} h with at least one cell running, between "
                     rf"{re.escape(min(r['started'] for r in records))} and "
                     rf"{re.escape(max(r['finished'] for r in records))} \(UTC\), over 2 "
                     rf"cells\.", page), page[:2000]


def test_report_p_values_are_na_with_one_seed(report):
    rows = [line for line in report["page"].splitlines()
            if line.startswith("| `tsynd_mi` − `baseline` |")]
    assert len(rows) == 2 + 3  # ACC, AUC and the 3 robust accuracies
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "1" and cells[4:] == ["n/a", "n/a", "n/a", "n/a"], row
    assert "No verdict: paired tests need at least 2 seeds" in report["page"]


def test_report_figures_are_valid_pngs_linked_from_the_page(report):
    page, page_dir = report["page"], report["page_path"].parent
    for name in FIGURES:
        path = page_dir / "figures" / name
        assert f"](figures/{name})" in page, name
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", data[16:24])
        assert width > 200 and height > 100, name
        with Image.open(path) as image:
            image.verify()
    assert not [p.name for p in (page_dir / "figures").iterdir() if p.name.startswith(".")]
    # The same figures as TensorBoard images, beside the sweep's runs.
    events = EventAccumulator(str(report["sweep_dir"] / "tensorboard" / "report"))
    events.Reload()
    tags = sorted(events.Tags()["tensors"])  # TF2 summaries are tensors (plugin "images")
    assert tags == sorted(f"report/{Path(n).stem}" for n in FIGURES)
    assert {events.SummaryMetadata(t).plugin_data.plugin_name for t in tags} == {"images"}


# ----------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_of_a_trained_classifier(sweep, pneumonia):
    classifier = runs.load_run(sweep["sweep_dir"] / "runs" / "tiny_tsynd_mi_s0").classifier
    images = pneumonia.test.images[:4]
    with evaluation.seeded_dropout(classifier, 0):
        maps = explain.grad_cam(classifier, images, num_samples=3)
    with evaluation.seeded_dropout(classifier, 0):  # [0, 1] floats: the same maps
        again = explain.grad_cam(classifier, images.astype(np.float32) / 255.0, num_samples=3)
    assert maps.shape == (4, 28, 28) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    assert (maps.std(axis=(1, 2)) > 0.01).all()  # not constant
    assert not np.allclose(maps[0], maps[1])
    np.testing.assert_allclose(again, maps, atol=1e-5)
    assert isinstance(explain.last_conv_layer(classifier), keras.layers.Conv2D)


def test_grad_cam_finds_the_evidence():
    """conv (identity) -> ReLU -> global average -> logits (+1, -1): class 0's evidence is
    the bright pixel, class 1 has none (an all-zero map)."""
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(1, 1, activation="relu", kernel_initializer="ones",
                                   bias_initializer="zeros")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[1.0, -1.0]]),
                                bias_initializer="zeros")(pooled)
    model = keras.Model(inputs, logits)
    image = np.zeros((1, 8, 8, 1), np.float32)
    image[0, 2, 5, 0] = 1.0
    evidence = explain.grad_cam(model, image, num_samples=2, class_indices=0)
    assert np.unravel_index(evidence[0].argmax(), (8, 8)) == (2, 5)
    assert evidence[0, 2, 5] == pytest.approx(1.0) and evidence[0, 7, 0] == 0.0
    assert (explain.grad_cam(model, image, num_samples=2, class_indices=1) == 0).all()
    assert explain.grad_cam(model, image, num_samples=2)[0, 2, 5] == pytest.approx(1.0)
