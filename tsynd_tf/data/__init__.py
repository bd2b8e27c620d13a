"""Data: MedMNIST files, image folders, low-data subsets and tf.data pipelines.

Every loader returns a `Dataset`: uint8 images (N, H, W, C) and one-hot/multi-hot float
targets (N, K) per split, plus `DatasetInfo` metadata (task type, class names) that the
losses, metrics and uncertainty code read.
"""

from tsynd_tf.data.core import DataError, Dataset, DatasetInfo, Split
from tsynd_tf.data.image_folder import load_image_folder
from tsynd_tf.data.medmnist_data import (
    MEDMNIST_SIZES,
    available_datasets,
    load_medmnist,
    load_npz,
    medmnist_path,
    resolve_data_dir,
)
from tsynd_tf.data.pipeline import convert_channels, make_pipeline
from tsynd_tf.data.subsets import subsample_indices

__all__ = [
    "DataError", "Dataset", "DatasetInfo", "Split", "load_image_folder", "MEDMNIST_SIZES",
    "available_datasets", "load_medmnist", "load_npz", "medmnist_path", "resolve_data_dir",
    "convert_channels", "make_pipeline", "subsample_indices", "FOLDER", "load_dataset",
]


FOLDER = "folder"  # --dataset value for an image folder at --data_dir


def load_dataset(name: str, size: int, data_dir: str | None = None, channels: int = 1,
                 val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """A MedMNIST dataset by name, or with name 'folder' the image folder at data_dir."""
    if name == FOLDER:
        if not data_dir:
            raise DataError("--dataset=folder needs --data_dir=<folder with train/ and test/ "
                            "class subfolders>.")
        return load_image_folder(data_dir, size, channels, val_fraction=val_fraction, seed=seed)
    return load_medmnist(name, size, data_dir)
