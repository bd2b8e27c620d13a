"""The generator benches of issue 26 (bench/diffusion_recipes.py, bench/guidance_scan.py):
their refusals before any work, and a tiny guidance scan on real images end to end. They
define the training flags, so they run as subprocesses (as a user runs them)."""

import json

import pytest
from conftest import run_module


@pytest.mark.parametrize("module, flag, value", [
    ("bench.guidance_scan", "scales", "0,-0.1"),
    ("bench.guidance_scan", "scales", "0,lots"),
    ("bench.diffusion_recipes", "recipes", "v1,v9"),
    ("bench.diffusion_recipes", "sampling", "25"),
])
def test_bad_values_exit_2_naming_the_flag_before_any_work(module, flag, value, tmp_path):
    output = run_module(module, f"--{flag}={value}", f"--output={tmp_path / 'out.jsonl'}",
                        f"--grid_dir={tmp_path / 'grids'}", exit_code=2)
    assert f"--{flag}" in output.stderr and value.split(",")[-1] in output.stderr
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_a_guidance_scan_measures_every_scale_from_the_same_start(tmp_path, medmnist_dir,
                                                                  breast_meter):
    output = tmp_path / "scan.jsonl"
    # --cache_dir: breast_meter's (conftest), where BreastMNIST's reference is already
    # trained; the scan's generator is trained into it on the first run, loaded on the second.
    args = ["--dataset=breastmnist", "--train_fraction=0.1", f"--data_dir={medmnist_dir}",
            f"--cache_dir={breast_meter[1]}",
            "--scales=0.1,0.01", "--generator_steps=3", "--initial_epochs=1",
            "--num_images=32", "--ddim_steps=3", f"--output={output}",
            f"--grid_dir={tmp_path / 'grids'}"]
    run_module("bench.guidance_scan", *args, timeout=600)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    scanned = [r for r in rows if "scale" in r]
    assert [r["scale"] for r in scanned] == [0.0, 0.01, 0.1]  # the unguided pool first
    assert all(r["num_images"] == 32 and 0 <= r["label_fidelity"] <= 1 for r in scanned)
    assert len({json.dumps(r["settings"], sort_keys=True) for r in scanned}) == 1
    assert len(list((tmp_path / "grids").glob("*.png"))) == 3
    table = output.with_suffix(".md").read_text()
    assert table.count("**yes**") == 1  # one default per generator
    # Run again: every row is there, nothing is sampled twice.
    run_module("bench.guidance_scan", *args, timeout=600)
    again = [json.loads(line) for line in output.read_text().splitlines()]
    assert len([r for r in again if "scale" in r]) == 3
