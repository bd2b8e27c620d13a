"""Seeded, stratified low-data subsets of a training split that never drop a class."""

from __future__ import annotations

import logging

import numpy as np

from tsynd_tf.data.core import DataError

log = logging.getLogger(__name__)


def subset_size(n: int, fraction: float | None = None, count: int | None = None) -> int:
    """round(fraction * n), half up (PneumoniaMNIST at 1%: 4708 -> 47), or `count`."""
    if (fraction is None) == (count is None):
        raise DataError("Give exactly one of a train fraction or a train count.")
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"--train_fraction must be in (0, 1]; got {fraction}.")
        return int(np.floor(fraction * n + 0.5))
    if not 0 < count <= n:
        raise DataError(f"--train_count must be in [1, {n}] (the training split size); "
                        f"got {count}.")
    return count


def subsample_indices(targets: np.ndarray, fraction: float | None = None,
                      count: int | None = None, seed: int = 0,
                      multilabel: bool = False) -> np.ndarray:
    """Sorted indices of a stratified subsample of `targets` (N, K).

    Single-label: each class gets its proportional share (largest remainder) and at least
    one image, so the total is max(size, number of present classes). Multi-label: a seeded
    random sample, topped up with one positive for each label that has positives in the
    split but none in the sample.
    """
    n = len(targets)
    size = subset_size(n, fraction, count)
    rng = np.random.default_rng(seed)
    if size >= n:
        return np.arange(n)
    if multilabel:
        chosen = set(rng.choice(n, size=size, replace=False).tolist())
        for label in range(targets.shape[1]):
            positives = np.flatnonzero(targets[:, label] > 0)
            if len(positives) and not any(i in chosen for i in positives):
                chosen.add(int(rng.choice(positives)))
        return _said_if_larger(np.array(sorted(chosen), dtype=np.int64), size, "label")

    labels = targets.argmax(axis=1)
    present = np.flatnonzero(np.bincount(labels, minlength=targets.shape[1]))
    counts = np.bincount(labels, minlength=targets.shape[1])[present]
    quota = size * counts / n
    per_class = np.floor(quota).astype(np.int64)
    remainder_order = np.argsort(-(quota - per_class), kind="stable")
    per_class[remainder_order[: size - per_class.sum()]] += 1
    per_class = np.clip(per_class, 1, counts)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
              for c, k in zip(present, per_class)]
    return _said_if_larger(np.sort(np.concatenate(chosen)).astype(np.int64), size, "class")


def _said_if_larger(indices: np.ndarray, size: int, kind: str) -> np.ndarray:
    """`indices`, with a warning when keeping every class made them more than asked for:
    a run asked for 1 image of a 2-class set trains on 2, and its log must say so."""
    if len(indices) > size:
        log.warning("The labelled subset holds %d images, not the %d asked for: every %s "
                    "present keeps at least one image.", len(indices), size, kind)
    return indices
