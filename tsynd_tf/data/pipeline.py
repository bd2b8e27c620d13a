"""tf.data input pipelines: uint8 arrays -> batches of float32 images in [0, 1]."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUGMENT_TRANSLATION = 0.05  # fraction of height/width: a few pixels, label-preserving


def convert_channels(images: tf.Tensor, channels: int) -> tf.Tensor:
    """1 <-> 3 channel conversion (grayscale replicated / luminance)."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(images)
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(images)
    raise ValueError(f"Cannot convert images with {have} channels to {channels}.")


def make_pipeline(images: np.ndarray, targets: np.ndarray | None, batch_size: int, *,
                  shuffle: bool = False, seed: int = 0, augment: bool = False,
                  channels: int | None = None, repeat: bool = False) -> tf.data.Dataset:
    """Batches of (images float32 [0,1], targets) or images alone when targets is None.

    Decoded uint8 arrays are cached in memory (4x smaller than float32); scaling happens per
    batch. Augmentation (off by default, as in the paper's baseline) is a small random
    translation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    elements = images if targets is None else (images, targets)
    ds = tf.data.Dataset.from_tensor_slices(elements).cache()
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)

    augmenter = None
    if augment:
        import keras

        augmenter = keras.layers.RandomTranslation(AUGMENT_TRANSLATION, AUGMENT_TRANSLATION,
                                                   fill_mode="nearest", seed=seed)

    def prepare(x):
        x = tf.cast(x, tf.float32) / 255.0
        if channels is not None:
            x = convert_channels(x, channels)
        if augmenter is not None:
            x = augmenter(x, training=True)
        return x

    if targets is None:
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (prepare(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
