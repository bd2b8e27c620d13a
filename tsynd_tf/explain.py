"""Grad-CAM (Selvaraju et al., 2017) for MC-dropout classifiers.

For one stochastic pass with feature maps A (h, w, F) of a convolution and class score y_c
(the logit), Grad-CAM is ReLU(sum_f alpha_f A_f) with alpha_f = mean_{i,j} dy_c / dA_f[i, j].
Here each of the T MC-dropout passes has its own masks, so each gets its own map; the maps
are averaged over the T passes, upsampled to the image size and scaled to [0, 1] per image.
The T passes run as one call on the batch tiled T times, like `uncertainty.mc_logits`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tsynd_tf.data import convert_channels


def last_conv_layer(model: keras.Model) -> keras.layers.Layer:
    """The model's last Conv2D layer (the deepest spatial features)."""
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise ValueError(f"{model.name} has no Conv2D layer at its top level for Grad-CAM.")
    return convs[-1]


def grad_cam(classifier: keras.Model, images: np.ndarray, num_samples: int,
             class_indices: np.ndarray | int | None = None,
             layer_name: str | None = None, multilabel: bool = False) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] of `images` (N, H, W, C; uint8 or [0, 1] floats).

    class_indices: the class explained per image (N,) or for all images; default the class
    of highest MC-mean probability. A map is 0 everywhere when no feature raises the score.
    """
    images = np.asarray(images)
    images = (images.astype(np.float32) / 255.0 if images.dtype == np.uint8
              else images.astype(np.float32))
    layer = classifier.get_layer(layer_name) if layer_name else last_conv_layer(classifier)
    features_and_logits = keras.Model(classifier.inputs, [layer.output, classifier.output])
    batch, height, width = images.shape[:3]
    x = convert_channels(tf.constant(images), classifier.input_shape[-1])
    tiled = tf.tile(x, [num_samples, 1, 1, 1])  # row t * batch + i: pass t of image i
    with tf.GradientTape() as tape:
        features, logits = features_and_logits(tiled, training=False)
        features = tf.cast(features, tf.float32)
        logits = tf.reshape(tf.cast(logits, tf.float32), [num_samples, batch, -1])
        if class_indices is None:
            probs = tf.sigmoid(logits) if multilabel else tf.nn.softmax(logits)
            targets = tf.argmax(tf.reduce_mean(probs, 0), axis=-1)
        else:
            targets = tf.broadcast_to(tf.constant(class_indices, tf.int64), [batch])
        # Sum of the explained logits over passes and images: they are independent, so one
        # gradient gives every pass's d y_c / d A.
        score = tf.reduce_sum(logits * tf.one_hot(targets, tf.shape(logits)[-1])[None])
    gradients = tape.gradient(score, features)  # (T * N, h, w, F)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    cams = tf.image.resize(cams, [height, width], method="bilinear")[..., 0]
    cams = tf.reduce_mean(tf.reshape(cams, [num_samples, batch, height, width]), axis=0)
    peak = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(cams, peak).numpy()
