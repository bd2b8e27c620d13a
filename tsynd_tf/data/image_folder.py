"""A folder of `split/class_name/image` files, e.g. the Kermany chest X-ray folders.

Layout: `root/train/<class>/*.{png,jpg,jpeg}`, `root/test/<class>/...` and optionally
`root/val/<class>/...`. Without a val folder, a seeded validation split is carved from train
by patient: images whose file names share a group (the first match of `group_pattern`, by
default the Kermany chest X-ray patient prefixes personNNN / IM-NNNN / NORMAL2-IM-NNNN) all
go to train or all to validation, and the split is stratified by class (scikit-learn's
StratifiedGroupKFold; validation is one of round(1 / val_fraction) folds). A file name the
pattern does not match is its own group. Without this, 62-64% of the Kermany validation
images had a patient in train and validation AUC read 0.99 against 0.91 on test.

Images of any size, grayscale or RGB, are converted to `channels` and resized to `size` x
`size` (bilinear, aspect ratio not kept: the same as MedMNIST's square images).
EXIF orientation is applied first. 16-bit grayscale PNGs are scaled to 8 bits over their full
range (value / 257), so a 12-bit X-ray stored in 16 bits comes out dark: rescale such files
to their own range before training.
"""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from sklearn.model_selection import StratifiedGroupKFold

from tsynd_tf.data.core import (BINARY, KERMANY_GROUP_PATTERN, MULTI_CLASS, DataError, Dataset,
                                DatasetInfo, Split)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def file_groups(names: list[str], pattern: str) -> list[str]:
    """Each file name's group: the pattern's first capture group (or whole match), or the
    name itself where it does not match or the pattern is ''."""
    if not pattern:
        return list(names)
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise DataError(f"--group_pattern {pattern!r} is not a regular expression ({e}).") from e
    groups = []
    for name in names:
        match = compiled.search(name)
        groups.append(name if match is None else
                      (match.group(1) if compiled.groups else match.group(0)))
    return groups


def shared_groups(files_a: list[str], files_b: list[str], pattern: str) -> set[str]:
    """Groups (patients) with images on both sides of a split."""
    names = lambda files: [Path(f).name for f in files]  # noqa: E731
    return set(file_groups(names(files_a), pattern)) & set(file_groups(names(files_b), pattern))


def carve_validation(names: list[str], labels: np.ndarray, val_fraction: float, seed: int,
                     group_pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices: whole groups to each side, stratified by class."""
    groups = file_groups(names, group_pattern)
    folds = max(2, round(1 / val_fraction))
    per_class = [len({g for g, y in zip(groups, labels) if y == c}) for c in np.unique(labels)]
    if min(per_class) < folds:
        raise DataError(f"train has too few groups per class ({dict(enumerate(per_class))}) "
                        f"to carve a validation split of {val_fraction:g} by group "
                        f"(--group_pattern={group_pattern!r}): add images, raise "
                        "--val_fraction, pass --group_pattern='' (one group per image), or "
                        "provide a val/ folder.")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train_idx), np.sort(val_idx)


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} is not a folder. An image folder dataset needs "
                        "train/<class>/ and test/<class>/ subfolders of PNG/JPEG files.")
    classes = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(split_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")
    }
    empty = [name for name, files in classes.items() if not files]
    if not classes or empty:
        raise DataError(f"{split_dir} has no images" + (f" in {empty}" if empty else "") +
                        f": put {'/'.join(IMAGE_SUFFIXES)} files in one subfolder per class.")
    return classes


def _check_same_classes(split_dir: Path, found: list[str], class_names: list[str]) -> None:
    if found != class_names:
        raise DataError(f"{split_dir} has classes {found} but train has {class_names}; every "
                        "split needs the same class folders.")


def check_layout(root: str | Path) -> list[str]:
    """The class names of an image folder, from its layout alone (no image is read):
    DataError when the folder, train/ or test/ is missing, train/ has fewer than two class
    folders, a class folder holds no image, or test/ (or val/) has other classes. The
    checks load_image_folder makes first; compare makes them before a sweep starts."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist (--data_dir).")
    class_names = sorted(_class_files(root / "train"))
    if len(class_names) < 2:
        raise DataError(f"{root / 'train'} has one class folder ({class_names}); a "
                        "classifier needs at least two.")
    for split in ("test", "val"):
        if split == "test" or (root / split).is_dir():
            _check_same_classes(root / split, sorted(_class_files(root / split)), class_names)
    return class_names


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how PIL opens 16-bit grayscale PNGs


def _read_image(path: Path, size: int, channels: int) -> np.ndarray:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # phone/camera exports store rotation in EXIF
        if image.mode in SIXTEEN_BIT_MODES:
            # PIL's convert("L") clips 16-bit values at 255 (a white image); rescale instead.
            wide = np.asarray(image, dtype=np.float64) / 257.0
            image = Image.fromarray(np.clip(np.round(wide), 0, 255).astype(np.uint8))
        image = image.convert("L" if channels == 1 else "RGB")
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def _unreadable_reason(path: Path, error: Exception) -> str:
    if not path.exists():
        return "no such file"
    if isinstance(error, Image.DecompressionBombError):
        return (f"over PIL's decompression-bomb limit ({error}); downscale the file, or raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    return f"not a readable PNG/JPEG image ({type(error).__name__}: {error})"


def read_images(paths: list[Path], size: int, channels: int
                ) -> tuple[np.ndarray, dict[Path, str]]:
    """Decodes and resizes images; returns (images of the readable ones, {unreadable path:
    why})."""
    def read(path):
        try:
            return _read_image(path, size, channels)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                Image.DecompressionBombError) as error:
            return _unreadable_reason(path, error)

    with concurrent.futures.ThreadPoolExecutor() as pool:  # PIL decodes outside the GIL
        results = list(pool.map(read, paths))
    bad = {p: r for p, r in zip(paths, results) if isinstance(r, str)}
    arrays = [r for r in results if not isinstance(r, str)]
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, channels), np.uint8)
    return images, bad


def _load_split(split_dir: Path, class_names: list[str], size: int, channels: int
                ) -> tuple[Split, list[str]]:
    classes = _class_files(split_dir)
    _check_same_classes(split_dir, sorted(classes), class_names)
    paths = [p for name in class_names for p in classes[name]]
    labels = np.array([i for i, name in enumerate(class_names) for _ in classes[name]])
    images, bad = read_images(paths, size, channels)
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in list(bad.items())[:10]) + \
            (" ..." if len(bad) > 10 else "")
        raise DataError(f"{len(bad)} unreadable image file(s) in {split_dir}: {shown}. "
                        "Remove or replace them.")
    names = [str(p.relative_to(split_dir.parent)) for p in paths]
    return Split(images, np.eye(len(class_names), dtype=np.float32)[labels]), names


def load_image_folder(root: str | Path, size: int = 28, channels: int = 1,
                      val_fraction: float = 0.1, seed: int = 0,
                      group_pattern: str = KERMANY_GROUP_PATTERN) -> Dataset:
    root = Path(root).expanduser()
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1); got {val_fraction}.")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3; got {channels}.")
    class_names = check_layout(root)
    train, train_files = _load_split(root / "train", class_names, size, channels)
    test, test_files = _load_split(root / "test", class_names, size, channels)
    if (root / "val").is_dir():
        val, val_files = _load_split(root / "val", class_names, size, channels)
    else:
        labels = train.targets.argmax(axis=1)
        train_idx, val_idx = carve_validation([Path(f).name for f in train_files], labels,
                                              val_fraction, seed, group_pattern)
        val, val_files = train.subset(val_idx), [train_files[i] for i in val_idx]
        train, train_files = train.subset(train_idx), [train_files[i] for i in train_idx]
    info = DatasetInfo(name=root.name, task=BINARY if len(class_names) == 2 else MULTI_CLASS,
                       class_names=tuple(class_names), size=size, channels=channels)
    return Dataset(info, train, val, test,
                   files={"train": train_files, "val": val_files, "test": test_files},
                   source=root)
