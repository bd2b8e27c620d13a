"""How good a set of synthetic images is, from features: FID, KID, precision/recall, label
fidelity and diversity. Pure functions of feature arrays (numpy/scipy).

The features come from a reference classifier trained on the dataset's own training split,
not from ImageNet Inception weights: nothing may be downloaded at run time. The numbers are
therefore in-domain measures, comparable between methods on one dataset and reference, and
not with published FIDs.

  frechet_distance   FID: ||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2))
  kernel_distance    KID: unbiased MMD^2 with the cubic polynomial kernel
                     k(x, y) = (x.y / d + 1)^3, averaged over random subsets (Binkowski 2018)
  precision_recall   improved precision and recall, k-NN balls (Kynkaanniemi et al. 2019)
  label_fidelity     share of synthetic images the reference classifier gives their label
  diversity          mean pairwise feature distance within each class, synthetic / real
  nearest_diversity  per class, median distance to the nearest other image of the set,
                     synthetic / real at the same number of images: ~0 for repeats
  memorisation       share of synthetic points closer to a training point than all but the
                     closest `quantile` (5%) of held-out real points are (authenticity,
                     Alaa et al. 2022): ~0.05 for new images, ~1 for copies
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist, pdist


def _as_features(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N >= 2, D); got shape {x.shape}")
    return x


def frechet_distance(real, synthetic) -> float:
    real, synthetic = _as_features(real), _as_features(synthetic)
    mu_r, mu_s = real.mean(0), synthetic.mean(0)
    cov_r = np.atleast_2d(np.cov(real, rowvar=False))
    cov_s = np.atleast_2d(np.cov(synthetic, rowvar=False))
    # Tr((S_r S_s)^(1/2)) is the sum of the square roots of S_r S_s's eigenvalues, which are
    # real and >= 0 for covariance matrices: unlike sqrtm, exact for the singular products
    # that dead (always-zero) ReLU features give.
    eigenvalues = linalg.eigvals(cov_r @ cov_s)
    trace_root = np.sum(np.sqrt(np.clip(eigenvalues.real, 0.0, None)))
    value = np.sum((mu_r - mu_s) ** 2) + np.trace(cov_r) + np.trace(cov_s) - 2.0 * trace_root
    return float(max(value, 0.0))


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k_xx, k_yy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) +
                 (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1)) - 2 * k_xy.mean())


def kernel_distance(real, synthetic, subsets: int = 10, subset_size: int = 1000,
                    seed: int = 0) -> float:
    """KID; unbiased, so a set against itself is ~0 and may be slightly negative."""
    real, synthetic = _as_features(real), _as_features(synthetic)
    size = min(subset_size, len(real), len(synthetic))
    rng = np.random.default_rng(seed)
    return float(np.mean([
        _unbiased_mmd2(real[rng.choice(len(real), size, replace=False)],
                       synthetic[rng.choice(len(synthetic), size, replace=False)])
        for _ in range(subsets)]))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    distances = cdist(x, x)
    return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real, synthetic, k: int = 3) -> tuple[float, float]:
    """Precision: share of synthetic points inside some real point's k-NN ball (realism);
    recall: share of real points inside some synthetic point's ball (coverage)."""
    real, synthetic = _as_features(real), _as_features(synthetic)
    if min(len(real), len(synthetic)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set")
    across = cdist(synthetic, real)
    precision = np.mean((across <= _knn_radii(real, k)[None, :]).any(axis=1))
    recall = np.mean((across.T <= _knn_radii(synthetic, k)[None, :]).any(axis=1))
    return float(precision), float(recall)


def label_fidelity(reference_probs, targets) -> float:
    """Share of images whose reference prediction is their given (one-hot) label."""
    return float(np.mean(np.argmax(reference_probs, 1) == np.argmax(targets, 1)))


def diversity(real, real_targets, synthetic, synthetic_targets) -> float:
    """Mean pairwise distance within a class, synthetic over real, averaged over the classes
    both sets hold twice or more: 1 is as diverse as the real images, 0 is one image."""
    real, synthetic = _as_features(real), _as_features(synthetic)
    ratios = []
    for c in range(np.asarray(real_targets).shape[1]):
        r = real[np.argmax(real_targets, 1) == c]
        s = synthetic[np.argmax(synthetic_targets, 1) == c]
        if len(r) >= 2 and len(s) >= 2:
            ratios.append(pdist(s).mean() / max(pdist(r).mean(), 1e-12))
    return float(np.mean(ratios)) if ratios else float("nan")


def nearest_diversity(real, real_targets, synthetic, synthetic_targets, draws: int = 5,
                      max_images: int = 1000, seed: int = 0) -> dict[int, float]:
    """Per class both sets hold twice or more: the median distance from each image to its
    nearest other image of the set, synthetic over real, both sets drawn (seeded) to the same
    size m = min(their sizes, max_images), averaged over `draws` draws. Unlike the mean
    pairwise ratio (`diversity`: k distinct images repeated score ~1 - 1/k), it is ~0 for
    a set of repeats however many distinct images it holds. Matched sizes because
    nearest-neighbour distances shrink as a set grows; several draws because a median of a
    few dozen distances is noisy."""
    real, synthetic = _as_features(real), _as_features(synthetic)
    rng = np.random.default_rng(seed)
    found = {}
    for c in range(np.asarray(real_targets).shape[1]):
        r = real[np.argmax(real_targets, 1) == c]
        s = synthetic[np.argmax(synthetic_targets, 1) == c]
        size = min(len(r), len(s), max_images)
        if size < 2:
            continue
        ratios = [np.median(_nearest_other(s[rng.choice(len(s), size, replace=False)])) /
                  max(np.median(_nearest_other(r[rng.choice(len(r), size, replace=False)])),
                      1e-12) for _ in range(draws)]
        found[c] = float(np.mean(ratios))
    return found


def _nearest_other(x: np.ndarray) -> np.ndarray:
    return np.sort(cdist(x, x), axis=1)[:, 1]  # column 0 is the point itself


def nearest_distances(queries, reference, chunk: int = 1024) -> np.ndarray:
    """Each query's Euclidean distance to its nearest reference point. Rows may be images of
    any shape and dtype (flattened); chunked, so 224-px images need no N x M x D memory."""
    queries = np.asarray(queries).reshape(len(queries), -1)
    reference = np.asarray(reference).reshape(len(reference), -1)
    nearest = np.full(len(queries), np.inf)
    for i in range(0, len(queries), chunk):
        q = queries[i:i + chunk].astype(np.float64)
        for j in range(0, len(reference), chunk):
            d = cdist(q, reference[j:j + chunk].astype(np.float64)).min(axis=1)
            nearest[i:i + chunk] = np.minimum(nearest[i:i + chunk], d)
    return nearest


def memorisation_threshold(held_out_nearest, quantile: float = 0.05) -> float:
    """The distance to the training set that only `quantile` of held-out real images are
    closer than: images drawn from the data distribution, not from the training set."""
    return float(np.quantile(held_out_nearest, quantile))


def memorisation(synthetic_nearest, threshold: float) -> float:
    """Share of synthetic images at most `threshold` from their nearest training image. At
    most, not below: an exact copy (distance 0) counts even when the threshold is 0."""
    return float(np.mean(np.asarray(synthetic_nearest) <= threshold))
