"""Predictive uncertainty of an MC-dropout classifier, written once for every caller.

Given logits of T stochastic forward passes, shape (T, B, K):
  predictive entropy  H[ E_t p_t ]            total uncertainty
  expected entropy    E_t H[ p_t ]            aleatoric part
  mutual information  H[E_t p_t] - E_t H[p_t] epistemic part (BALD)
For softmax tasks p_t is a Categorical over K classes; for multi-label tasks each of the K
labels is an independent Bernoulli and entropies add up over labels. Everything is computed
from logits in float32 with log-sum-exp, so it is finite and differentiable (the latent
ascent takes its gradient) even when a probability underflows to 0.

`mc_predict` is the one batched MC-dropout predictor over a set of images; training,
serving, evaluation (`evaluation.MCPredictor`) and the report all call it. Masks come in two
schemes (`mc_logits`): one per image row, as Keras draws them (training), or one per pass
shared across the batch, so that an image gets one answer whatever its batch (evaluation,
the SavedModel and predict; saved_models/README.md).
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tsynd_tf import models

tfd = tfp.distributions

OBJECTIVES = ("mi", "entropy")

# Input values (passes x images x H x W x C) that one inference call may hold: 2**22 floats
# = 16 MiB of input; activations scale with it (the autoencoder's full-resolution layers
# have 16 channels). At 224 px, calls on the default eval batch of 256 images took the
# process to 7.2 GiB (autoencoder validation) and 11.9 GiB (MC validation, T=10). The cap
# keeps the default eval batch (256; T=10) for grayscale 28 px images and splits larger
# images into smaller calls (docs/PERFORMANCE.md, "Memory").
MAX_VALUES_PER_CALL = 2 ** 22


def images_per_call(batch_size: int, image_shape, num_samples: int) -> int:
    """`batch_size`, reduced so that `num_samples` tiled copies (T for MC dropout, 1 for a
    plain call) stay within MAX_VALUES_PER_CALL."""
    values_per_image = num_samples * int(np.prod(image_shape))
    return max(1, min(batch_size, MAX_VALUES_PER_CALL // values_per_image))


def mc_logits(classifier, images: tf.Tensor, num_samples: int,
              shared_masks: bool = False) -> tf.Tensor:
    """(T, B, K) float32 logits from T stochastic passes run as ONE batched call.

    The batch is tiled T times: one call on T*B images is 2-3x faster on CPU than T calls.
    BatchNorm runs in inference mode (training=False); dropout stays stochastic because the
    classifier's dropout layers force it. By default MC dropout draws an independent mask
    for every row, advancing the dropout state (training: the latent ascent, guidance,
    validation). With `shared_masks` pass t uses one mask for all images, a function of the
    dropout state, which is left as it is (models.MCDropout): an image's answer does not
    depend on the rest of the batch nor on the call (evaluation, serving, predict).
    """
    batch = tf.shape(images)[0]
    tiled = tf.tile(images, [num_samples, 1, 1, 1])
    with models.shared_masks(classifier, num_samples if shared_masks else None):
        logits = tf.cast(classifier(tiled, training=False), tf.float32)
    return tf.reshape(logits, [num_samples, batch, -1])


def _mean_log_prob(log_probs: tf.Tensor) -> tf.Tensor:
    """log of the mean over axis 0 of exp(log_probs), computed stably."""
    num_samples = tf.cast(tf.shape(log_probs)[0], log_probs.dtype)
    return tf.reduce_logsumexp(log_probs, axis=0) - tf.math.log(num_samples)


def uncertainty_from_logits(logits: tf.Tensor, multilabel: bool = False) -> dict:
    """Mean probabilities (B, K) and the three uncertainty measures (B,) in nats."""
    logits = tf.cast(logits, tf.float32)
    if multilabel:
        per_sample = tfd.Bernoulli(logits=logits)
        expected_entropy = tf.reduce_mean(tf.reduce_sum(per_sample.entropy(), -1), 0)
        log_p1 = _mean_log_prob(tf.math.log_sigmoid(logits))
        log_p0 = _mean_log_prob(tf.math.log_sigmoid(-logits))
        mean = tfd.Bernoulli(logits=log_p1 - log_p0)
        predictive_entropy = tf.reduce_sum(mean.entropy(), -1)
        probs = tf.exp(log_p1)
    else:
        per_sample = tfd.Categorical(logits=logits)
        expected_entropy = tf.reduce_mean(per_sample.entropy(), 0)
        log_mean = _mean_log_prob(tf.nn.log_softmax(logits, axis=-1))
        predictive_entropy = tfd.Categorical(logits=log_mean).entropy()
        probs = tf.exp(log_mean)
    # MI >= 0 mathematically (Jensen); clip the float rounding that can make it -1e-8.
    mutual_information = tf.maximum(predictive_entropy - expected_entropy, 0.0)
    return {
        "probs": probs,
        "predictive_entropy": predictive_entropy,
        "expected_entropy": expected_entropy,
        "mutual_information": mutual_information,
    }


def objective_from_logits(logits: tf.Tensor, objective: str, multilabel: bool) -> tf.Tensor:
    """Per-image uncertainty that the latent ascent maximises: 'mi' (TSynD) or 'entropy'."""
    measures = uncertainty_from_logits(logits, multilabel)
    if objective == "mi":
        return measures["mutual_information"]
    if objective == "entropy":
        return measures["predictive_entropy"]
    raise ValueError(f"Unknown objective {objective!r}; expected one of {OBJECTIVES}.")


_compiled_steps = weakref.WeakKeyDictionary()


def _mc_step(classifier, num_samples: int, multilabel: bool, image_shape=None,
             shared_masks: bool = False):
    """One traced function per classifier and setting, reused across calls: traced per batch
    shape (reduce_retracing), or with `image_shape` once for every batch size."""
    steps = _compiled_steps.setdefault(classifier, {})
    key = (num_samples, multilabel, None if image_shape is None else tuple(image_shape),
           shared_masks)
    if key not in steps:
        def step(images):
            return uncertainty_from_logits(
                mc_logits(classifier, images, num_samples, shared_masks), multilabel)

        if image_shape is None:
            steps[key] = tf.function(step, reduce_retracing=True)
        else:
            steps[key] = tf.function(step, input_signature=[
                tf.TensorSpec([None, *image_shape], tf.float32)])
    return steps[key]


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with tf.data autotuning off.

    On a 2-core CPU, a pass over an autotuned pipeline of in-memory images while the model
    computes stalls every second or third time for ~0.5 s (measured: MC prediction of the
    624 PneumoniaMNIST test images took 0.70 s or 1.27 s, bimodal; with autotuning off
    0.74-0.95 s, never 1.27 s; docs/PERFORMANCE.md). These pipelines only cast uint8 to
    float, which needs no tuning.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def mc_predict(classifier, dataset: tf.data.Dataset, num_samples: int,
               multilabel: bool = False, *, image_shape=None,
               shared_masks: bool = False) -> dict:
    """MC-dropout predictions over a set of images, batch by batch: the one implementation
    (training's validation, serving's threshold, evaluation.MCPredictor and the report).

    `dataset`: a tf.data.Dataset or any iterable of batches of float32 images in [0, 1] with
    the classifier's channels (or of (images, targets) pairs). Each batch runs
    `uncertainty_from_logits(mc_logits(...))` in one traced call, split into several calls
    where it is larger than `images_per_call` allows. Returns the measures of every image,
    concatenated: {'probs' (N, K), 'predictive_entropy', 'expected_entropy',
    'mutual_information' (N,)}. The masks come from the classifier's dropout RNG as it is:
    wrap the call in evaluation.seeded_dropout for reproducible numbers. `shared_masks`:
    see mc_logits (one answer per image, whatever the batch; evaluation and serving).

    `image_shape` (H, W, C) traces one graph for batches of any size instead of one per
    batch shape. The two differ in the last float bit (with the batch size known, TensorFlow
    picks other CPU kernels); evaluation passes it, training does not, and each keeps the
    numbers it has always given.
    """
    step = _mc_step(classifier, num_samples, multilabel, image_shape, shared_masks)
    if isinstance(dataset, tf.data.Dataset):
        dataset = without_autotuning(dataset)
    outputs = {}
    for batch in dataset:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        chunk = images_per_call(len(images), images.shape[1:], num_samples)
        for start in range(0, len(images), chunk):
            for key, value in step(images[start:start + chunk]).items():
                outputs.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values, axis=0) for key, values in outputs.items()}
