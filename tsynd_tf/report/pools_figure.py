"""What each generator made: per config, one figure with a block per generating method (the
first images of each class in its round-0 pool) under a block of the labelled real images
the runs trained on.

The blocks are pool_grid.class_grid arrays, the grid that training logs to TensorBoard per
round, so the page and TensorBoard show the same images. One seed per config: the lowest of
those whose run directories hold the most round-0 pools (methods of one seed share the
labelled subset). A run directory without pools (baseline, a run not generated yet, or
runs/ not copied) adds no block. Reads the data like the model figures (the runs' --data_dir,
else $TSYND_DATA_DIR); without it the figure shows the pools alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging

from tsynd_tf import pool_grid
from tsynd_tf.report.figures import link, save_figure
from tsynd_tf.report.records import Config, method_key

ROUND = 0  # the pool every generating run has, made before any synthetic training
REAL = "real (labelled)"


def round_pools(config: Config) -> tuple[int, dict] | None:
    """(seed, {method: run directory}) of the seed whose runs hold the most round-0 pools
    (the lowest seed among equals), methods in page order; None if no run holds one."""
    by_seed = {}
    for record in config.records:
        directory = config.run_dir(record)
        if directory.pool_file(ROUND).is_file():
            by_seed.setdefault(record["seed"], {})[record["method"]] = directory
    if not by_seed:
        return None
    seed = max(sorted(by_seed), key=lambda s: len(by_seed[s]))  # max keeps the first
    return seed, {m: by_seed[seed][m] for m in sorted(by_seed[seed], key=method_key)}


def labelled_images(directory, dataset_cache: dict):
    """The labelled real images (a data.Split) the run in `directory` trained on, its
    dataset loaded once per (dataset, size, data dir, channels) and checked against the
    run's recorded fingerprint."""
    from tsynd_tf import runs
    from tsynd_tf.config import ConfigError, TrainConfig

    try:
        config = TrainConfig.from_dict(directory.read_flags() or {})
    except ConfigError as e:
        raise runs.RunDirError(f"{directory.config_file}: {e}") from e
    run = runs.Run(directory, config, directory.read_info(), classifier=None)
    key = (config.dataset, config.size, config.data_dir, config.channels)
    if key not in dataset_cache:
        dataset_cache[key] = run.load_dataset()
    return run.labelled(dataset_cache[key])


def plot_pools(blocks: dict[str, tuple[np.ndarray, np.ndarray]], class_names, title: str,
               path: Path, per_class: int) -> None:
    """One class_grid per block, stacked, labelled with the block's name and image count and
    each row's class."""
    import matplotlib.pyplot as plt

    rows = len(class_names)
    fig, axes = plt.subplots(len(blocks), 1, squeeze=False,
                             figsize=(0.9 * per_class + 2, (0.9 * rows + 0.3) * len(blocks)))
    for ax, (name, (images, targets)) in zip(axes[:, 0], blocks.items()):
        grid = pool_grid.class_grid(images, targets, class_names, per_class)
        if grid.shape[-1] == 1:
            ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(grid, interpolation="nearest")
        ax.set_yticks(pool_grid.row_centres(grid.shape[0], rows),
                      [c[:14] for c in class_names], fontsize=7)
        ax.set_xticks([])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(f"{name}\n({len(images)} images)", fontsize=8, fontweight="bold")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def pools_section(configs: list[Config], figures_dir: Path, page_dir: Path,
                  count: int) -> list[str]:
    """Each config's pools figure and its caption; a config of baseline cells gets none,
    one with generating methods but no pool on disk a line that says so. The amount curve's
    and synthetic-only configs sample the generators of the config of their labelled subset
    (same data, labels and generator settings): where that config is on the page, its figure
    shows their pools."""
    lines, dataset_cache = [], {}
    plain = {(c.dataset, c.num_labelled) for c in configs if not c.variant}
    for config in configs:
        if config.variant and (config.dataset, config.num_labelled) in plain:
            continue
        found = round_pools(config)
        if found is None:
            if any(m != "baseline" for m in config.methods):
                lines += [f"*Pools figure of `{config.name}` skipped: no run directory of it "
                          f"holds a round-{ROUND} pool (are its runs/ on this machine?).*", ""]
            continue
        seed, directories = found
        first = next(iter(directories.values()))
        blocks, note = {}, ""
        try:
            real = labelled_images(first, dataset_cache)
            blocks[REAL] = (real.images, real.targets)
        except (OSError, ValueError) as e:  # data not found (DataError), a bad run config
            logging.warning("Pools figure of %s without real images: %s", config.name, e)
            note = f" Real images left out: {e}"
        for method, directory in directories.items():
            pool = directory.read_pool(ROUND)
            blocks[method] = (pool["images"], pool["targets"])
        path = figures_dir / f"pools_{config.name}.png"
        plot_pools(blocks, first.read_info().class_names,
                   f"{config.label}, seed {seed}, round {ROUND}", path, count)
        lines += [f"**Synthetic pools, {config.label}, seed {seed}**: the first {count} "
                  f"images of each class (pool order) of every generating method's round-"
                  f"{ROUND} pool, under the first labelled real images of the same seed "
                  "(`tsynd_tf.pool_grid.class_grid`, the grid runs log to TensorBoard). "
                  f"Blocks, top to bottom: {', '.join(blocks)}; blank tiles: a class with "
                  f"fewer images.{note}", "",
                  link(path, f"pools {config.name}", page_dir), ""]
    return lines
