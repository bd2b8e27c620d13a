"""What the benches that sample pools and measure them with the yardstick share
(bench/diffusion_recipes.py, gan_recipes.py, guidance_scan.py, collapse_calibration.py): the
checks of their output flags, the line that heads each invocation's rows, the class grids,
a recipe search's row and its Markdown table. No flags are defined here, so every one of
them can import it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_model, git_revision
from tsynd_tf import cli


def check_outputs(num_images: int, output: str, grid_dir: str) -> None:
    """--num_images, --output and --grid_dir, before any work: UsageError naming the flag."""
    from tsynd_tf.fileio import check_output

    if num_images < 4:
        raise cli.UsageError("--num_images must be >= 4 (precision/recall use 3 neighbours).")
    check_output("--output", output, directory=False)
    check_output("--grid_dir", grid_dir)


def check_recipes(recipes: list[str], candidates: dict) -> None:
    unknown = [name for name in recipes if name not in candidates]
    if unknown or not recipes:
        raise cli.UsageError(f"--recipes: unknown {unknown or 'empty list'}; choose from "
                             f"{', '.join(candidates)}.")


def append_invocation(output: Path) -> None:
    """Heads this invocation's rows in the JSONL file: its command, CPU, git revision, date
    (the rows of earlier invocations stay above it)."""
    from tsynd_tf.fileio import append_json_line

    append_json_line(output, {"command": " ".join(sys.argv), "cpu": cpu_model(),
                              "git": git_revision(), "date": time.strftime("%Y-%m-%d")})


def save_class_grid(images: np.ndarray, targets: np.ndarray, names, grid_dir: str, stem: str,
                    **grid_options) -> None:
    """A pool's class grid (tsynd_tf.pool_grid) at <grid_dir>/<stem>.png."""
    from tsynd_tf import pool_grid

    Path(grid_dir).mkdir(parents=True, exist_ok=True)
    pool_grid.save_png(pool_grid.class_grid(images, targets, names, **grid_options),
                       Path(grid_dir) / f"{stem}.png")


def write_table(output: Path, table: str) -> None:
    """The Markdown table of every row so far, beside the JSONL file (.md), atomically."""
    from tsynd_tf.fileio import atomic_path

    with atomic_path(output.with_suffix(".md")) as path:
        path.write_text(table)


def pool_row(method, meter, images: np.ndarray, targets: np.ndarray, parameters: int) -> dict:
    """What every row of a recipe search holds: the generator (its cache record's settings
    and training seconds, its size), the pool measured by `meter` (reference.PoolQuality),
    label fidelity per class, and the load average (was the machine quiet?)."""
    from tsynd_tf import data, reference

    record = method.generator_record
    measured = meter.measure(data.Split(images, targets))
    return {"settings": record["settings"], "parameters": parameters,
            "train_seconds": record["seconds"], "loaded": record["loaded"], **measured,
            "label_fidelity_per_class": reference.by_class(measured, "label_fidelity"),
            "load_average": os.getloadavg()}
