"""The pool grid (tsynd_tf.pool_grid) and the report's pools figure (report.pools_figure) on
real PneumoniaMNIST: the grid's layout and TensorBoard round trip, the figure's choice of
seed and blocks from run directories holding real images as pools, and the page of a real
tiny sweep."""

import json

import numpy as np
import pytest
from conftest import run_module
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tsynd_tf import pool_grid, runs
from tsynd_tf.config import TrainConfig
from tsynd_tf.report.pools_figure import labelled_images, pools_section, round_pools
from tsynd_tf.report.records import Config

PER_CLASS, PAD = 4, 2


def tile(grid: np.ndarray, k: int, j: int, size: int = 28) -> np.ndarray:
    """The image at class row k, column j of a class_grid of size x size images."""
    step = size + PAD
    return grid[k * step:k * step + size, j * step:j * step + size]


# ----------------------------------------------------------------------------- the grid


def test_grid_blocks_are_the_first_images_of_each_class(pneumonia):
    images, targets = pneumonia.train.images[:60], pneumonia.train.targets[:60]
    grid = pool_grid.class_grid(images, targets, pneumonia.info.class_names, PER_CLASS, PAD)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * (28 + PAD) - PAD, PER_CLASS * (28 + PAD) - PAD, 1)
    for k in range(2):
        first = np.flatnonzero(targets[:, k] == 1)[:PER_CLASS]
        assert len(first) == PER_CLASS  # both classes are among the first 60 images
        for j, index in enumerate(first):
            np.testing.assert_array_equal(tile(grid, k, j), images[index])
    # The padding between tiles and rows is the fill level, not image pixels.
    assert (grid[28:28 + PAD] == pool_grid.FILL).all()
    assert (grid[:, 28:28 + PAD] == pool_grid.FILL).all()
    np.testing.assert_allclose(pool_grid.row_centres(grid.shape[0], 2, PAD), [13.5, 43.5])


def test_grid_of_a_class_short_of_images_leaves_blank_tiles(pneumonia):
    labels = pneumonia.train.targets.argmax(1)
    normal = np.flatnonzero(labels == 0)[:2]  # two normal images, then pneumonia ones
    chosen = np.concatenate([normal, np.flatnonzero(labels == 1)[:6]])
    images, targets = pneumonia.train.images[chosen], pneumonia.train.targets[chosen]
    grid = pool_grid.class_grid(images, targets, pneumonia.info.class_names, PER_CLASS, PAD)
    for j in range(PER_CLASS):
        expected = images[j] if j < 2 else np.full((28, 28, 1), pool_grid.FILL)
        np.testing.assert_array_equal(tile(grid, 0, j), expected)
        np.testing.assert_array_equal(tile(grid, 1, j), images[2 + j])


def test_grid_keeps_colour_channels_and_multi_hot_rows(pneumonia):
    grey = pneumonia.train.images[:10]
    colour = np.concatenate([grey, 255 - grey, grey // 2], axis=-1)  # three distinct channels
    multi_hot = pneumonia.train.targets[:10].copy()
    multi_hot[0] = 1  # the first image has both findings: it heads both rows
    grid = pool_grid.class_grid(colour, multi_hot, pneumonia.info.class_names, PER_CLASS, PAD)
    assert grid.shape[-1] == 3
    np.testing.assert_array_equal(tile(grid, 0, 0), colour[0])
    np.testing.assert_array_equal(tile(grid, 1, 0), colour[0])
    second = np.flatnonzero(multi_hot[1:, 1] == 1)[0] + 1
    np.testing.assert_array_equal(tile(grid, 1, 1), colour[second])


@pytest.mark.parametrize("change, message", [
    (lambda i, t, n: (i.astype(np.float32), t, n), "takes uint8 images"),
    (lambda i, t, n: (i[..., 0], t, n), "takes uint8 images"),
    (lambda i, t, n: (i, t[:-1], n), "do not match 10 images and 2 class names"),
    (lambda i, t, n: (i, t, n + ("other",)), "do not match 10 images and 3 class names"),
])
def test_grid_rejects_what_it_cannot_lay_out(pneumonia, change, message):
    images, targets, names = change(pneumonia.train.images[:10], pneumonia.train.targets[:10],
                                    pneumonia.info.class_names)
    with pytest.raises(ValueError, match=message):
        pool_grid.class_grid(images, targets, names)


def test_grid_logs_to_tensorboard_unchanged(pneumonia, tmp_path):
    import tensorflow as tf

    grid = pool_grid.class_grid(pneumonia.train.images[:60], pneumonia.train.targets[:60],
                                pneumonia.info.class_names)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        tf.summary.image("pools/round_grid", grid[None], step=3,
                         description=pool_grid.describe(pneumonia.info.class_names))
    writer.close()
    # TF2 image summaries are tensors: [width, height, PNG] per image.
    [logged] = EventAccumulator(str(tmp_path)).Reload().Tensors("pools/round_grid")
    assert logged.step == 3
    width, height, png = tf.make_ndarray(logged.tensor_proto)
    assert (int(width), int(height)) == (grid.shape[1], grid.shape[0])
    decoded = tf.io.decode_png(png, channels=1).numpy()
    np.testing.assert_array_equal(decoded, grid)  # PNG is lossless: the same pixels


# ----------------------------------------------------------------------------- the figure


def write_run(sweep_dir, pneumonia, medmnist_dir, method: str, seed: int, pool=None,
              data_dir=None) -> dict:
    """A run directory of the sweep (its config and labelled subset: the first 40 training
    images) with `pool` as its round-0 pool; returns its results record."""
    cell = f"tiny_{method}_s{seed}"
    directory = runs.SweepDir(sweep_dir).run(cell)
    config = TrainConfig(dataset="pneumoniamnist", size=28, seed=seed, train_count=40,
                         data_dir=str(data_dir or medmnist_dir))
    directory.write_config(config.to_dict(), pneumonia.info)
    directory.write_subset({"indices": list(range(40))})
    if pool is not None:
        directory.write_pool(0, images=pool.images, targets=pool.targets)
    return {"cell": cell, "config": "tiny", "method": method, "seed": seed,
            "dataset": "pneumoniamnist", "train_count": 40, "train_fraction": 1.0,
            "training": {"num_labelled": 40}, "run_dir": str(directory.path), "metrics": {}}


def test_figure_shows_every_pool_of_the_seed_with_most(pneumonia, medmnist_dir, tmp_path):
    """Seed 1 has two pools (test images as one generator's, validation images as
    another's), seed 0 one: the figure is seed 1's, baseline and its pool-less run left out."""
    test, val = pneumonia.test.subset(np.arange(50)), pneumonia.val.subset(np.arange(50))
    records = [write_run(tmp_path, pneumonia, medmnist_dir, "baseline", 1),
               write_run(tmp_path, pneumonia, medmnist_dir, "gan", 1, test),
               write_run(tmp_path, pneumonia, medmnist_dir, "augment", 1, val),
               write_run(tmp_path, pneumonia, medmnist_dir, "diffusion", 1),  # no pool yet
               write_run(tmp_path, pneumonia, medmnist_dir, "gan", 0, val)]
    config = Config("tiny", records, tmp_path)
    seed, directories = round_pools(config)
    assert seed == 1 and list(directories) == ["augment", "gan"]  # page order
    real = labelled_images(directories["gan"], {})
    np.testing.assert_array_equal(real.images, pneumonia.train.images[:40])
    lines = pools_section([config], tmp_path / "figures", tmp_path, PER_CLASS)
    assert "![pools tiny](figures/pools_tiny.png)" in lines
    assert any(line.startswith("**Synthetic pools, pneumoniamnist, 40 labelled images, seed 1"
                               ) for line in lines)
    figure = np.asarray(Image.open(tmp_path / "figures" / "pools_tiny.png"))
    assert figure.ndim == 3 and figure.shape[0] > figure.shape[1]  # three blocks, stacked


def test_figure_without_data_shows_the_pools_alone_in_colour(pneumonia, medmnist_dir,
                                                             tmp_path):
    grey = pneumonia.test.images[:50]
    colour = type(pneumonia.test)(np.concatenate([grey, grey // 4, grey // 4], axis=-1),
                                  pneumonia.test.targets[:50])  # tinted red
    records = [write_run(tmp_path, pneumonia, medmnist_dir, "gan", 0, colour,
                         data_dir=tmp_path / "no_data_here")]
    lines = pools_section([Config("tiny", records, tmp_path)], tmp_path, tmp_path, PER_CLASS)
    assert "Blocks, top to bottom: gan;" in lines[0]
    assert "Real images left out:" in lines[0] and "no_data_here" in lines[0]
    figure = np.asarray(Image.open(tmp_path / "pools_tiny.png").convert("RGB")).astype(int)
    assert (figure[..., 0] - figure[..., 1] > 50).mean() > 0.2  # drawn in colour, not grey


def test_configs_without_pools_get_no_figure(pneumonia, medmnist_dir, tmp_path):
    baseline = [write_run(tmp_path, pneumonia, medmnist_dir, "baseline", 0)]
    assert pools_section([Config("tiny", baseline, tmp_path)], tmp_path, tmp_path, 8) == []
    # A generating method whose run directory holds no pool (e.g. runs/ not copied here):
    # said, not drawn.
    absent = [write_run(tmp_path, pneumonia, medmnist_dir, "gan", 0)]
    lines = pools_section([Config("tiny", absent, tmp_path)], tmp_path, tmp_path, 8)
    assert lines == ["*Pools figure of `tiny` skipped: no run directory of it holds a round-0 "
                     "pool (are its runs/ on this machine?).*", ""]
    assert not list(tmp_path.glob("*.png"))


def test_a_variant_of_a_shown_subset_gets_no_figure_of_its_own(pneumonia, medmnist_dir,
                                                                tmp_path):
    """A synthetic-only config samples the generators of the config of its labelled subset:
    next to that config it adds no figure; on its own it gets one."""
    pool = pneumonia.test.subset(np.arange(50))
    plain = Config("tiny", [write_run(tmp_path, pneumonia, medmnist_dir, "gan", 0, pool)],
                   tmp_path)
    record = write_run(tmp_path / "cas", pneumonia, medmnist_dir, "gan", 0, pool)
    cas = Config("tiny_cas", [{**record, "config": "tiny_cas", "cell": "tiny_cas_gan_s0",
                               "flags": {"train_on": "synthetic"}}], tmp_path)
    lines = pools_section([plain, cas], tmp_path / "both", tmp_path, PER_CLASS)
    assert "![pools tiny](both/pools_tiny.png)" in lines
    assert not any("tiny_cas" in line for line in lines)
    lines = pools_section([cas], tmp_path / "alone", tmp_path, PER_CLASS)
    assert "![pools tiny_cas](alone/pools_tiny_cas.png)" in lines


# ----------------------------------------------------------------------------- the page


def test_sweep_page_shows_the_pools_of_configs_that_generate(tiny_sweep, medmnist_dir,
                                                             tmp_path):
    """The session's real tiny sweep (conftest.tiny_sweep: baseline and tsynd_mi), its results
    copied to a sweep folder of this test's own, plus a config of its baseline cell alone (its
    record under another config name): the page and its TensorBoard images hold the first
    config's pools figure, and nothing for the second."""
    sweep_dir = tmp_path / "sweep"
    results = runs.SweepDir(sweep_dir).results_file
    results.parent.mkdir(parents=True, exist_ok=True)
    lines = runs.SweepDir(tiny_sweep["sweep_dir"]).results_file.read_text().splitlines()
    baseline = next(r for r in map(json.loads, lines) if r.get("method") == "baseline")
    # Its run_dir (absolute) still finds the run directory.
    lines.append(json.dumps({**baseline, "config": "base", "cell": "base_baseline_s0"}))
    results.write_text("\n".join(lines) + "\n")
    page_path = tmp_path / "docs" / "RESULTS.md"
    run_module("tsynd_tf.report", f"--sweep_dir={sweep_dir}", f"--output={page_path}",
               "--num_images=4", data_dir=medmnist_dir)
    page = page_path.read_text()
    assert "![pools tiny](figures/pools_tiny.png)" in page
    assert "pools_base" not in page and "Pools figure of `base`" not in page
    assert ("Blocks, top to bottom: real (labelled), tsynd_mi; blank tiles"
            in page)  # baseline holds no pool
    assert Image.open(page_path.parent / "figures" / "pools_tiny.png").size[1] > 100
    events = EventAccumulator(str(sweep_dir / "tensorboard" / "report")).Reload()
    assert "report/pools_tiny" in events.Tags()["tensors"]
