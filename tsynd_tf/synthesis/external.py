"""`external`: the user's own synthetic images, trained on under the same protocol.

A user who trained a generator elsewhere (a diffusion model on a GPU, DreamBooth, a
commercial tool) brings its samples with --external_pool: an .npz with `images` (uint8
N x H x W [x C]) and `labels` (N class indices), or a folder with one subfolder of PNGs per
class (named by the dataset's class names or indices). `{seed}` in the path is replaced by
--seed, so each seed's run reads the samples of the generator trained on its labelled
subset. The run then trains exactly as the built-in methods do: the same schedule, batch
size, steps and synthetic share; its pools are measured with the same quality metrics.

Checked when the run starts, before any training: the file exists and loads; pixels are
uint8 (or finite values in [0, 255] that are whole numbers); images have the dataset's size
and channels; every label is one of the dataset's classes; it holds at least one round's
pool. An .npz that records the generator's `labelled_indices` must name only images of the
run's labelled subset: a generator that saw other training images would carry labels the
baseline never had.

Round r takes the next pool-size images of a seeded permutation of the file (without
replacement while the file lasts; then, with a warning, the permutation starts again), so a
regenerated pool is the same pool. The file's SHA-256 is recorded in config.json; resuming
with other content is refused.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tsynd_tf import data
from tsynd_tf.synthesis.base import Pool, SynthesisMethod

log = logging.getLogger(__name__)

CHANNELS_OF_MODE = {"L": 1, "RGB": 3}


def resolve(pattern: str, seed: int) -> Path:
    """The --external_pool path of a seed; DataError when there is nothing there."""
    path = Path(pattern.replace("{seed}", str(seed))).expanduser()
    if not path.exists():
        raise data.DataError(f"--external_pool: {path} does not exist; pass an .npz (images, "
                             "labels) or a folder of <class>/*.png ({seed} becomes --seed).")
    return path


def sha256(path: Path) -> str:
    """The content hash of a file, or of a folder's PNGs (their relative names and bytes)."""
    digest = hashlib.sha256()
    files = sorted(path.rglob("*.png")) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def load(path: Path, info: data.DatasetInfo) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images uint8 (N, H, W, C), labels int64 (N,), other arrays) of an .npz or a PNG
    folder, checked against the dataset (DataError names the file and the fix)."""
    images, labels, extra = _read_folder(path, info) if path.is_dir() else _read_npz(path)
    if images.ndim == 3:
        images = images[..., None]
    expected = (info.size, info.size, info.channels)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise data.DataError(f"--external_pool: {path} holds images of shape "
                             f"{images.shape[1:]}; {info.name} at --size={info.size} needs "
                             f"{expected}: resize or convert them to that.")
    return _checked_pixels(images, path), _checked_labels(labels, len(images), path, info), extra


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as e:
        raise data.DataError(f"--external_pool: {path} is not a readable .npz ({e}).") from None
    missing = {"images", "labels"} - set(arrays)
    if missing:
        raise data.DataError(f"--external_pool: {path} has no {sorted(missing)} array: it "
                             f"needs 'images' (N, H, W[, C]) and 'labels' (N,); it has "
                             f"{sorted(arrays)}.")
    return arrays.pop("images"), arrays.pop("labels"), arrays


def _read_folder(path: Path, info: data.DatasetInfo) -> tuple[np.ndarray, np.ndarray, dict]:
    images, labels = [], []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        if folder.name in info.class_names:
            label = info.class_names.index(folder.name)
        elif folder.name.isdigit():
            label = int(folder.name)
        else:
            raise data.DataError(f"--external_pool: {folder} names no class of {info.name}: "
                                 f"name class folders {list(info.class_names)} or 0.."
                                 f"{info.num_classes - 1}.")
        for file in sorted(folder.glob("*.png")):
            try:
                with Image.open(file) as image:
                    if image.mode not in CHANNELS_OF_MODE:
                        raise data.DataError(
                            f"--external_pool: {file} is a {image.mode} image; save it as "
                            "8-bit grayscale (L) or RGB PNG.")
                    images.append(np.asarray(image, dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as e:
                raise data.DataError(f"--external_pool: {file} is not a readable PNG "
                                     f"({e}).") from None
            labels.append(label)
    if not images:
        raise data.DataError(f"--external_pool: {path} holds no <class>/*.png images.")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise data.DataError(f"--external_pool: {path} mixes image shapes {sorted(shapes)}; "
                             "every image needs the dataset's size and channels.")
    return np.stack(images), np.asarray(labels, np.int64), {}


def _checked_pixels(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    values = images.astype(np.float64)
    if (not np.isfinite(values).all() or values.min() < 0 or values.max() > 255 or
            not np.array_equal(values, np.round(values))):
        raise data.DataError(f"--external_pool: {path} has {images.dtype} pixels that are not "
                             "whole numbers in [0, 255] (NaN, negative, above 255 or "
                             "fractional): save uint8 images, 0-255.")
    return values.astype(np.uint8)


def _checked_labels(labels: np.ndarray, n: int, path: Path,
                    info: data.DatasetInfo) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise data.DataError(f"--external_pool: {path} has labels of shape {labels.shape} "
                             f"and type {labels.dtype}; it needs one integer class index per "
                             f"image ({n}).")
    unknown = sorted(set(labels.tolist()) - set(range(info.num_classes)))
    if unknown:
        raise data.DataError(f"--external_pool: {path} has labels {unknown[:5]} outside "
                             f"{info.name}'s classes 0..{info.num_classes - 1} "
                             f"({list(info.class_names)}).")
    return labels.astype(np.int64)


class External(SynthesisMethod):
    """Pools drawn from the user's file; no generator to train."""

    def __init__(self, context):
        super().__init__(context)
        config, info = context.config, context.info
        if info.multilabel:
            raise data.DataError(f"--method=external takes one class per image; {info.name} "
                                 "is multi-label.")
        self.path = resolve(config.external_pool, config.seed)
        self.images, self.labels, extra = load(self.path, info)
        if "labelled_indices" in extra:
            unseen = np.setdiff1d(extra["labelled_indices"], context.labelled_indices)
            if unseen.size:
                raise data.DataError(
                    f"--external_pool: {self.path} records a generator trained on "
                    f"{unseen.size} training images outside this run's labelled subset (e.g. "
                    f"{unseen[:5].tolist()}): train it on the --seed={config.seed} subset "
                    "(subset.json), or pass the file of that seed.")
        pool_size = context.pool_size
        if len(self.images) < pool_size:
            raise data.DataError(f"--external_pool: {self.path} holds {len(self.images)} "
                                 f"images; one round's pool needs {pool_size}: lower "
                                 "--synthetic_multiple or raise --rounds, or bring more.")
        self.order = np.random.default_rng(config.stream_seed(0)).permutation(len(self.images))
        needed = pool_size * config.rounds
        if needed > len(self.images):
            log.warning("--external_pool: %s holds %d images, the %d rounds need %d: images "
                        "are reused after the first %d.", self.path, len(self.images),
                        config.rounds, needed, len(self.images))
        if context.run_dir is not None:
            context.run_dir.record_input("external_pool", {"path": str(self.path.resolve()),
                                                           "sha256": sha256(self.path)})

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        positions = np.arange(round_index * n, (round_index + 1) * n) % len(self.order)
        chosen = self.order[positions]
        targets = np.eye(self.context.info.num_classes, dtype=np.float32)[self.labels[chosen]]
        return Pool(self.images[chosen], targets, {"external_indices": chosen})
