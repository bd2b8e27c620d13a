"""Data: MedMNIST files, image folders, low-data subsets and tf.data pipelines.

Every loader returns a `Dataset`: uint8 images (N, H, W, C) and one-hot/multi-hot float
targets (N, K) per split, plus `DatasetInfo` metadata (task type, class names) that the
losses, metrics and uncertainty code read.
"""

from tsynd_tf.data.core import DataError, Dataset, DatasetInfo, Split
from tsynd_tf.data.fingerprint import check_same_data, fingerprint
from tsynd_tf.data.image_folder import KERMANY_GROUP_PATTERN, load_image_folder, shared_groups
from tsynd_tf.data.medmnist_data import (
    MEDMNIST_SIZES,
    available_datasets,
    load_medmnist,
    load_npz,
    medmnist_path,
    resolve_data_dir,
)
from tsynd_tf.data.pipeline import (
    classifier_batches,
    convert_channels,
    for_fit,
    make_pipeline,
    to_uint8,
)
from tsynd_tf.data.subsets import subsample_indices

__all__ = [
    "DataError", "Dataset", "DatasetInfo", "Split", "KERMANY_GROUP_PATTERN",
    "load_image_folder", "shared_groups", "MEDMNIST_SIZES", "available_datasets",
    "load_medmnist", "load_npz", "medmnist_path", "resolve_data_dir", "classifier_batches",
    "convert_channels", "for_fit", "make_pipeline", "to_uint8", "subsample_indices", "FOLDER",
    "load_dataset", "fingerprint", "check_same_data",
]


FOLDER = "folder"  # --dataset value for an image folder at --data_dir


def load_dataset(name: str, size: int, data_dir: str | None = None, channels: int = 1,
                 val_fraction: float = 0.1, seed: int = 0,
                 group_pattern: str = KERMANY_GROUP_PATTERN) -> Dataset:
    """A MedMNIST dataset by name, or with name 'folder' the image folder at data_dir."""
    if name == FOLDER:
        if not data_dir:
            raise DataError("--dataset=folder needs --data_dir=<folder with train/ and test/ "
                            "class subfolders>.")
        return load_image_folder(data_dir, size, channels, val_fraction=val_fraction, seed=seed,
                                 group_pattern=group_pattern)
    return load_medmnist(name, size, data_dir)
