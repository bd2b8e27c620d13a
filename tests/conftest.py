"""Shared fixtures. Tests run on the real files in ../shared/data (see its README).

$TSYND_TEST_DATA overrides that folder; it must hold medmnist/ and chest_xray/.
"""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(os.environ.get("TSYND_TEST_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"Test data {path} is missing: the tests use the real MedMNIST files and "
                    "chest X-ray folder; set $TSYND_TEST_DATA to the folder holding "
                    "medmnist/ and chest_xray/.")
    return path


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    return _require(TEST_DATA / "medmnist")


@pytest.fixture(scope="session")
def chest_xray_dir() -> Path:
    return _require(TEST_DATA / "chest_xray")


@pytest.fixture(scope="session")
def small_xray_dir(chest_xray_dir, tmp_path_factory) -> Path:
    """A copy of the first real JPEGs of each class: 20 per class in train, 5 in test."""
    root = tmp_path_factory.mktemp("small_xray")
    for split, n in (("train", 20), ("test", 5)):
        for name in ("NORMAL", "PNEUMONIA"):
            (root / split / name).mkdir(parents=True)
            for src in sorted((chest_xray_dir / split / name).iterdir())[:n]:
                shutil.copy(src, root / split / name / src.name)
    return root


@pytest.fixture(scope="session")
def pneumonia(medmnist_dir):
    from tsynd_tf.data import load_medmnist

    return load_medmnist("pneumoniamnist", 28, str(medmnist_dir), download=False)
