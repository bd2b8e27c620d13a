"""One picture of a synthetic pool: the first images of each class, one class per row.

`class_grid` is the one place that lays a pool out: the report's pools figure
(tsynd_tf.report.pools_figure) draws its blocks with it, and training logs the same array per
round to TensorBoard:

    grid = pool_grid.class_grid(pool.images, pool.targets, info.class_names)
    tf.summary.image("pools/round_grid", grid[None], step=round_index,
                     description=pool_grid.describe(info.class_names, pool_grid.PER_CLASS))

It imports numpy only, so that training and the report can both import it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PER_CLASS = 8  # images per class row, the report's and TensorBoard's default
PAD = 2  # pixels between tiles and between class rows
FILL = 255  # grey level of the padding and of the tiles of a class short of images


def class_grid(images: np.ndarray, targets: np.ndarray, class_names: Sequence[str],
               per_class: int = PER_CLASS, pad: int = PAD, fill: int = FILL) -> np.ndarray:
    """The first `per_class` images of each class, in pool order, as one uint8 image.

    Args:
      images: uint8 (N, H, W, C), C = 1 (grey) or 3 (colour).
      targets: (N, K) one-hot, or multi-hot for multi-label tasks. Row k holds the images
        whose target for class k is at least 0.5: the images of class k, or for a
        multi-label task those with finding k (an image may then appear in several rows).
      class_names: the K class names; row k, from the top, is class_names[k].
      per_class: images per row; a class with fewer leaves its remaining tiles `fill`.
      pad: pixels of `fill` between tiles and between rows (none around the grid).
      fill: grey level of the padding and of empty tiles.

    Returns:
      uint8 (K * (H + pad) - pad, per_class * (W + pad) - pad, C): for TensorBoard,
      `tf.summary.image(name, grid[None], step)`.

    Raises:
      ValueError: images not uint8 NHWC with 1 or 3 channels, targets not (N, K) with K the
        number of class names, or per_class < 1 or pad < 0.
    """
    images, targets = np.asarray(images), np.asarray(targets)
    _check(images, targets, class_names, per_class, pad)
    _, height, width, channels = images.shape
    tile_h, tile_w = height + pad, width + pad
    grid = np.full((len(class_names) * tile_h - pad, per_class * tile_w - pad, channels), fill,
                   dtype=np.uint8)
    for k in range(len(class_names)):
        # Pool order, so a round's grid shows the same images however often it is drawn.
        members = np.flatnonzero(targets[:, k] >= 0.5)[:per_class]
        for j, index in enumerate(members):
            grid[k * tile_h:k * tile_h + height, j * tile_w:j * tile_w + width] = images[index]
    return grid


def row_centres(grid_height: int, num_classes: int, pad: int = PAD) -> np.ndarray:
    """The pixel row at the middle of each class row of a class_grid of that height (for
    labelling the rows of a plotted grid)."""
    tile_h = (grid_height + pad) / num_classes
    return np.arange(num_classes) * tile_h + (tile_h - pad - 1) / 2


def describe(class_names: Sequence[str], per_class: int = PER_CLASS) -> str:
    """What a class_grid shows, for the description of its TensorBoard image."""
    return (f"The first {per_class} images of each class in the pool, one class per row, "
            f"top to bottom: {', '.join(class_names)}. Blank tiles: a class with fewer images.")


def _check(images: np.ndarray, targets: np.ndarray, class_names: Sequence[str],
           per_class: int, pad: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"class_grid takes uint8 images (N, H, W, 1 or 3); got "
                         f"{images.dtype} {images.shape} (convert with data.to_uint8).")
    if targets.shape != (len(images), len(class_names)):
        raise ValueError(f"class_grid: targets of shape {targets.shape} do not match "
                         f"{len(images)} images and {len(class_names)} class names "
                         f"{list(class_names)}; targets are (N, K) one-hot or multi-hot.")
    if per_class < 1 or pad < 0:
        raise ValueError(f"class_grid: per_class must be >= 1 and pad >= 0; got "
                         f"per_class={per_class}, pad={pad}.")


def save_png(grid: np.ndarray, path) -> None:
    """A class_grid as a PNG file (grey for one channel), for benches that keep pictures."""
    import matplotlib.pyplot as plt

    plt.imsave(path, grid.squeeze(), cmap="gray" if grid.shape[-1] == 1 else None,
               vmin=0, vmax=255)
