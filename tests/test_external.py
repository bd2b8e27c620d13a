"""--method=external on the samples of a GPU-trained DDPM in ../shared/data/external_pools:
pools drawn from the file, its content recorded, and every bad file refused before any
training, with the flag and the file named."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import TEST_DATA, run_module

POOLS = TEST_DATA / "external_pools" / "pneumoniamnist_10pct"
PATTERN = str(POOLS / "ddpm_gpu_s{seed}.npz")
# PneumoniaMNIST 10% at seed 0: the 471 labelled images the pools' generator saw.
SHORT = ["--method=external", f"--external_pool={PATTERN}", "--train_fraction=0.1",
         "--initial_epochs=1", "--rounds=2", "--epochs_per_round=1", "--synthetic_multiple=1",
         "--steps_per_epoch=2", "--pool_quality=false", "--export_dir=", "--verbose=2"]


def external_config(tmp_path, medmnist_dir, **overrides):
    from tsynd_tf.config import TrainConfig

    return TrainConfig(**{**dict(
        method="external", external_pool=PATTERN, train_fraction=0.1, initial_epochs=1,
        rounds=2, epochs_per_round=1, synthetic_multiple=1, steps_per_epoch=2,
        pool_quality=False, export_dir="", verbose=0, data_dir=str(medmnist_dir),
        output_dir=str(tmp_path / "run")), **overrides})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, medmnist_dir):
    run_dir = tmp_path_factory.mktemp("external") / "run"
    run_module("tsynd_tf.train", *SHORT, f"--data_dir={medmnist_dir}",
               f"--output_dir={run_dir}")
    return run_dir


def test_pools_are_the_files_images_without_replacement(finished):
    with np.load(POOLS / "ddpm_gpu_s0.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    seen = []
    for name in ("round_00.npz", "round_01.npz"):
        with np.load(finished / "synthetic" / name) as pool:
            chosen = pool["external_indices"]
            np.testing.assert_array_equal(pool["images"], images[chosen])
            np.testing.assert_array_equal(pool["targets"].argmax(1), labels[chosen])
            seen.extend(chosen.tolist())
    assert len(seen) == 2 * 236 and len(set(seen)) == len(seen)  # no image twice
    results = json.loads((finished / "results.json").read_text())
    assert results["method"] == "external" and results["num_synthetic"] == 2 * 236
    recorded = json.loads((finished / "config.json").read_text())["inputs"]["external_pool"]
    assert recorded["path"].endswith("ddpm_gpu_s0.npz") and len(recorded["sha256"]) == 64


def test_resuming_with_another_file_is_refused_and_with_the_same_one_redoes_nothing(
        finished, medmnist_dir, tmp_path):
    again = run_module("tsynd_tf.train", *SHORT, f"--data_dir={medmnist_dir}",
                       f"--output_dir={finished}")
    assert "finished before" in again
    shuffled = _derived_file(tmp_path, images=_IMAGES[::-1], labels=_LABELS[::-1])
    other = run_module("tsynd_tf.train", *SHORT, f"--data_dir={medmnist_dir}",
                       f"--output_dir={finished}", f"--external_pool={shuffled}", exit_code=2)
    assert "--external_pool=" in other.stderr and "ddpm_gpu_s0.npz" in other.stderr
    assert f"{shuffled} holds other images" in other.stderr


def test_synthetic_only_training_takes_the_external_pools(tmp_path, medmnist_dir):
    from tsynd_tf import run_parts, training
    from tsynd_tf.runs import RunDir

    config = external_config(tmp_path, medmnist_dir, train_on="synthetic")
    with run_parts.assemble(config, RunDir(config.output_dir)) as parts:
        results = training.Trainer(parts).run()
    assert results["num_synthetic"] == 2 * 236 and 0 <= results["test/auc"] <= 1


def _derived_file(tmp_path, **change):
    """The seed-0 pool with one thing changed: what a user's export might get wrong."""
    with np.load(POOLS / "ddpm_gpu_s0.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays.update(change)
    path = tmp_path / "pool.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


with np.load(POOLS / "ddpm_gpu_s0.npz") as _npz:
    _IMAGES, _LABELS = _npz["images"], _npz["labels"]
with np.load(POOLS / "ddpm_gpu_s1.npz") as _npz:
    _SEED_1_INDICES = _npz["labelled_indices"]
_WITH_A_NAN = _IMAGES.astype(np.float32)
_WITH_A_NAN[7, 3, 3, 0] = np.nan


@pytest.mark.parametrize("change, message", [
    ({"images": _IMAGES[:, :27, :27]}, "shape \\(27, 27, 1\\).*needs \\(28, 28, 1\\)"),
    ({"images": np.repeat(_IMAGES, 3, axis=-1)}, "shape \\(28, 28, 3\\)"),
    ({"labels": np.where(_LABELS == 1, 2, 0)}, "labels \\[2\\] outside"),
    ({"images": _WITH_A_NAN}, "not whole numbers in \\[0, 255\\]"),
    ({"images": _IMAGES[:100], "labels": _LABELS[:100]}, "holds 100 images; one round's pool"),
    ({"labels": None}, "no \\['labels'\\] array"),
    ({"labelled_indices": _SEED_1_INDICES}, "outside this run's labelled subset"),
])
def test_a_bad_file_is_refused_before_any_training(tmp_path, medmnist_dir, change, message):
    from tsynd_tf import run_parts
    from tsynd_tf.data import DataError
    from tsynd_tf.runs import RunDir

    config = external_config(tmp_path, medmnist_dir,
                             external_pool=_derived_file(tmp_path, **change))
    with pytest.raises(DataError, match=message):
        run_parts.assemble(config, RunDir(config.output_dir))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_file_exits_2_naming_it_before_the_run_directory_is_made(tmp_path,
                                                                          medmnist_dir):
    missing = run_module("tsynd_tf.train", *SHORT, f"--data_dir={medmnist_dir}",
                         f"--output_dir={tmp_path / 'run'}",
                         f"--external_pool={tmp_path / 'nowhere_s{seed}.npz'}", exit_code=2)
    assert "nowhere_s0.npz does not exist" in missing.stderr
    assert not (tmp_path / "run").exists()


def test_a_folder_of_class_pngs_is_read_as_the_npz_is(tmp_path, medmnist_dir):
    from PIL import Image

    from tsynd_tf import run_parts
    from tsynd_tf.runs import RunDir

    for label, name in enumerate(("normal", "pneumonia")):
        (tmp_path / "pool" / name).mkdir(parents=True)
        for i in np.flatnonzero(_LABELS == label)[:150]:
            Image.fromarray(_IMAGES[i, ..., 0]).save(tmp_path / "pool" / name / f"{i:04d}.png")
    config = dataclasses.replace(external_config(tmp_path, medmnist_dir),
                                 external_pool=str(tmp_path / "pool"))
    with run_parts.assemble(config, RunDir(config.output_dir)) as parts:
        pool = parts.method.pool(0, parts.classifier, 236)
    first = {(label, i) for label in (0, 1) for i in np.flatnonzero(_LABELS == label)[:150]}
    assert len(pool) == 236 and pool.images.dtype == np.uint8
    by_content = {_IMAGES[i].tobytes(): (label, i) for label, i in first}
    for image, target in zip(pool.images, pool.targets):
        assert by_content[image.tobytes()][0] == target.argmax()
