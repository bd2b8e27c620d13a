"""Official MedMNIST .npz files: metadata from `medmnist.INFO`, download with MD5 check.

The dataset table is medmnist's own `INFO` (no copy here). Files follow medmnist's naming
(`{name}.npz` at 28 px, `{name}_{size}.npz` otherwise), so any folder that medmnist itself
uses works as the data root.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from tsynd_tf.data.core import DataError, Dataset, DatasetInfo, MULTI_LABEL, Split
from tsynd_tf.fileio import atomic_path

with contextlib.redirect_stdout(io.StringIO()):
    # medmnist prints "Please install the required packages first" when torch is absent;
    # we use only INFO and the evaluator, which need no torch.
    from medmnist import INFO

MEDMNIST_SIZES = (28, 64, 128, 224)
DATA_DIR_ENV = "TSYND_DATA_DIR"
SPLITS = ("train", "val", "test")


def available_datasets() -> list[str]:
    """The 2D MedMNIST datasets (3D volumes are out of scope)."""
    return [name for name, info in INFO.items() if "3d" not in name]


def resolve_data_dir(data_dir: str | None = None) -> Path:
    """Data root: the explicit argument/flag, else $TSYND_DATA_DIR, else ~/.medmnist."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or Path.home() / ".medmnist").expanduser()


def _check_name_and_size(name: str, size: int) -> dict:
    if name not in available_datasets():
        raise DataError(f"Unknown dataset {name!r}. Valid MedMNIST 2D datasets: "
                        f"{', '.join(available_datasets())} (or use --dataset=folder).")
    if size not in MEDMNIST_SIZES:
        raise DataError(f"Size {size} is not available for {name}; MedMNIST sizes are "
                        f"{MEDMNIST_SIZES}.")
    return INFO[name]


def _suffix(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def medmnist_path(name: str, size: int, data_dir: str | None = None) -> Path:
    _check_name_and_size(name, size)
    return resolve_data_dir(data_dir) / f"{name}{_suffix(size)}.npz"


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, md5: str, path: Path) -> None:
    """Download into a scratch folder beside `path`, check MD5, then publish it atomically
    (fileio.atomic_path): a failed or interrupted download never leaves a file under the
    final name.
    """
    import keras  # Deferred: importing keras costs seconds and is only needed here.

    with atomic_path(path) as tmp, \
            tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as scratch:
        try:
            fetched = keras.utils.get_file(fname=path.name, origin=url, cache_dir=scratch,
                                           cache_subdir=".", file_hash=md5)
        except ValueError as e:  # keras raises ValueError on a hash mismatch
            raise DataError(f"Downloaded {url} but its MD5 is not {md5}: {e}. The file was "
                            "discarded; try again, or fetch it by hand (see below).") from e
        except Exception as e:  # noqa: BLE001 - any network failure ends the same way
            raise DataError(
                f"Could not download {path.name} from {url} ({type(e).__name__}: {e}). "
                f"Without network access, put the official file at {path} "
                f"(md5 {md5}), or point --data_dir / ${DATA_DIR_ENV} at a folder that "
                "holds it.") from e
        os.replace(fetched, tmp)


def load_npz(path: Path, expected: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Reads and validates a MedMNIST-style .npz (keys {split}_images / {split}_labels)."""
    try:
        loaded = np.load(path)
        arrays = None  # np.load returns a bare array for a .npy file
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as npz:
                arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataError(f"No such file: {path}.") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}: {e}). "
                        "Delete it and let it download again, or replace it with the "
                        "official file.") from e
    if arrays is None:
        raise DataError(f"{path} holds a single array, not an .npz archive; a MedMNIST "
                        "file holds train/val/test _images and _labels. Is this the right file?")
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")
               if f"{s}_{k}" not in arrays]
    if missing:
        raise DataError(f"{path} lacks the keys {missing}; a MedMNIST file holds "
                        "train/val/test _images and _labels. Is this the right file?")
    for split in SPLITS:
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise DataError(f"{path}: {split} has {n_images} images but {n_labels} labels; "
                            "the file is damaged. Replace it with the official file.")
        if expected and n_images != expected[split]:
            raise DataError(f"{path}: {split} has {n_images} images, medmnist.INFO says "
                            f"{expected[split]}. Replace it with the official file.")
    return arrays


def _to_targets(labels: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    labels = labels.reshape(len(labels), -1)
    if multilabel:
        return labels.astype(np.float32)
    return np.eye(num_classes, dtype=np.float32)[labels[:, 0].astype(np.int64)]


def _to_nhwc(images: np.ndarray) -> np.ndarray:
    return images[..., None] if images.ndim == 3 else images


def load_medmnist(name: str, size: int = 28, data_dir: str | None = None,
                  download: bool = True) -> Dataset:
    """Loads a MedMNIST 2D dataset, downloading it (MD5-checked) if it is missing."""
    info = _check_name_and_size(name, size)
    path = medmnist_path(name, size, data_dir)
    url, md5 = info[f"url{_suffix(size)}"], info[f"MD5{_suffix(size)}"]
    if not path.exists():
        if not download:
            raise DataError(f"{path} does not exist. Put the official file there "
                            f"(md5 {md5}, from {url}) or allow the download.")
        _download(url, md5, path)
    actual = _md5(path)
    if actual != md5:
        raise DataError(f"{path} has MD5 {actual}, expected {md5}: the file is damaged or "
                        "not the official one and was not used. Delete it to download "
                        "it again.")
    arrays = load_npz(path, expected=info["n_samples"])
    class_names = tuple(info["label"][str(i)] for i in range(len(info["label"])))
    dataset_info = DatasetInfo(name=name, task=info["task"], class_names=class_names,
                               size=size, channels=info["n_channels"])
    multilabel = info["task"] == MULTI_LABEL
    splits = {
        s: Split(_to_nhwc(arrays[f"{s}_images"]),
                 _to_targets(arrays[f"{s}_labels"], len(class_names), multilabel))
        for s in SPLITS
    }
    return Dataset(dataset_info, **splits, source=path)
