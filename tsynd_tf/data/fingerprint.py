"""A cheap fingerprint of the data a run trains on, so that resuming, evaluating or
exporting a run against other data is refused instead of mixing two datasets in one run.

The fingerprint names where the data was read from (`source`), how many files and bytes
that was (a MedMNIST .npz: one file; an image folder: every file of its train/val/test
splits), and a SHA-256 over the sorted list of those files with their sizes and over every
split's arrays as loaded (images and targets, in split order; so it also covers which
images the validation split was carved from). Two fingerprints are the same data when their
SHA-256 agree: a folder moved or renamed with the same files in it is the same data, a
folder with one image replaced is not. Measured on PneumoniaMNIST at 28 px (5,856 images):
about 5 ms (`hashlib` over 4.6 MB of arrays), against ~1 s to load the file.

The arrays are hashed as decoded: the same JPEG files decoded by another Pillow/libjpeg
build can differ by a grey level, and then count as other data (the message says so).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tsynd_tf.data.core import DataError, Dataset

SPLITS = ("train", "val", "test")


def _source_files(dataset: Dataset) -> list[tuple[str, int]]:
    """(name, size in bytes) of every file the dataset was read from, sorted."""
    source = Path(dataset.source)
    if dataset.files is None:
        return [(source.name, source.stat().st_size)]
    names = sorted({name for split in SPLITS for name in dataset.files[split]})
    return [(name, (source / name).stat().st_size) for name in names]


def fingerprint(dataset: Dataset) -> dict:
    """{'source', 'files', 'bytes', 'sha256'} of a loaded dataset (see the module doc)."""
    if dataset.source is None:
        raise ValueError("The dataset does not say where it was read from (Dataset.source); "
                         "load it with data.load_dataset.")
    files = _source_files(dataset)
    digest = hashlib.sha256(json.dumps(files).encode())
    for name in SPLITS:
        split = getattr(dataset, name)
        for array in (split.images, split.targets):
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return {"source": str(Path(dataset.source).resolve()), "files": len(files),
            "bytes": sum(size for _, size in files), "sha256": digest.hexdigest()}


def describe(fingerprint: dict) -> str:
    return (f"sha256 {fingerprint['sha256'][:16]}... ({fingerprint['files']} file(s), "
            f"{fingerprint['bytes']} bytes, from {fingerprint['source']})")


def check_same_data(recorded: dict | None, found: dict, run, fix: str) -> None:
    """DataError unless `found` is the data whose fingerprint the run at `run` recorded.
    A run recorded before fingerprints existed (`recorded` None) is not checked."""
    if recorded is None or recorded.get("sha256") == found["sha256"]:
        return
    same_files = (recorded.get("files"), recorded.get("bytes")) == (found["files"],
                                                                     found["bytes"])
    raise DataError(
        f"The data at {found['source']} is not the data the run at {run} was trained on: "
        f"the run recorded {describe(recorded)}, the data found has {describe(found)}"
        + (" (the same number of files and bytes, other content or another decoder)"
           if same_files else "") + f". {fix}")
