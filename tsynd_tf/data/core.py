"""Containers shared by every data source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tsynd_tf.errors import DataError  # noqa: F401 - data.DataError

# MedMNIST's task strings (medmnist.INFO[...]["task"]). Ordinal regression (RetinaMNIST) is
# trained as multi-class, as MedMNIST's own baselines do.
BINARY = "binary-class"
MULTI_CLASS = "multi-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
TASKS = (BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL)


FOLDER = "folder"  # --dataset value for an image folder at --data_dir
# Kermany et al.'s file names: person123_bacteria_4.jpeg, IM-0115-0001.jpeg,
# NORMAL2-IM-1427-0001.jpeg; the captured prefix names the patient (image_folder.py).
KERMANY_GROUP_PATTERN = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)[_-]"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str
    class_names: tuple[str, ...]
    size: int
    channels: int

    def __post_init__(self):
        if self.task not in TASKS:
            raise DataError(f"Unknown task type {self.task!r}; expected one of {TASKS}.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def multilabel(self) -> bool:
        """Sigmoid outputs and per-label Bernoulli uncertainty instead of one softmax."""
        return self.task == MULTI_LABEL

    @property
    def evaluator_task(self) -> str:
        """Task string that medmnist.evaluator.getACC/getAUC expect."""
        return self.task


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W, C)
    targets: np.ndarray  # float32, (N, K): one-hot, or multi-hot for multi-label tasks

    def __post_init__(self):
        if self.images.ndim != 4:
            raise DataError(f"Images must be (N, H, W, C); got shape {self.images.shape}.")
        if len(self.images) != len(self.targets):
            raise DataError(
                f"{len(self.images)} images but {len(self.targets)} labels: the two must match.")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> "Split":
        return Split(self.images[indices], self.targets[indices])

    def class_counts(self) -> np.ndarray:
        return self.targets.sum(axis=0).astype(np.int64)

    @staticmethod
    def joined(splits: list) -> "Split":
        """The images and targets of several splits (or pools) as one Split."""
        return Split(np.concatenate([s.images for s in splits]),
                     np.concatenate([s.targets for s in splits]))


@dataclasses.dataclass
class Dataset:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    # Image folders: each split's file names (relative to the folder), in split order, so a
    # run directory can record which file went where; None for MedMNIST's arrays.
    files: dict[str, list[str]] | None = None
    # Where it was read from: the MedMNIST .npz file or the image folder (data.fingerprint).
    source: Path | None = None
