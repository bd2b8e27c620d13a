"""Real images degraded in known ways at three strengths: what the quality yardstick
(bench/quality_yardstick.py) must see getting worse. No flags here, so tests import it."""

from __future__ import annotations

import numpy as np

# Each degradation's parameter at the three strengths; the docs' table of what they mean.
DEGRADATIONS = {
    "blur": (0.5, 1.0, 2.0),          # Gaussian blur, sigma in pixels
    "noise": (0.05, 0.1, 0.2),        # additive Gaussian noise, sigma in [0, 1] intensity
    "contrast": (0.7, 0.4, 0.15),     # deviations from each image's mean kept (1 = clean)
    "downsample": (2, 4, 7),          # factor down (area) then back up (bilinear): 14, 7, 4 px
    "blend": (0.15, 0.3, 0.5),        # weight of a random other-class image; label unchanged
    "copies": (0.1, 0.3, 0.6),        # share replaced by exact training images (+ labels)
}
STRENGTHS = ("mild", "moderate", "severe")


def degrade(kind: str, value, split, train, rng: np.random.Generator):
    """`split` (test images, uint8) degraded by `kind` at parameter `value`."""
    import tensorflow as tf
    from scipy import ndimage

    from tsynd_tf import data

    x = split.images.astype(np.float32) / 255.0
    targets = split.targets
    if kind == "blur":
        x = ndimage.gaussian_filter(x, sigma=(0, value, value, 0), mode="reflect")
    elif kind == "noise":
        x = x + rng.normal(0.0, value, x.shape).astype(np.float32)
    elif kind == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = mean + value * (x - mean)
    elif kind == "downsample":
        size = x.shape[1]
        small = tf.image.resize(x, (size // value, size // value), method="area")
        x = tf.image.resize(small, (size, size), method="bilinear").numpy()
    elif kind == "blend":
        labels = targets.argmax(1)
        partners = np.array([rng.choice(np.flatnonzero(labels != c)) for c in labels])
        x = (1 - value) * x + value * x[partners]
    elif kind == "copies":
        replaced = rng.choice(len(split), int(round(value * len(split))), replace=False)
        drawn = rng.choice(len(train), len(replaced), replace=False)
        images, targets = split.images.copy(), targets.copy()
        images[replaced], targets[replaced] = train.images[drawn], train.targets[drawn]
        return data.Split(images, targets)
    return data.Split(data.to_uint8(np.clip(x, 0.0, 1.0)), targets)
