"""An out-of-distribution score: how unlike the classifier's labelled training images an
input is, the second referral signal beside the mutual information.

MI measures what the classifier does not know about an image it can make sense of; it can
be ~0 on an image that is no X-ray at all (a solid-colour PNG was classified 'pneumonia'
with probability 1.000 and MI 0). This score looks at the input itself, in three terms,
each a squared Mahalanobis distance to the labelled training images:

  features    the classifier's penultimate features (its global-average-pooled last
              convolution, the input of the logits layer) from a deterministic pass: MC
              dropout off, BatchNorm in inference mode. Class-conditional means with one
              shared covariance (Lee et al., 2018, "A simple unified framework for detecting
              out-of-distribution samples and adversarial attacks"); one mean for multi-label
              tasks.
  statistics  mean, log(std + 1/255) and log(mean absolute neighbour difference + 1/255)
              of the image (one grey level keeps the logs of a flat image finite).
  thumbnail   the image area-averaged to 8 x 8: where its bright and dark regions lie.

Covariances are Ledoit-Wolf shrunk: a 1% run labels 47 images for 64 (small_cnn) to 512
(resnet18) feature dimensions. Each distance is divided by its dimensions and by its 99th
percentile on the validation images (`SCALE_QUANTILE`), and the score is the largest of the
three: 1 means "as far out as the farthest 1% of validation images on one term".

Why these terms, measured on PneumoniaMNIST at the 99th validation percentile of each score
(small_cnn; inputs: 52 solid greys, 50 uniform-noise images, 20 colour-gradient/checkerboard
composites turned grey, the 156 BreastMNIST test ultrasounds). With a classifier trained on
1000 labelled images for 2 epochs, the feature term alone referred all noise and composites
and 99% of ultrasounds but 94-96% of solid greys (a flat grey lands near the X-ray features
at some grey levels); the statistics term refers every solid colour (std 0) and all noise
but no composite. With weak classifiers (32-47 labelled images) the feature term caught only
40-90% of the composites; the thumbnail lifts that to 85-90%. All three: every solid colour
and noise image, 85-100% of the composites and 84-100% of the ultrasounds referred, and
1.3-1.4% of the 624 test X-rays.

Everything the score needs (means, precision matrices, scales) is computed at export from
the run's labelled training images and validation split, and baked into the SavedModel as
constants (`serving`); the same TensorFlow code computes it there and here.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from sklearn.covariance import LedoitWolf

from tsynd_tf import models, uncertainty
from tsynd_tf.data import make_pipeline

SCALE_QUANTILE = 0.99
TERMS = ("features", "statistics", "thumbnail")
THUMBNAIL_SIZE = 8
_GREY_LEVEL = 1.0 / 255.0


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """The classifier up to its logits layer's input, with its MC dropout layers left out
    (identity: the mean of inverted dropout), sharing the classifier's weights."""
    if "logits" not in [layer.name for layer in classifier.layers]:
        raise ValueError(f"{classifier.name} has no layer named 'logits'; the OOD score "
                         "reads the features that layer takes (models.build_classifier).")

    def without_dropout_and_logits(layer):
        if isinstance(layer, models.MCDropout) or layer.name == "logits":
            return keras.layers.Identity(name=f"{layer.name}_identity")
        return layer  # the same layer: the same weights

    return keras.models.clone_model(classifier, clone_function=without_dropout_and_logits)


def image_statistics(images: tf.Tensor) -> tf.Tensor:
    """(B, 3) float32 of float images in [0, 1]: mean, log std, log mean absolute
    difference of horizontal and vertical neighbours (both + one grey level)."""
    edges = (tf.reduce_mean(tf.abs(images[:, 1:] - images[:, :-1]), axis=[1, 2, 3]) +
             tf.reduce_mean(tf.abs(images[:, :, 1:] - images[:, :, :-1]), axis=[1, 2, 3]))
    return tf.stack([tf.reduce_mean(images, axis=[1, 2, 3]),
                     tf.math.log(tf.math.reduce_std(images, axis=[1, 2, 3]) + _GREY_LEVEL),
                     tf.math.log(edges + _GREY_LEVEL)], axis=1)


def thumbnail(images: tf.Tensor) -> tf.Tensor:
    """(B, 8 * 8 * C) float32: the images area-averaged to 8 x 8, flattened."""
    small = tf.image.resize(images, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), method="area")
    return tf.reshape(small, [tf.shape(images)[0], -1])


def term_vectors(extractor: keras.Model, images: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """What each term (TERMS) measures of float images in [0, 1]."""
    images = tf.cast(images, tf.float32)
    return (tf.cast(extractor(images, training=False), tf.float32), image_statistics(images),
            thumbnail(images))


@dataclasses.dataclass(frozen=True)
class Gaussians:
    """Means (K, D) sharing one precision matrix (D, D), fitted with Ledoit-Wolf shrinkage."""
    means: np.ndarray
    precision: np.ndarray
    shrinkage: float

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray) -> "Gaussians":
        """One mean per label present in `labels` (ints, (N,)), one shared covariance."""
        vectors = vectors.astype(np.float64)
        classes = np.unique(labels)
        means = np.stack([vectors[labels == c].mean(axis=0) for c in classes])
        centred = vectors - means[np.searchsorted(classes, labels)]
        estimate = LedoitWolf(assume_centered=True).fit(centred)
        return cls(means.astype(np.float32), np.linalg.inv(estimate.covariance_)
                   .astype(np.float32), float(estimate.shrinkage_))

    def distance(self, vectors: tf.Tensor) -> tf.Tensor:
        """(B,) squared Mahalanobis distance to the nearest mean, per dimension."""
        diff = tf.cast(vectors, tf.float32)[:, None, :] - tf.constant(self.means)[None]
        squared = tf.einsum("bkd,de,bke->bk", diff, tf.constant(self.precision), diff)
        return tf.reduce_min(squared, axis=1) / float(self.means.shape[1])


def batched(step, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`step` (float images in [0, 1] -> a tensor or a tuple of tensors, one row per image)
    over uint8 images in batches; each output concatenated over the batches."""
    per_call = uncertainty.images_per_call(batch_size, images.shape[1:], num_samples=1)
    batches = uncertainty.without_autotuning(make_pipeline(images, None, per_call))
    outputs = [tf.nest.flatten(step(batch)) for batch in batches]
    return [np.concatenate([output[i].numpy() for output in outputs], axis=0)
            for i in range(len(outputs[0]))]


class OODScore:
    """The score of one classifier; `OODScore.fit` makes it, calling it scores images."""

    def __init__(self, extractor: keras.Model, gaussians: list[Gaussians], scales,
                 num_reference: int):
        self.extractor, self.gaussians = extractor, list(gaussians)
        self.scales, self.num_reference = np.asarray(scales, np.float32), int(num_reference)
        self._terms = tf.function(self.terms, reduce_retracing=True)
        self._scores = tf.function(self.__call__, reduce_retracing=True)

    @classmethod
    def fit(cls, classifier: keras.Model, images: np.ndarray, targets: np.ndarray,
            val_images: np.ndarray, multilabel: bool, batch_size: int = 256) -> "OODScore":
        """From the labelled training images (uint8 (N, H, W, C), one-/multi-hot targets)
        and the validation images, which set each term's scale (SCALE_QUANTILE)."""
        if len(images) < 2 or len(val_images) == 0:
            raise ValueError(f"The OOD score needs >= 2 labelled training images and some "
                             f"validation images; got {len(images)} and {len(val_images)}.")
        extractor = feature_extractor(classifier)
        vectors = batched(tf.function(lambda x: term_vectors(extractor, x),
                                      reduce_retracing=True), images, batch_size)
        one_mean = np.zeros(len(images), np.int64)
        class_means = one_mean if multilabel else np.asarray(targets).argmax(axis=1)
        gaussians = [Gaussians.fit(v, class_means if term == "features" else one_mean)
                     for term, v in zip(TERMS, vectors)]
        unscaled = cls(extractor, gaussians, np.ones(len(TERMS)), len(images))
        val_terms = batched(unscaled._terms, val_images, batch_size)[0]
        return cls(extractor, gaussians, np.quantile(val_terms, SCALE_QUANTILE, axis=0),
                   len(images))

    def terms(self, images: tf.Tensor) -> tf.Tensor:
        """(B, len(TERMS)) unscaled distances of float images in [0, 1]."""
        return tf.stack([gaussians.distance(vectors) for gaussians, vectors in
                         zip(self.gaussians, term_vectors(self.extractor, images))], axis=1)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """(B,) float32 score of float images in [0, 1]; traceable (serving's graph)."""
        return tf.reduce_max(self.terms(images) / tf.constant(self.scales), axis=1)

    def scores(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N,) scores of uint8 images (N, H, W, C)."""
        return batched(self._scores, images, batch_size)[0]

    def describe(self) -> dict:
        """What the metadata records of the score."""
        return {
            "score": "max over the terms of (squared Mahalanobis distance to the labelled "
                     "training images / dimensions / its validation "
                     f"{SCALE_QUANTILE:g} quantile); tsynd_tf/ood.py",
            "terms": {
                "features": "penultimate classifier features, deterministic pass (no "
                            "dropout), class-conditional means, shared covariance",
                "statistics": "mean, log std, log mean absolute neighbour difference",
                "thumbnail": f"the image area-averaged to {THUMBNAIL_SIZE}x{THUMBNAIL_SIZE}"},
            "covariance": "Ledoit-Wolf shrunk",
            "scale_quantile": SCALE_QUANTILE,
            "scales": dict(zip(TERMS, map(float, self.scales))),
            "dimensions": {t: int(g.means.shape[1]) for t, g in zip(TERMS, self.gaussians)},
            "shrinkage": {t: g.shrinkage for t, g in zip(TERMS, self.gaussians)},
            "feature_means": int(self.gaussians[0].means.shape[0]),
            "num_reference_images": self.num_reference,
        }
