"""MedMNIST-C-style image corruptions (Di Salvo et al., 2024), re-implemented with numpy,
scipy and PIL; `evaluation.evaluate_classifier` scores a classifier on them.

MedMNIST-C (pip `medmnistc` 0.1.0) cannot be used here: its corruption modules import
torch/torchvision (enhance.py, filter.py, utils.py), OpenCV (base.py) and ImageMagick via wand
(filter.py), and it pins medmnist==3.0.1 and scikit-image==0.23.2. `CORRUPTIONS` holds its
corruptions for PneumoniaMNIST and BreastMNIST with its severity parameters (its registry.py).

uint8 (N, H, W, C) -> uint8, one function per corruption with MedMNIST-C's parameter. The
parameters are MedMNIST-C's, which were set for 224-px images, and are applied unchanged at
the evaluated resolution: at 224 px the corruptions match MedMNIST-C; at 28 px pixelation and
blurs are relatively stronger. Compare corruption numbers only between runs at the same image
size. Results are rounded to uint8 (MedMNIST-C truncates).
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounded to the nearest level."""
    return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)


def _per_image_pil(images: np.ndarray, transform: Callable[[Image.Image], Image.Image]):
    gray = images.shape[-1] == 1
    out = [np.asarray(transform(Image.fromarray(x[..., 0] if gray else x))) for x in images]
    return np.stack(out).reshape(images.shape)


def _pixelate(images, factor, rng):
    h, w = images.shape[1:3]
    small = (max(1, int(w * factor)), max(1, int(h * factor)))
    return _per_image_pil(images, lambda im: im.resize(small, Image.Resampling.BOX)
                          .resize((w, h), Image.Resampling.BOX))


def _jpeg(images, quality, rng):
    def compress(im):
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer)
    return _per_image_pil(images, compress)


def _gaussian_noise(images, sigma, rng):
    x = images / 255.0
    return to_uint8(x + rng.normal(0.0, sigma, x.shape))


def _speckle_noise(images, sigma, rng):
    x = images / 255.0
    return to_uint8(x + x * rng.normal(0.0, sigma, x.shape))


def _impulse_noise(images, amount, rng):
    """Salt and pepper: a fraction `amount` of the values set to 0 or 255 with p = 1/2."""
    hit = rng.random(images.shape) < amount
    salt = rng.random(images.shape) < 0.5
    return np.where(hit, np.where(salt, 255, 0), images).astype(np.uint8)


def _shot_noise(images, photons, rng):
    return to_uint8(rng.poisson(images / 255.0 * photons) / photons)


def _gaussian_blur(images, kernel_size, rng):
    """torchvision.gaussian_blur: sigma from the kernel size, kernel_size taps, reflect pad."""
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    radius = (kernel_size - 1) // 2
    blurred = ndimage.gaussian_filter(images / 255.0, sigma, axes=(1, 2), mode="mirror",
                                      truncate=radius / sigma)
    return to_uint8(blurred)


def _motion_blur(images, radius_sigma, rng):
    """ImageMagick's -motion-blur radius x sigma at a random angle in [-45, 45] degrees:
    a one-sided Gaussian-weighted streak of 2*radius+1 pixels, edge pixels repeated."""
    radius, sigma = radius_sigma
    taps = np.arange(2 * int(np.ceil(radius)) + 1)
    weights = np.exp(-taps ** 2 / (2.0 * sigma ** 2))
    weights /= weights.sum()
    h, w = images.shape[1:3]
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    out = np.zeros(images.shape, np.float64)
    for n, angle in enumerate(np.deg2rad(rng.uniform(-45, 45, len(images)))):
        for tap, weight in zip(taps, weights):
            dy, dx = int(np.round(tap * np.sin(angle))), int(np.round(tap * np.cos(angle)))
            out[n] += weight * images[n, np.clip(rows + dy, 0, h - 1),
                                      np.clip(cols + dx, 0, w - 1)]
    return to_uint8(out / 255.0)


def _brightness(images, factor, rng):
    """PIL ImageEnhance.Brightness: blend with black."""
    return to_uint8(images / 255.0 * factor)


def _contrast(images, factor, rng):
    """PIL ImageEnhance.Contrast: blend with the image's mean grey level."""
    x = images / 255.0
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return to_uint8(mean + factor * (x - mean))


def _gamma(images, gamma, rng):
    """torchvision.adjust_gamma with gain 1: gamma > 1 darkens, < 1 brightens."""
    return to_uint8((images / 255.0) ** gamma)


# corruption -> (function, parameters of severities 1..5), from MedMNIST-C's registry.py.
_PNEUMONIA = {
    "pixelate": (_pixelate, (0.8, 0.7, 0.6, 0.5, 0.4)),
    "jpeg_compression": (_jpeg, (50, 30, 15, 10, 7)),
    "gaussian_noise": (_gaussian_noise, (0.04, 0.05, 0.06, 0.07, 0.08)),
    "speckle_noise": (_speckle_noise, (0.05, 0.07, 0.10, 0.15, 0.20)),
    "impulse_noise": (_impulse_noise, (0.005, 0.01, 0.013, 0.017, 0.02)),
    "shot_noise": (_shot_noise, (300, 200, 150, 100, 80)),
    "gaussian_blur": (_gaussian_blur, (3, 5, 7, 9, 11)),
    "brightness_up": (_brightness, (1.1, 1.2, 1.3, 1.4, 1.5)),
    "brightness_down": (_brightness, (0.9, 0.8, 0.7, 0.6, 0.5)),
    "contrast_up": (_contrast, (1.1, 1.2, 1.3, 1.4, 1.6)),
    "contrast_down": (_contrast, (0.9, 0.8, 0.7, 0.6, 0.4)),
    "gamma_corr_up": (_gamma, (1.1, 1.2, 1.3, 1.4, 1.6)),
    "gamma_corr_down": (_gamma, (0.9, 0.8, 0.7, 0.6, 0.4)),
}
_BREAST = {
    "pixelate": (_pixelate, (0.30, 0.25, 0.20, 0.15, 0.10)),
    "jpeg_compression": (_jpeg, (50, 30, 15, 10, 7)),
    "speckle_noise": (_speckle_noise, (0.10, 0.15, 0.20, 0.25, 0.30)),
    "motion_blur": (_motion_blur, ((5, 5), (9, 7), (9, 10), (13, 10), (17, 12))),
    "brightness_up": (_brightness, (1.4, 1.5, 1.6, 1.8, 2.0)),
    "brightness_down": (_brightness, (0.55, 0.5, 0.45, 0.4, 0.3)),
    "contrast_down": (_contrast, (0.9, 0.8, 0.7, 0.6, 0.4)),
}
CORRUPTIONS = {"pneumoniamnist": _PNEUMONIA, "breastmnist": _BREAST}
SEVERITIES = (1, 2, 3, 4, 5)


def corruptions_for(dataset_name: str) -> dict:
    """MedMNIST-C's corruption set of a dataset; others (image folders, other MedMNIST
    datasets) get PneumoniaMNIST's, a generic set of noise/blur/intensity/compression shifts."""
    return CORRUPTIONS.get(dataset_name, _PNEUMONIA)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0,
            dataset_name: str = "pneumoniamnist") -> np.ndarray:
    """Applies corruption `name` at severity 1..5 to uint8 images (N, H, W, C)."""
    table = corruptions_for(dataset_name)
    if name not in table:
        raise ValueError(f"Unknown corruption {name!r} for {dataset_name}; "
                         f"choose from {sorted(table)}.")
    if severity not in SEVERITIES:
        raise ValueError(f"Severity must be one of {SEVERITIES}; got {severity}.")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"Corruptions take uint8 (N, H, W, C) images; got {images.dtype} "
                         f"{images.shape}.")
    function, parameters = table[name]
    rng = np.random.default_rng([seed, list(table).index(name), severity])
    return function(images, parameters[severity - 1], rng)
