"""data.fingerprint on the real files: the same data gives the same fingerprint, one image
changed gives another, and check_same_data refuses the other with both shown."""

import shutil

import numpy as np
import pytest

from tsynd_tf.data import (DataError, Split, check_same_data, fingerprint, load_image_folder,
                           load_medmnist)


def test_a_medmnist_file_fingerprints_the_same_each_time_and_names_its_file(pneumonia,
                                                                           medmnist_dir):
    again = load_medmnist("pneumoniamnist", 28, str(medmnist_dir), download=False)
    first, second = fingerprint(pneumonia), fingerprint(again)
    assert first == second
    npz = medmnist_dir / "pneumoniamnist.npz"
    assert first["source"] == str(npz.resolve())
    assert (first["files"], first["bytes"]) == (1, npz.stat().st_size)
    assert len(first["sha256"]) == 64


def test_one_changed_pixel_of_a_medmnist_split_changes_the_fingerprint(pneumonia):
    images = pneumonia.test.images.copy()
    images[7, 3, 3, 0] ^= 1
    changed = type(pneumonia)(pneumonia.info, pneumonia.train, pneumonia.val,
                              Split(images, pneumonia.test.targets), source=pneumonia.source)
    assert fingerprint(changed)["sha256"] != fingerprint(pneumonia)["sha256"]


def test_an_image_folder_fingerprint_follows_its_files(small_xray_dir, chest_xray_dir,
                                                       tmp_path):
    folder = tmp_path / "xray"
    shutil.copytree(small_xray_dir, folder)
    before = fingerprint(load_image_folder(folder, 28, 1))
    assert fingerprint(load_image_folder(folder, 28, 1)) == before  # nothing changed
    moved = tmp_path / "elsewhere" / "other_name"
    shutil.copytree(folder, moved)
    assert fingerprint(load_image_folder(moved, 28, 1))["sha256"] == before["sha256"]
    assert before["files"] == 50 and before["source"] == str(folder.resolve())

    # One image replaced by another real X-ray of the same class, under the same name.
    target = sorted((folder / "test" / "NORMAL").iterdir())[0]
    replacement = sorted((chest_xray_dir / "test" / "NORMAL").iterdir())[-1]
    shutil.copy(replacement, target)
    after = fingerprint(load_image_folder(folder, 28, 1))
    assert after["sha256"] != before["sha256"] and after["files"] == before["files"]
    with pytest.raises(DataError) as raised:
        check_same_data(before, after, "runs/x", fix="Pass the right --data_dir.")
    message = str(raised.value)
    assert before["sha256"][:16] in message and after["sha256"][:16] in message
    assert "runs/x was trained on" in message and message.endswith("Pass the right --data_dir.")


def test_a_run_recorded_without_a_fingerprint_is_not_checked(pneumonia):
    check_same_data(None, fingerprint(pneumonia), "runs/old", fix="")


def test_the_fingerprint_covers_which_images_validation_was_carved_from(small_xray_dir):
    seed0 = load_image_folder(small_xray_dir, 28, 1, seed=0)
    seed1 = load_image_folder(small_xray_dir, 28, 1, seed=1)
    assert not np.array_equal(seed0.val.images, seed1.val.images)
    assert fingerprint(seed0)["sha256"] != fingerprint(seed1)["sha256"]
