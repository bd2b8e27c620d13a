"""The image-folder loader on the real chest X-ray folder (Kermany et al.): counts, the
validation split carved by patient, channels, and every way a user's folder can be wrong.

Damaged folders are derived in tmp_path from the real files (truncated, renamed, re-saved);
nothing here stands in random arrays for a dataset.
"""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pytest

from tsynd_tf.data import DataError, load_image_folder
from tsynd_tf.data.image_folder import read_images, shared_groups

XRAY_CLASSES = ("NORMAL", "PNEUMONIA")


# --------------------------------------------------------------------------------------------
# 1. Reading the folder
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def chest_xray(chest_xray_dir):
    return load_image_folder(chest_xray_dir, size=28, channels=1, val_fraction=0.1, seed=0)


def test_chest_xray_folder_counts_and_shapes(chest_xray):
    info = chest_xray.info
    assert info.class_names == XRAY_CLASSES
    assert info.task == "binary-class"
    assert (info.size, info.channels, info.name) == (28, 1, "chest_xray")
    for split in (chest_xray.train, chest_xray.val, chest_xray.test):
        assert split.images.dtype == np.uint8
        assert split.images.shape[1:] == (28, 28, 1)
        assert split.targets.shape == (len(split), 2)
        np.testing.assert_array_equal(split.targets.sum(axis=1), 1.0)
    assert (chest_xray.train.class_counts() + chest_xray.val.class_counts()).tolist() \
        == [1341, 3875]
    assert chest_xray.test.class_counts().tolist() == [234, 390]
    # Val carved from train, stratified: 10% of 5216 rounded up, per class within 1 image.
    assert len(chest_xray.val) == math.ceil(0.1 * 5216)
    assert np.all(np.abs(chest_xray.val.class_counts() - 0.1 * np.array([1341, 3875])) <= 1)


def test_image_folder_val_split_is_seeded(small_xray_dir):
    a = load_image_folder(small_xray_dir, 28, 1, val_fraction=0.1, seed=0)
    b = load_image_folder(small_xray_dir, 28, 1, val_fraction=0.1, seed=0)
    c = load_image_folder(small_xray_dir, 28, 1, val_fraction=0.1, seed=1)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
        np.testing.assert_array_equal(getattr(a, split).targets, getattr(b, split).targets)
    assert a.val.class_counts().min() > 0 and len(a.val) + len(a.train) == 40  # stratified
    assert not np.array_equal(a.val.images, c.val.images)


def _kermany_train_names(chest_xray_dir):
    names, labels = [], []
    for label, folder in enumerate(sorted((chest_xray_dir / "train").iterdir())):
        files = sorted(p.name for p in folder.iterdir())
        names += files
        labels += [label] * len(files)
    return names, np.array(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kermany_validation_split_keeps_patients_whole(chest_xray_dir, seed):
    """The real folder's 5,216 training files: the split carved by patient shares none with
    train and keeps both classes; an image-level split (each file its own group) would share
    hundreds, which is what the default pattern is for."""
    from tsynd_tf.data.image_folder import KERMANY_GROUP_PATTERN, carve_validation, file_groups

    names, labels = _kermany_train_names(chest_xray_dir)
    assert len(set(file_groups(names, KERMANY_GROUP_PATTERN))) == 2846  # patients
    train, val = carve_validation(names, labels, 0.1, seed, KERMANY_GROUP_PATTERN)
    pick = lambda idx: [names[i] for i in idx]  # noqa: E731
    assert shared_groups(pick(train), pick(val), KERMANY_GROUP_PATTERN) == set()
    assert sorted(np.concatenate([train, val])) == list(range(len(names)))
    assert set(labels[val]) == {0, 1} and 0.08 < len(val) / len(names) < 0.12
    train, val = carve_validation(names, labels, 0.1, seed, group_pattern="")
    assert len(shared_groups(pick(train), pick(val), KERMANY_GROUP_PATTERN)) > 200


def test_file_groups_and_bad_patterns():
    from tsynd_tf.data.image_folder import KERMANY_GROUP_PATTERN, file_groups

    names = ["person12_virus_3.jpeg", "person12_bacteria_9.jpeg", "IM-0115-0001.jpeg",
             "NORMAL2-IM-1427-0001.jpeg", "scan_7.png"]
    assert file_groups(names, KERMANY_GROUP_PATTERN) == [
        "person12", "person12", "IM-0115", "NORMAL2-IM-1427", "scan_7.png"]
    assert file_groups(names, r"^[a-z]+") == ["person", "person", "IM-0115-0001.jpeg",
                                              "NORMAL2-IM-1427-0001.jpeg", "scan"]
    with pytest.raises(DataError, match="--group_pattern"):
        file_groups(names, "person(")


def test_image_folder_three_channels(small_xray_dir):
    data = load_image_folder(small_xray_dir, size=28, channels=3)
    assert data.info.channels == 3
    assert data.train.images.shape[1:] == data.val.images.shape[1:] == (28, 28, 3)
    assert len(data.train) + len(data.val) == 40
    assert data.test.images.shape == (10, 28, 28, 3)
    assert data.train.images.dtype == np.uint8


def test_image_folder_uses_existing_val_folder(small_xray_dir, tmp_path):
    root = tmp_path / "xray"
    shutil.copytree(small_xray_dir, root)
    shutil.copytree(root / "test", root / "val")
    data = load_image_folder(root, 28, 1)
    assert len(data.train) == 40 and len(data.val) == 10 and len(data.test) == 10
    np.testing.assert_array_equal(data.val.images, data.test.images)

# --------------------------------------------------------------------------------------------
# 2. Bad input: each error names the file or flag and the fix
# --------------------------------------------------------------------------------------------

def test_empty_image_folder(tmp_path):
    for split in ("train", "test"):
        for name in XRAY_CLASSES:
            (tmp_path / split / name).mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'train'} has no images in "
                                                  "['NORMAL', 'PNEUMONIA']")):
        load_image_folder(tmp_path)


def test_image_folder_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="has no images: put .png/.jpg/.jpeg files in one "
                                        "subfolder per class"):
        load_image_folder(tmp_path)


def test_nonexistent_image_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(f"Image folder {missing} does not exist")):
        load_image_folder(missing)


def test_image_folder_without_test_split(small_xray_dir, tmp_path):
    shutil.copytree(small_xray_dir / "train", tmp_path / "train")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'test'} is not a folder")):
        load_image_folder(tmp_path)


def test_unreadable_image_is_named(small_xray_dir, tmp_path):
    root = tmp_path / "xray"
    shutil.copytree(small_xray_dir, root)
    (root / "train" / "NORMAL" / "broken.jpg").write_bytes(b"this is not a JPEG" * 10)
    with pytest.raises(DataError, match=r"1 unreadable image file\(s\) in .*train: "
                                        r".*NORMAL/broken\.jpg \(not a readable PNG/JPEG "
                                        r"image \(UnidentifiedImageError: .*\)\)\. Remove or "
                                        r"replace them"):
        load_image_folder(root)


def test_truncated_real_jpeg_is_unreadable(small_xray_dir, tmp_path):
    root = tmp_path / "xray"
    shutil.copytree(small_xray_dir, root)
    victim = sorted((root / "test" / "PNEUMONIA").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(DataError, match=re.escape(f"unreadable image file(s) in "
                                                  f"{root / 'test'}: {victim}")):
        load_image_folder(root)


def test_exif_orientation_is_applied(chest_xray_dir, tmp_path):
    """A real X-ray stored rotated with an EXIF 'rotate 90 CW' tag reads as the upright one."""
    from PIL import Image

    src = sorted((chest_xray_dir / "test" / "NORMAL").iterdir())[0]
    with Image.open(src) as image:
        upright = image.convert("L").crop((0, 0, 224, 160))  # not square: rotation shows
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera would write
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "tagged.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    stored.save(tmp_path / "untagged.png")
    images, bad = read_images([tmp_path / n for n in ("tagged.png", "upright.png",
                                                       "untagged.png")], 28, 1)
    assert bad == {}
    np.testing.assert_array_equal(images[0], images[1])
    assert not np.array_equal(images[2], images[1])


def test_sixteen_bit_png_is_rescaled_not_clipped(chest_xray_dir, tmp_path):
    from PIL import Image

    src = sorted((chest_xray_dir / "test" / "PNEUMONIA").iterdir())[0]
    with Image.open(src) as image:
        gray = np.asarray(image.convert("L"))
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # full range
    with Image.open(tmp_path / "sixteen.png") as image:
        assert image.mode == "I;16"
    for channels in (1, 3):
        images, bad = read_images([tmp_path / "eight.png", tmp_path / "sixteen.png"], 64,
                                  channels)
        assert bad == {}
        np.testing.assert_array_equal(images[1], images[0])
        assert images[1].max() < 255  # clipping would have turned the X-ray white


def test_decompression_bomb_is_unreadable_with_the_fix(small_xray_dir, monkeypatch):
    from PIL import Image

    paths = sorted((small_xray_dir / "test" / "NORMAL").iterdir())[:2]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 224 * 224 // 4)  # 224 px is over 2x this
    images, bad = read_images(paths + [paths[0].with_name("missing.jpeg")], 28, 1)
    assert len(images) == 0
    assert list(bad) == paths + [paths[0].with_name("missing.jpeg")]
    for path in paths:
        assert "decompression-bomb limit" in bad[path]
        assert "raise PIL.Image.MAX_IMAGE_PIXELS" in bad[path]
    assert bad[paths[0].with_name("missing.jpeg")] == "no such file"


def test_mismatched_class_folders(small_xray_dir, tmp_path):
    root = tmp_path / "xray"
    shutil.copytree(small_xray_dir, root)
    (root / "test" / "PNEUMONIA").rename(root / "test" / "VIRAL")
    with pytest.raises(DataError, match=re.escape("has classes ['NORMAL', 'VIRAL'] but train "
                                                  "has ['NORMAL', 'PNEUMONIA']")):
        load_image_folder(root)


def test_single_class_folder(small_xray_dir, tmp_path):
    (tmp_path / "train").mkdir()
    shutil.copytree(small_xray_dir / "train" / "NORMAL", tmp_path / "train" / "NORMAL")
    with pytest.raises(DataError, match="has one class folder"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\); got 0.0"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\); got 1.0"),
    ({"channels": 2}, "channels must be 1 or 3; got 2"),
])
def test_image_folder_bad_arguments(small_xray_dir, kwargs, message):
    with pytest.raises(DataError, match=message):
        load_image_folder(small_xray_dir, **kwargs)
