"""The generator benches of issue 26 (bench/diffusion_recipes.py, gan_recipes.py,
guidance_scan.py): their refusals before any work, and tiny searches and a tiny guidance scan
on real images end to end. They define the training flags, so they run as subprocesses (as a
user runs them)."""

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


def test_recipe_searches_measure_every_candidate_and_resume(tmp_path, medmnist_dir,
                                                             breast_meter):
    common = ["--dataset=breastmnist", "--train_fraction=0.1", f"--data_dir={medmnist_dir}",
              f"--cache_dir={breast_meter[1]}", "--generator_steps=3", "--num_images=32"]
    # --output in a folder that does not exist yet: the benches make it.
    diffusion = tmp_path / "new" / "diffusion.jsonl"
    args = [*common, "--recipes=v1", "--sampling=3:1,3:0", f"--output={diffusion}",
            f"--grid_dir={tmp_path / 'diffusion'}"]
    run_module("bench.diffusion_recipes", *args, timeout=600)
    rows = [json.loads(line) for line in diffusion.read_text().splitlines()]
    measured = [r for r in rows if "recipe" in r]
    assert [(r["recipe"], r["guidance_scale"]) for r in measured] == [("v1", 1), ("v1", 0)]
    for r in measured:
        fidelity = r["label_fidelity_per_class"]
        assert set(fidelity) == {"malignant", "normal, benign"}
        assert all(0 <= v <= 1 for v in fidelity.values())
    assert len(list((tmp_path / "diffusion").glob("*.png"))) == 2
    assert diffusion.with_suffix(".md").read_text().count("| breastmnist | v1 |") == 2
    run_module("bench.diffusion_recipes", *args, timeout=600)  # again: nothing sampled twice
    assert len([line for line in diffusion.read_text().splitlines() if '"recipe"' in line]) == 2

    gan = tmp_path / "gan.jsonl"
    run_module("bench.gan_recipes", *common, "--recipes=v1", f"--output={gan}",
               f"--grid_dir={tmp_path / 'gan'}", timeout=600)
    (row,) = [json.loads(line) for line in gan.read_text().splitlines() if '"recipe"' in line]
    assert set(row["label_fidelity_per_class"]) == {"malignant", "normal, benign"}
    assert "| breastmnist | v1 |" in gan.with_suffix(".md").read_text()
