"""Data: MedMNIST files, image folders, low-data subsets and tf.data pipelines.

Every loader returns a `Dataset`: uint8 images (N, H, W, C) and one-hot/multi-hot float
targets (N, K) per split, plus `DatasetInfo` metadata (task type, class names) that the
losses, metrics and uncertainty code read.

The image-folder reader (PIL, scikit-learn) and the tf.data pipelines (TensorFlow) are
imported on first use of one of their names: the training config validates datasets and
sizes with this package, and a bad flag is refused before TensorFlow is imported.
"""

from __future__ import annotations

import importlib

from tsynd_tf.data.core import (FOLDER, KERMANY_GROUP_PATTERN, DataError, Dataset, DatasetInfo,
                                Split)
from tsynd_tf.data.fingerprint import check_same_data, fingerprint
from tsynd_tf.data.medmnist_data import (
    MEDMNIST_SIZES,
    available_datasets,
    load_medmnist,
    load_npz,
    medmnist_path,
    resolve_data_dir,
)
from tsynd_tf.data.subsets import subsample_indices

# Names of the heavy submodules, imported when first read (PEP 562).
_LAZY = {
    "load_image_folder": "image_folder", "shared_groups": "image_folder",
    "classifier_batches": "pipeline", "convert_channels": "pipeline", "for_fit": "pipeline",
    "make_pipeline": "pipeline", "to_uint8": "pipeline",
}

__all__ = [
    "DataError", "Dataset", "DatasetInfo", "Split", "KERMANY_GROUP_PATTERN",
    "load_image_folder", "shared_groups", "MEDMNIST_SIZES", "available_datasets",
    "load_medmnist", "load_npz", "medmnist_path", "resolve_data_dir", "classifier_batches",
    "convert_channels", "for_fit", "make_pipeline", "to_uint8", "subsample_indices", "FOLDER",
    "load_dataset", "load_configured", "fingerprint", "check_same_data",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name: str, size: int, data_dir: str | None = None, channels: int = 1,
                 val_fraction: float = 0.1, seed: int = 0,
                 group_pattern: str = KERMANY_GROUP_PATTERN) -> Dataset:
    """A MedMNIST dataset by name, or with name 'folder' the image folder at data_dir."""
    if name == FOLDER:
        if not data_dir:
            raise DataError("--dataset=folder needs --data_dir=<folder with train/ and test/ "
                            "class subfolders>.")
        from tsynd_tf.data.image_folder import load_image_folder

        return load_image_folder(data_dir, size, channels, val_fraction=val_fraction, seed=seed,
                                 group_pattern=group_pattern)
    return load_medmnist(name, size, data_dir)


def load_configured(config) -> Dataset:
    """The dataset a training config (config.TrainConfig) names, split as it says."""
    return load_dataset(config.dataset, config.size, config.data_dir, config.channels,
                        config.val_fraction, config.seed, config.group_pattern)
