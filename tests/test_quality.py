"""Image-quality metrics of synthetic sets (tsynd_tf.quality) against hand-computed values,
and on features of real PneumoniaMNIST images."""

import numpy as np
import pytest

from tsynd_tf import quality


def test_frechet_distance_of_hand_computed_gaussians():
    # 1-D: means 1 and 2, variances 2 and 2: 1 + (sqrt 2 - sqrt 2)^2 = 1.
    assert quality.frechet_distance([[0], [2]], [[1], [3]]) == pytest.approx(1.0)
    # 2-D: mean shift (2, 2), per-dim variances 4/3 and 16/3, no covariance:
    # 8 + 2 * (sqrt(4/3) - sqrt(16/3))^2 = 8 + 8/3.
    real = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], float)
    assert quality.frechet_distance(real, 2 * real + 1) == pytest.approx(8 + 8 / 3)


def test_kernel_distance_is_the_unbiased_mmd():
    # k(a, b) = (ab + 1)^3 on {1, 0} vs itself: 1 + 1 - 2 * 11/4 = -3.5 (unbiased: can be < 0).
    x = np.array([[1.0], [0.0]])
    assert quality.kernel_distance(x, x, subsets=1, subset_size=2) == pytest.approx(-3.5)


def test_precision_recall_of_hand_placed_points():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    precision, recall = quality.precision_recall(real, np.array([[0.5], [10.0]]), k=1)
    assert (precision, recall) == (0.5, 1.0)
    with pytest.raises(ValueError, match="more than 3 points"):
        quality.precision_recall(real[:3], real, k=3)


def test_label_fidelity_and_diversity():
    targets = np.eye(2)[[0, 0, 1, 1]]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    assert quality.label_fidelity(probs, targets) == 0.75
    real = np.array([[0.0], [2.0], [5.0], [9.0]])
    synthetic = np.array([[0.0], [1.0], [5.0], [7.0]])  # class 0: 1/2, class 1: 2/4
    assert quality.diversity(real, targets, synthetic, targets) == pytest.approx(0.5)


def test_on_real_images_a_set_matches_itself_and_not_the_other_class(pneumonia):
    """Features: 7 x 7 average-pooled pixels of real test images."""
    images = pneumonia.test.images[..., 0].astype(float) / 255
    features = images.reshape(len(images), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(images), -1)
    labels = pneumonia.test.targets.argmax(1)
    normal, pneumonia_features = features[labels == 0], features[labels == 1]
    assert quality.frechet_distance(normal, normal) == pytest.approx(0.0, abs=1e-6)
    assert quality.frechet_distance(normal, pneumonia_features) > 0.1
    assert quality.precision_recall(normal, normal) == (1.0, 1.0)
    assert abs(quality.kernel_distance(normal, normal)) < \
        0.1 * quality.kernel_distance(normal, pneumonia_features)


def test_memorisation_of_a_hand_computed_case():
    train = np.array([[0.0], [10.0]])
    held_out = quality.nearest_distances([[1.0], [2.0], [4.0], [5.0]], train)
    np.testing.assert_array_equal(held_out, [1, 2, 4, 5])
    threshold = quality.memorisation_threshold(held_out)  # 5% of the way: 1 + 0.15 * (2 - 1)
    assert threshold == pytest.approx(1.15)
    # Nearest distances 0, 0.5, 3, 2.5: the exact copy and the near copy count.
    synthetic = quality.nearest_distances([[0.0], [10.5], [3.0], [7.5]], train)
    assert quality.memorisation(synthetic, threshold) == 0.5
    assert quality.memorisation([0.0], 0.0) == 1.0  # a copy counts even at threshold 0


def test_nearest_distances_in_chunks_are_the_brute_force_ones(pneumonia):
    images, train = pneumonia.test.images[:37], pneumonia.train.images[:53]
    brute = np.sqrt(((images.reshape(37, 1, -1).astype(float)
                      - train.reshape(1, 53, -1).astype(float)) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(quality.nearest_distances(images, train, chunk=8), brute)


def test_pixel_memorisation_of_real_images(pneumonia):
    """Copies of training images are all memorised; validation images 5% by construction;
    test images, new draws like the validation ones, about 5%."""
    train = pneumonia.train.images
    threshold = quality.memorisation_threshold(
        quality.nearest_distances(pneumonia.val.images, train))
    share = lambda images: quality.memorisation(  # noqa: E731
        quality.nearest_distances(images, train), threshold)
    assert share(train[::10]) == 1.0
    assert share(pneumonia.val.images) == pytest.approx(0.05, abs=0.005)
    assert 0.01 < share(pneumonia.test.images) < 0.12
    mixed = np.concatenate([train[:300], pneumonia.test.images[:300]])
    assert 0.5 < share(mixed) < 0.56
