"""Entropy / expected entropy / MI against a direct numpy computation, on a real model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tsynd_tf import data, uncertainty


def numpy_measures(logits, multilabel):
    """Textbook definitions, straight from probabilities (T, B, K)."""
    def h(p):  # entropy of Categorical rows, or summed Bernoulli entropies
        q = np.clip(p, 1e-300, 1)
        if multilabel:
            r = np.clip(1 - p, 1e-300, 1)
            return -(p * np.log(q) + (1 - p) * np.log(r)).sum(-1)
        return -(p * np.log(q)).sum(-1)

    if multilabel:
        probs = 1 / (1 + np.exp(-logits))
    else:
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probs = e / e.sum(-1, keepdims=True)
    mean = probs.mean(0)
    predictive = h(mean)
    expected = h(probs).mean(0)
    return mean, predictive, expected, predictive - expected


@pytest.fixture(scope="module")
def real_logits(trained_classifier, pneumonia):
    """MC logits of the shared trained classifier (conftest) on real test images."""
    images = pneumonia.test.images[:64].astype("float32") / 255
    return uncertainty.mc_logits(trained_classifier, images, num_samples=20).numpy()


@pytest.mark.parametrize("multilabel", [False, True])
def test_measures_match_numpy(real_logits, multilabel):
    logits = real_logits.astype(np.float64)
    ours = uncertainty.uncertainty_from_logits(tf.constant(real_logits), multilabel)
    mean, predictive, expected, mi = numpy_measures(logits, multilabel)
    np.testing.assert_allclose(ours["probs"], mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours["predictive_entropy"], predictive, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours["expected_entropy"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours["mutual_information"], np.maximum(mi, 0), atol=2e-6)
    assert real_logits.shape == (20, 64, 2)
    # MC dropout really samples: the T passes differ.
    assert np.std(real_logits, axis=0).mean() > 0


def test_mi_is_zero_for_identical_samples_and_positive_for_disagreement():
    same = tf.constant(np.tile([[[2.0, -1.0, 0.5]]], (8, 4, 1)), tf.float32)
    assert np.allclose(uncertainty.uncertainty_from_logits(same)["mutual_information"], 0,
                       atol=1e-6)
    disagree = tf.constant([[[10.0, -10.0]], [[-10.0, 10.0]]], tf.float32)
    out = uncertainty.uncertainty_from_logits(disagree)
    assert np.isclose(out["mutual_information"][0], np.log(2), atol=1e-4)


def test_extreme_logits_stay_finite_with_finite_gradients():
    logits = tf.Variable([[[1e4, -1e4]], [[-1e4, 1e4]], [[0.0, 0.0]]])
    with tf.GradientTape() as tape:
        mi = uncertainty.objective_from_logits(logits, "mi", multilabel=False)
        ent = uncertainty.objective_from_logits(logits, "entropy", multilabel=True)
        total = tf.reduce_sum(mi) + tf.reduce_sum(ent)
    gradient = tape.gradient(total, logits)
    assert np.isfinite(total.numpy()) and np.all(np.isfinite(gradient.numpy()))


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError, match="Unknown objective 'bald'"):
        uncertainty.objective_from_logits(tf.zeros((2, 1, 2)), "bald", False)


def test_memory_cap_leaves_small_images_alone_and_splits_224_px():
    # Grayscale 28 px keeps the default eval batch: the MedMNIST sweeps do not depend on it.
    assert uncertainty.images_per_call(256, (28, 28, 1), 10) == 256
    assert uncertainty.images_per_call(256, (28, 28, 3), 10) == 178
    assert uncertainty.images_per_call(256, (64, 64, 1), 10) == 102
    assert uncertainty.images_per_call(256, (224, 224, 1), 1) == 83
    assert uncertainty.images_per_call(256, (224, 224, 1), 10) == 8
    assert uncertainty.images_per_call(256, (224, 224, 3), 1000) == 1


def test_mc_predict_splits_batches_over_the_cap_without_changing_results(pneumonia,
                                                                         monkeypatch):
    keras.utils.set_random_seed(0)
    # No dropout: every pass is the same function, so split and whole calls must agree.
    classifier = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3),
                                   keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    dataset = data.make_pipeline(pneumonia.test.images[:100], None, 100)
    whole = uncertainty.mc_predict(classifier, dataset, 4)
    monkeypatch.setattr(uncertainty, "MAX_VALUES_PER_CALL", 4 * 28 * 28 * 30)
    assert uncertainty.images_per_call(100, (28, 28, 1), 4) == 30
    split = uncertainty.mc_predict(classifier, dataset, 4)
    for key, value in whole.items():
        assert split[key].shape == value.shape == (100,) + value.shape[1:]
        np.testing.assert_allclose(split[key], value, rtol=1e-5, atol=1e-6)
