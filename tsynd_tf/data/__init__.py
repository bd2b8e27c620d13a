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
    "convert_channels", "make_pipeline", "subsample_indices",
]
