"""compare: the comparison protocol on a user's image folder, on real chest X-ray JPEGs.

One tiny comparison (the baseline and a generator x 2 seeds, every stage once, at 28 px) of
the small chest X-ray folder is shared by the module: ~2 minutes on 2 cores. The bad-input
cases are refused before TensorFlow is imported (seconds each), except where the sweep itself
refuses.
"""

import json
from pathlib import Path

import pytest
from conftest import run_module

from tsynd_tf import runs

METHODS = ("baseline", "diffusion")
NUM_SEEDS = 2
CELLS = len(METHODS) * NUM_SEEDS
TRAIN_ARGS = ("--initial_epochs=1 --rounds=1 --epochs_per_round=1 --ae_epochs=1 "
              "--generator_steps=20 --ddim_steps=5 --num_samples=4 --synthetic_multiple=1 "
              "--pool_quality=false")
EVAL_ARGS = "--gaussian_sigmas= --fgsm_epsilons= --pgd_epsilons="


def compare_args(data_dir: Path, output: Path, *extra: str) -> list[str]:
    return [f"--data_dir={data_dir}", f"--output={output}", "--size=28",
            "--train_fraction=0.5", f"--methods={','.join(METHODS)}",
            f"--num_seeds={NUM_SEEDS}", f"--train_args={TRAIN_ARGS}",
            f"--eval_args={EVAL_ARGS}", "--nomodel_figures", *extra]


def results(output: Path) -> list[str]:
    return runs.SweepDir(output / "sweep").results_file.read_text().splitlines()


@pytest.fixture(scope="module")
def compared(small_xray_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("compare") / "out"
    log = run_module("tsynd_tf.compare", *compare_args(small_xray_dir, output), timeout=1800)
    return {"output": output, "log": log, "data_dir": small_xray_dir,
            "name": f"{small_xray_dir.name}_50pct"}


def test_compare_writes_the_config_sweep_and_page(compared):
    output, name = compared["output"], compared["name"]
    config = (output / "config" / f"{name}.cfg").read_text().splitlines()
    assert config[0].startswith("# Written by: python -m tsynd_tf.compare --data_dir=")
    flag_lines = [line for line in config if not line.startswith("#")]
    assert flag_lines[:6] == ["--dataset=folder", f"--data_dir={compared['data_dir']}",
                              "--train_fraction=0.5", "--size=28", "--channels=1",
                              "--rendering=residual"]
    assert "--generator_steps=20" in flag_lines and "--nopool_quality" in flag_lines
    assert f"0 cells finished, {CELLS} to run" in compared["log"]
    records = [r for r in map(json.loads, results(output)) if "cell" in r]
    assert sorted((r["method"], r["seed"]) for r in records) == sorted(
        (m, s) for m in METHODS for s in range(NUM_SEEDS))
    for record in records:
        assert record["config"] == name and record["dataset"] == "folder"
        assert 0.0 <= record["metrics"]["test/auc"] <= 1.0
        assert record["training"]["num_labelled"] == 18  # half of train less validation
    page = (output / "REPORT.md").read_text()
    assert page.startswith(f"# Which synthetic data helps on {compared['data_dir'].name}?\n")
    assert f"Cells finished: **{CELLS} of {CELLS}** (1 config," in page
    assert f"{name} {len(METHODS)}×{NUM_SEEDS}" in page
    for method in METHODS:
        assert f"| `{name}` | 18 | `{method}` | {NUM_SEEDS} |" in page  # its Overview row
    assert (output / "figures" / "accuracy_vs_fraction.png").is_file()
    # The first screen answers the question per method; the config is named by its folder.
    assert page.index("## Which synthetic data helped?") < page.index("## Overview")
    for method in METHODS[1:]:
        assert f"| `{name}` | `{method}` | {NUM_SEEDS} |" in page
    assert f"### {compared['data_dir'].name}, 50% of the labels (18 images)" in page


def test_the_same_command_again_trains_nothing(compared):
    output = compared["output"]
    run_dirs = sorted((output / "sweep" / "runs").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for d in run_dirs for p in d.rglob("*")}
    lines = results(output)
    log = run_module("tsynd_tf.compare", *compare_args(compared["data_dir"], output))
    assert f"{CELLS} cells finished, 0 to run" in log
    assert results(output) == lines
    assert {p: p.stat().st_mtime_ns for d in run_dirs for p in d.rglob("*")} == mtimes
    assert (output / "REPORT.md").is_file()


def test_other_settings_in_the_same_output_are_refused(compared):
    output, name = compared["output"], compared["name"]
    config = (output / "config" / f"{name}.cfg").read_text()
    lines = results(output)
    done = run_module("tsynd_tf.compare", *compare_args(compared["data_dir"], output,
                                                        "--size=32"), exit_code=2)
    assert done.stderr.startswith(f"compare: error: --output: {output / 'config' / name}.cfg "
                                  "was written for other training settings (it has "
                                  "['--size=28'] where this command has ['--size=32']) and "
                                  f"{output / 'sweep'} has cells of them")
    assert "pass another --output" in done.stderr
    assert (output / "config" / f"{name}.cfg").read_text() == config
    assert results(output) == lines


@pytest.mark.parametrize("flags, message", [
    (["--data_dir={root}/missing"], "--data_dir: {root}/missing is not a folder; pass the "
                                    "folder that holds train/<class>/ and test/<class>/"),
    (["--data_dir={data}/test"], "--data_dir: {data}/test/train is not a folder."),
    (["--methods=baseline,dreambooth"], "--methods: unknown ['dreambooth']; choose from "),
    (["--num_seeds=0"], "--num_seeds and --workers must be >= 1."),
    (["--train_fraction=0"], "--train_fraction must be in (0, 1]; got 0.0."),
    (["--train_fraction=1.5"], "--train_fraction must be in (0, 1]; got 1.5."),
    (["--methods=baseline,external"], "--methods has external, which trains on your own "
                                      "generator's images: pass them as --external_pool="),
    (["--train_args=--seed=3 --rounds=1"], "--train_args sets --seed, which compare sets"),
    (["--train_args=--rounds=-1"], "--rounds must be >= 0; got -1."),
])
def test_bad_input_is_refused_before_any_work(flags, message, small_xray_dir, tmp_path):
    paths = {"root": tmp_path, "data": small_xray_dir}
    output = tmp_path / "out"
    done = run_module("tsynd_tf.compare", *compare_args(small_xray_dir, output),
                      *[flag.format(**paths) for flag in flags], exit_code=2)
    assert done.stderr.startswith("compare: error: " + message.format(**paths))
    assert not output.exists()


def test_what_the_sweep_refuses_stops_compare_before_any_training(small_xray_dir,
                                                                 tmp_path):
    """Flags that experiment checks (here an impossible noise strength) are refused by it,
    and compare passes the refusal on. The config was written, but with no cells of it yet
    a command with other settings may replace it."""
    output = tmp_path / "out"
    config = output / "config" / f"{small_xray_dir.name}_50pct.cfg"
    for size in (28, 32):
        done = run_module("tsynd_tf.compare", *compare_args(small_xray_dir, output),
                          f"--size={size}", "--eval_args=--gaussian_sigmas=2", exit_code=2)
        assert "experiment: error: --eval_args would fail every cell's evaluation" in done.stderr
        assert done.stderr.rstrip().endswith("compare: error: the sweep refused these settings "
                                             "(its error above); nothing was trained.")
        assert f"--size={size}" in config.read_text().splitlines()
        assert not (output / "sweep").exists()


def test_external_pool_joins_the_default_methods_and_is_checked(small_xray_dir, tmp_path):
    output = tmp_path / "out"
    args = [arg for arg in compare_args(small_xray_dir, output)
            if not arg.startswith("--methods=")]
    done = run_module("tsynd_tf.compare", *args, f"--external_pool={tmp_path}/pool_s{{seed}}.npz",
                      exit_code=2)
    assert ("--methods=baseline,augment,latent_noise,tsynd_mi,diffusion,gan,tsynd_diffusion,"
            "external ") in done.stderr  # the sweep's command, as compare logs it
    assert (f"experiment: error: --external_pool: {tmp_path}/pool_s0.npz does not exist"
            in done.stderr)
    assert not (output / "sweep").exists()
