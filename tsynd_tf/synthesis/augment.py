"""`augment`: the augmentation a practitioner tries first, as the synthetic share.

Each round's pool holds augmented copies of labelled images, drawn as the latent methods draw
their sources (with replacement when the pool is larger than the labelled set), so it is
compared with TSynD under the same schedule: same steps, batch size and synthetic share.
(`--augment` is something else: a light random translation of every training batch, real and
synthetic, for any method.)

The policy (Keras 3 preprocessing layers, applied in this order to images in [0, 1]):
  rotation     up to ±ROTATION_DEGREES
  translation  up to ±TRANSLATION of height and width
  zoom         in or out by up to ZOOM
  contrast     factor in [1 - CONTRAST, 1 + CONTRAST] around each image's mean
  brightness   up to ±BRIGHTNESS added
Geometric ops fill with the nearest edge pixel and run at WORKING_SIZE px or more (images are
upsampled by an integer factor first and area-averaged back after): three bilinear resamplings
at 28 px blur an image visibly, at 112 px they do not. No flips: a mirrored chest X-ray puts the
heart on the wrong side, and none of our datasets is symmetric by nature. Each pool's
augmentations are seeded by (seed, round), so a regenerated pool is the same pool.
"""

from __future__ import annotations

import keras
import numpy as np

from tsynd_tf import data
from tsynd_tf.data.pipeline import to_uint8
from tsynd_tf.synthesis.base import Pool, SynthesisMethod
from tsynd_tf.synthesis.generators import draw_sources

ROTATION_DEGREES, TRANSLATION, ZOOM, CONTRAST, BRIGHTNESS = 10.0, 0.08, 0.1, 0.2, 0.1
WORKING_SIZE = 112


def augmentation_policy(size: int, seed: int) -> keras.Sequential:
    """The fixed policy above for size x size images, every layer seeded from `seed`."""
    layers = keras.layers
    working = size * -(-WORKING_SIZE // size)  # the smallest multiple of size >= 112
    return keras.Sequential([
        layers.Resizing(working, working, interpolation="bilinear"),
        layers.RandomRotation(ROTATION_DEGREES / 360.0, fill_mode="nearest", seed=seed),
        layers.RandomTranslation(TRANSLATION, TRANSLATION, fill_mode="nearest", seed=seed + 1),
        layers.RandomZoom(ZOOM, fill_mode="nearest", seed=seed + 2),
        layers.Resizing(size, size, interpolation="area"),
        layers.RandomContrast(CONTRAST, value_range=(0.0, 1.0), seed=seed + 3),
        layers.RandomBrightness(BRIGHTNESS, value_range=(0.0, 1.0), seed=seed + 4),
    ], name="augmentation_policy")


class Augment(SynthesisMethod):
    """Augmented copies of labelled images; no generator to train."""

    def fit(self, labelled: data.Split, unlabelled: data.Split) -> None:
        self.labelled = labelled

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        seed = self.config.stream_seed(round_index)
        sources = draw_sources(len(self.labelled), n, seed)
        policy = augmentation_policy(self.labelled.images.shape[1], seed)
        batch = self.context.eval_batch_size
        images = self.labelled.images[sources].astype(np.float32) / 255.0
        augmented = np.concatenate([
            keras.ops.convert_to_numpy(policy(images[i:i + batch], training=True))
            for i in range(0, n, batch)])
        return Pool(to_uint8(np.clip(augmented, 0.0, 1.0)), self.labelled.targets[sources],
                    {"source_indices": self.context.labelled_indices[sources]})
