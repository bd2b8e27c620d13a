"""The data layer on the real MedMNIST files: .npz loading, subsets, download, tf.data
(the chest X-ray image folder: tests/test_image_folder.py).

Damaged inputs are derived in tmp_path from the real files (truncated, altered, re-saved
without a key); nothing here stands in random arrays for a dataset.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from tsynd_tf.data import (
    DataError,
    load_medmnist,
    load_npz,
    make_pipeline,
    medmnist_path,
    subsample_indices,
)
from tsynd_tf.data.medmnist_data import INFO
from tsynd_tf.data.subsets import subset_size

PNEUMONIA_MD5 = "28209eda62fecd6e6a2d98b1501bb15f"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _real_arrays(medmnist_dir: Path) -> dict[str, np.ndarray]:
    with np.load(medmnist_dir / "pneumoniamnist.npz") as npz:
        return {key: npz[key] for key in npz.files}


# --------------------------------------------------------------------------------------------
# 1. MedMNIST files
# --------------------------------------------------------------------------------------------

def test_pneumoniamnist_splits_dtypes_and_info(pneumonia):
    info = INFO["pneumoniamnist"]
    assert {s: len(getattr(pneumonia, s)) for s in ("train", "val", "test")} == \
        info["n_samples"] == {"train": 4708, "val": 524, "test": 624}
    for split, n in (("train", 4708), ("val", 524), ("test", 624)):
        data = getattr(pneumonia, split)
        assert data.images.dtype == np.uint8
        assert data.images.shape == (n, 28, 28, 1)
        assert data.targets.dtype == np.float32
        assert data.targets.shape == (n, 2)
        np.testing.assert_array_equal(data.targets.sum(axis=1), 1.0)  # one-hot
        assert set(np.unique(data.targets)) == {0.0, 1.0}
    assert pneumonia.info.task == "binary-class"
    assert pneumonia.info.class_names == tuple(info["label"][str(i)] for i in range(2)) \
        == ("normal", "pneumonia")
    assert pneumonia.info.num_classes == 2 and not pneumonia.info.multilabel
    assert (pneumonia.info.size, pneumonia.info.channels) == (28, 1)
    # The test split is the source test set: 234 normal / 390 pneumonia.
    assert pneumonia.test.class_counts().tolist() == [234, 390]


def test_pneumoniamnist_targets_match_file_labels(pneumonia, medmnist_dir):
    arrays = _real_arrays(medmnist_dir)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(pneumonia, split).targets.argmax(axis=1),
                                      arrays[f"{split}_labels"][:, 0])
        np.testing.assert_array_equal(getattr(pneumonia, split).images[..., 0],
                                      arrays[f"{split}_images"])


def test_breastmnist_64(medmnist_dir):
    path = medmnist_path("breastmnist", 64, str(medmnist_dir))
    assert path.name == "breastmnist_64.npz"
    data = load_medmnist("breastmnist", 64, str(medmnist_dir), download=False)
    assert data.train.images.shape == (546, 64, 64, 1)
    assert data.val.images.shape == (78, 64, 64, 1)
    assert data.test.images.shape == (156, 64, 64, 1)
    assert data.info.size == 64
    assert data.info.task == INFO["breastmnist"]["task"]
    assert data.info.class_names == tuple(INFO["breastmnist"]["label"][str(i)]
                                          for i in range(len(INFO["breastmnist"]["label"])))


def test_data_dir_from_environment(medmnist_dir, monkeypatch):
    monkeypatch.setenv("TSYND_DATA_DIR", str(medmnist_dir))
    assert medmnist_path("breastmnist", 28) == medmnist_dir / "breastmnist.npz"
    assert len(load_medmnist("breastmnist", 28, download=False).train) == 546


# --------------------------------------------------------------------------------------------
# 2. Low-data subsets
# --------------------------------------------------------------------------------------------

def test_subsample_one_percent_is_seeded_and_keeps_both_classes(pneumonia):
    targets = pneumonia.train.targets
    a = subsample_indices(targets, fraction=0.01, seed=0)
    b = subsample_indices(targets, fraction=0.01, seed=0)
    c = subsample_indices(targets, fraction=0.01, seed=1)
    assert len(a) == 47
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(c) == 47
    assert np.all(np.diff(a) > 0)  # sorted and unique
    assert a.dtype == np.int64
    assert (targets[a].sum(axis=0) > 0).all()
    # largest remainder: 47 * (1214, 3494) / 4708 = (12.1, 34.9) -> (12, 35)
    assert targets[a].sum(axis=0).tolist() == [12, 35]


def test_subsample_ten_percent_is_proportional(pneumonia):
    targets = pneumonia.train.targets
    idx = subsample_indices(targets, fraction=0.1, seed=0)
    assert len(idx) == 471
    proportional = len(idx) * targets.sum(axis=0) / len(targets)
    assert np.all(np.abs(targets[idx].sum(axis=0) - proportional) <= 1)


def test_subsample_by_count_and_full(pneumonia):
    targets = pneumonia.train.targets
    idx = subsample_indices(targets, count=100, seed=3)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    assert (targets[idx].sum(axis=0) > 0).all()
    np.testing.assert_array_equal(subsample_indices(targets, count=4708), np.arange(4708))
    np.testing.assert_array_equal(subsample_indices(targets, fraction=1.0), np.arange(4708))


def test_tiny_fraction_keeps_one_image_per_class(pneumonia):
    targets = pneumonia.train.targets
    assert subset_size(len(targets), fraction=1e-4) == 0
    idx = subsample_indices(targets, fraction=1e-4, seed=0)
    assert targets[idx].sum(axis=0).tolist() == [1, 1]


def _multilabel_targets(pneumonia) -> np.ndarray:
    """Multi-hot targets from the real labels: [pneumonia, normal, rare, never-positive]."""
    labels = pneumonia.train.targets.argmax(axis=1)
    rare = np.zeros(len(labels), np.float32)
    rare[np.flatnonzero(labels == 0)[[5, 700]]] = 1.0  # positive on exactly 2 images
    return np.stack([labels == 1, labels == 0, rare, np.zeros_like(rare)],
                    axis=1).astype(np.float32)


@pytest.mark.parametrize("fraction", [0.01, 1e-4])
def test_multilabel_subsample_keeps_a_positive_of_every_label(pneumonia, fraction):
    targets = _multilabel_targets(pneumonia)
    assert targets[:, 2].sum() == 2
    size = subset_size(len(targets), fraction=fraction)
    for seed in range(5):
        idx = subsample_indices(targets, fraction=fraction, seed=seed, multilabel=True)
        assert len(idx) >= size
        assert np.all(np.diff(idx) > 0)
        positives = targets[idx].sum(axis=0)
        assert (positives[:3] >= 1).all(), (seed, positives)
        assert positives[3] == 0
        np.testing.assert_array_equal(
            idx, subsample_indices(targets, fraction=fraction, seed=seed, multilabel=True))



# --------------------------------------------------------------------------------------------
# 3. Download (a local HTTP server standing in for Zenodo, serving the real files)
# --------------------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(medmnist_dir, monkeypatch):
    """Base URL of a server on 127.0.0.1 serving the real MedMNIST folder."""
    for var in ("no_proxy", "NO_PROXY"):  # never send 127.0.0.1 through a proxy
        monkeypatch.setenv(var, "*")
    handler = functools.partial(_QuietHandler, directory=str(medmnist_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_download_checks_md5_and_loads(file_server, tmp_path, monkeypatch):
    monkeypatch.setitem(INFO["pneumoniamnist"], "url", f"{file_server}/pneumoniamnist.npz")
    data = load_medmnist("pneumoniamnist", 28, str(tmp_path), download=True)
    assert [p.name for p in tmp_path.iterdir()] == ["pneumoniamnist.npz"]  # no temp files
    assert _md5(tmp_path / "pneumoniamnist.npz") == PNEUMONIA_MD5
    assert len(data.train) == 4708 and data.test.images.shape == (624, 28, 28, 1)
    # A second call finds the file and does not download again (the server is not needed).
    monkeypatch.setitem(INFO["pneumoniamnist"], "url", "http://127.0.0.1:9/unreachable.npz")
    assert len(load_medmnist("pneumoniamnist", 28, str(tmp_path)).val) == 524


def test_download_with_wrong_md5_leaves_nothing(file_server, tmp_path, monkeypatch):
    monkeypatch.setitem(INFO["pneumoniamnist"], "url", f"{file_server}/pneumoniamnist.npz")
    monkeypatch.setitem(INFO["pneumoniamnist"], "MD5", "0" * 32)
    with pytest.raises(DataError, match=r"MD5 is not 0{32}"):
        load_medmnist("pneumoniamnist", 28, str(tmp_path))
    assert not (tmp_path / "pneumoniamnist.npz").exists()
    assert list(tmp_path.iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["404", "closed port"])
def test_download_failure_says_where_to_put_the_file(file_server, tmp_path, monkeypatch, where):
    url = (f"{file_server}/no-such-file.npz" if where == "404"
           else f"http://127.0.0.1:{_closed_port()}/pneumoniamnist.npz")
    monkeypatch.setitem(INFO["pneumoniamnist"], "url", url)
    target = tmp_path / "pneumoniamnist.npz"
    with pytest.raises(DataError, match="Could not download pneumoniamnist.npz") as excinfo:
        load_medmnist("pneumoniamnist", 28, str(tmp_path))
    message = str(excinfo.value)
    assert f"put the official file at {target}" in message
    assert PNEUMONIA_MD5 in message and url in message
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 4. Bad input: each error names the problem and the fix
# --------------------------------------------------------------------------------------------

def test_unknown_dataset_lists_valid_names(medmnist_dir):
    with pytest.raises(DataError, match=r"Unknown dataset 'nosuchmnist'\. Valid MedMNIST 2D "
                                        r"datasets: .*pneumoniamnist") as excinfo:
        load_medmnist("nosuchmnist", 28, str(medmnist_dir))
    message = str(excinfo.value)
    assert "breastmnist" in message and "chestmnist" in message
    assert "organmnist3d" not in message


def test_unavailable_size(medmnist_dir):
    with pytest.raises(DataError, match=r"Size 32 is not available for pneumoniamnist; "
                                        r"MedMNIST sizes are \(28, 64, 128, 224\)"):
        load_medmnist("pneumoniamnist", 32, str(medmnist_dir))


def test_missing_file_without_download_says_where_to_put_it(tmp_path):
    target = tmp_path / "pneumoniamnist_64.npz"
    with pytest.raises(DataError, match=re.escape(f"{target} does not exist. Put the "
                                                  "official file there")) as excinfo:
        load_medmnist("pneumoniamnist", 64, str(tmp_path), download=False)
    assert INFO["pneumoniamnist"]["MD5_64"] in str(excinfo.value)


def test_existing_file_with_wrong_checksum_is_refused(medmnist_dir, tmp_path):
    target = tmp_path / "pneumoniamnist.npz"
    target.write_bytes((medmnist_dir / "pneumoniamnist.npz").read_bytes() + b"extra")
    with pytest.raises(DataError, match=rf"has MD5 {_md5(target)}, expected {PNEUMONIA_MD5}"):
        load_medmnist("pneumoniamnist", 28, str(tmp_path), download=True)
    assert target.exists()  # a user's file is reported, not deleted


def test_truncated_npz(medmnist_dir, tmp_path):
    raw = (medmnist_dir / "pneumoniamnist.npz").read_bytes()
    target = tmp_path / "truncated.npz"
    target.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"truncated\.npz is corrupt or truncated"):
        load_npz(target)


@pytest.mark.parametrize("offset", [1000, 2_000_000, 3_978_041])
def test_corrupt_npz(medmnist_dir, tmp_path, offset):
    # Overwritten compressed bytes fail either the zip CRC or zlib itself (3_978_041 does
    # the latter on the official file); both must end as DataError.
    raw = bytearray((medmnist_dir / "pneumoniamnist.npz").read_bytes())
    raw[offset: offset + 64] = b"\xff" * 64
    target = tmp_path / "corrupt.npz"
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="is corrupt or truncated"):
        load_npz(target)


def test_npy_instead_of_npz(pneumonia, tmp_path):
    target = tmp_path / "images.npz"
    with open(target, "wb") as f:
        np.save(f, pneumonia.test.images)
    with pytest.raises(DataError, match="single array, not an .npz archive"):
        load_npz(target)


def test_npz_missing_keys(medmnist_dir, tmp_path):
    arrays = _real_arrays(medmnist_dir)
    del arrays["test_labels"]
    target = tmp_path / "nolabels.npz"
    np.savez(target, **arrays)
    with pytest.raises(DataError, match=r"lacks the keys \['test_labels'\]"):
        load_npz(target)


def test_npz_label_image_count_mismatch(medmnist_dir, tmp_path):
    arrays = _real_arrays(medmnist_dir)
    arrays["train_labels"] = arrays["train_labels"][:-1]
    target = tmp_path / "mismatch.npz"
    np.savez(target, **arrays)
    with pytest.raises(DataError, match="train has 4708 images but 4707 labels"):
        load_npz(target)


def test_npz_split_size_differs_from_info(medmnist_dir, tmp_path):
    arrays = _real_arrays(medmnist_dir)
    arrays["val_images"], arrays["val_labels"] = arrays["val_images"][:500], \
        arrays["val_labels"][:500]
    target = tmp_path / "short.npz"
    np.savez(target, **arrays)
    assert len(load_npz(target)["val_images"]) == 500  # consistent on its own
    with pytest.raises(DataError, match="val has 500 images, medmnist.INFO says 524"):
        load_npz(target, expected=INFO["pneumoniamnist"]["n_samples"])


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_fraction_out_of_range(pneumonia, fraction):
    with pytest.raises(DataError, match=re.escape(f"--train_fraction must be in (0, 1]; "
                                                  f"got {fraction}")):
        subsample_indices(pneumonia.train.targets, fraction=fraction)


@pytest.mark.parametrize("count", [0, 4709, -3])
def test_count_out_of_range(pneumonia, count):
    with pytest.raises(DataError, match=re.escape(f"--train_count must be in [1, 4708] "
                                                  f"(the training split size); got {count}")):
        subsample_indices(pneumonia.train.targets, count=count)


def test_fraction_and_count_together(pneumonia):
    with pytest.raises(DataError, match="exactly one of a train fraction or a train count"):
        subsample_indices(pneumonia.train.targets, fraction=0.1, count=10)
    with pytest.raises(DataError, match="exactly one"):
        subsample_indices(pneumonia.train.targets)




# --------------------------------------------------------------------------------------------
# 5. tf.data pipeline
# --------------------------------------------------------------------------------------------

def _first_batch(ds):
    return next(iter(ds))


def test_pipeline_batches_float_images_in_unit_range(pneumonia):
    images, targets = pneumonia.test.images[:100], pneumonia.test.targets[:100]
    batches = list(make_pipeline(images, targets, 32))
    assert [tuple(x.shape) for x, _ in batches] == [(32, 28, 28, 1)] * 3 + [(4, 28, 28, 1)]
    assert [tuple(y.shape) for _, y in batches] == [(32, 2)] * 3 + [(4, 2)]
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x, images.astype(np.float32) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(y, targets)


def test_pipeline_images_only_and_channel_conversion(pneumonia):
    images = pneumonia.test.images[:40]
    x = _first_batch(make_pipeline(images, None, 16, channels=3)).numpy()
    assert x.shape == (16, 28, 28, 3) and x.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(x[..., c], images[:16, ..., 0] / 255.0, atol=1e-6)
    x1 = _first_batch(make_pipeline(images, None, 16, channels=1)).numpy()
    assert x1.shape == (16, 28, 28, 1)


def test_pipeline_seeded_shuffle(pneumonia):
    images, targets = pneumonia.test.images, pneumonia.test.targets
    a = _first_batch(make_pipeline(images, targets, 32, shuffle=True, seed=7))
    b = _first_batch(make_pipeline(images, targets, 32, shuffle=True, seed=7))
    c = _first_batch(make_pipeline(images, targets, 32, shuffle=True, seed=8))
    plain = _first_batch(make_pipeline(images, targets, 32))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())
    assert not np.array_equal(a[0].numpy(), plain[0].numpy())


def test_pipeline_repeat(pneumonia):
    images = pneumonia.test.images[:10]
    batches = list(make_pipeline(images, None, 4, repeat=True).take(5))
    assert [b.shape[0] for b in batches] == [4, 4, 4, 4, 4]


def test_pipeline_augment_changes_images_keeps_shape_and_range(pneumonia):
    images, targets = pneumonia.test.images[:64], pneumonia.test.targets[:64]
    plain_x, plain_y = _first_batch(make_pipeline(images, targets, 64))
    aug_x, aug_y = _first_batch(make_pipeline(images, targets, 64, augment=True, seed=0))
    aug_x = aug_x.numpy()
    assert aug_x.shape == (64, 28, 28, 1) and aug_x.dtype == np.float32
    assert 0.0 <= aug_x.min() and aug_x.max() <= 1.0
    assert not np.allclose(aug_x, plain_x.numpy())
    np.testing.assert_array_equal(aug_y.numpy(), plain_y.numpy())


def test_pipeline_rejects_bad_batch_size(pneumonia):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_pipeline(pneumonia.test.images[:4], None, 0)
