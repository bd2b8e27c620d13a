"""tf.data input pipelines: uint8 arrays -> batches of float32 images in [0, 1].

`make_pipeline` is the one way arrays become batches; `classifier_batches` mixes real and
synthetic images in a fixed ratio for training; `for_fit` makes any of them distributable.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tsynd_tf.config import PROPORTIONAL

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


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, rounded (how synthetic pools are stored)."""
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def for_fit(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """A dataset for `fit` under any strategy: in multi-worker training each worker takes its
    own part of every global batch (DATA sharding; the default AUTO policy first tries to
    shard by input file, which these in-memory datasets do not have)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def interleaving_order(n_real: int, n_synthetic: int) -> np.ndarray:
    """Row order that spreads the synthetic rows evenly through a [real, synthetic] batch, so
    that every replica's contiguous slice of it holds the same real/synthetic mix."""
    keys = np.concatenate([(np.arange(n_real) + 0.5) / n_real,
                           (np.arange(n_synthetic) + 0.5) / n_synthetic])
    return np.argsort(keys, kind="stable")


def synthetic_per_batch(config, n_real: int, n_synthetic: int) -> int:
    """Synthetic images in each batch: --synthetic_ratio of it, or with 'proportional' the
    synthetic images' share of all training images (n_synthetic / (n_real + n_synthetic)),
    at least one and at most batch_size - 1 either way."""
    share = (n_synthetic / (n_real + n_synthetic) if config.synthetic_ratio == PROPORTIONAL
             else float(config.synthetic_ratio))
    return min(config.batch_size - 1, max(1, round(share * config.batch_size)))


def classifier_batches(real, synthetic, config, seed: int, replicas: int = 1) -> tf.data.Dataset:
    """Endless training batches of `config.batch_size`: real only, or real and synthetic
    (data.Split each) with `synthetic_per_batch` of every batch synthetic.

    With several replicas (a distribution strategy) the two parts are interleaved: each
    replica gets a contiguous slice of the batch and normalises it with its own BatchNorm
    statistics, which must not come from real or synthetic images alone.
    """
    if synthetic is None or len(synthetic) == 0:
        return make_pipeline(real.images, real.targets, config.batch_size, shuffle=True,
                             seed=seed, augment=config.augment, repeat=True)
    n_synthetic = synthetic_per_batch(config, len(real), len(synthetic))
    real_ds = make_pipeline(real.images, real.targets, config.batch_size - n_synthetic,
                            shuffle=True, seed=seed, augment=config.augment, repeat=True)
    synthetic_ds = make_pipeline(synthetic.images, synthetic.targets, n_synthetic,
                                 shuffle=True, seed=seed + 1, augment=config.augment,
                                 repeat=True)
    order = (interleaving_order(config.batch_size - n_synthetic, n_synthetic)
             if replicas > 1 else None)

    def join(a, b):
        images, targets = tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)
        if order is None:
            return images, targets
        return tf.gather(images, order), tf.gather(targets, order)

    return tf.data.Dataset.zip(real_ds, synthetic_ds).map(join)
