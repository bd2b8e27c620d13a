"""The page put together: its sections in order (`build_page`), written to disk with its
figures, which also go to the sweep's TensorBoard folder (`write_page`)."""

from __future__ import annotations

import re
from pathlib import Path

from tsynd_tf import cli
from tsynd_tf.fileio import atomic_path
from tsynd_tf.report import (amount_cas, comparison, cost, figures, quality_tables, records,
                             robust_tables, tables)


def build_page(sweep_dir: Path, output: Path, figures_dir: Path, title: str,
               model_figures: bool = True, count: int = 8) -> str:
    """The markdown of the page at `output`; draws its figures into `figures_dir`."""
    results_file = records.sweep_folder(sweep_dir).results_file
    finished = records.read_results(results_file)
    if not finished:
        raise cli.UsageError(f"{results_file} holds no finished cell yet.")
    import matplotlib

    matplotlib.use("Agg")
    configs = records.group_configs(finished, sweep_dir)
    robust = records.robust_keys(finished)
    planned = records.read_planned_cells(results_file)
    # First the answer (which synthetic data helped, how much, alone, and whether quality
    # predicted it), then the paper's claims and the details per config.
    lines = [f"# {title}", "", *tables.header_section(finished, configs, planned, sweep_dir),
             "", *comparison.answer_section(configs),
             *amount_cas.amount_section(configs, figures_dir, output.parent),
             *amount_cas.cas_section(configs), *amount_cas.quality_gain_section(configs),
             *comparison.per_class_section(configs),
             *tables.claims_section(configs), *tables.overview_section(configs),
             *tables.settings_section(configs), "## Results per config", ""]
    for config in configs:
        measured = records.robust_keys(config.records)  # its own grid, not every config's
        lines += tables.config_section(config, measured)
        lines += robust_tables.area_section(config) + robust_tables.corruption_section(config)
        lines += tables.paired_section(config, measured)
    lines += quality_tables.quality_section(configs)
    lines += cost.cost_section(configs, cost.read_timing_windows(sweep_dir))
    lines += tables.reference_section(configs)
    lines += figures.figures_section(configs, robust, figures_dir, output.parent)
    if model_figures:
        from tsynd_tf.report.model_figures import model_figures_section

        from tsynd_tf.report.guidance_figures import guidance_section

        from tsynd_tf.report.pools_figure import pools_section

        lines += pools_section(configs, figures_dir, output.parent, count)
        lines += model_figures_section(configs, figures_dir, output.parent, count)
        lines += guidance_section(configs, figures_dir, output.parent, count)
    lines += tables.statistics_notes(configs)
    return "\n".join(lines).rstrip() + "\n"


def write_page(sweep_dir: Path, output: Path, figures_dir: Path, title: str,
               model_figures: bool = True, count: int = 8) -> Path:
    """Builds and writes the page; returns the folder its TensorBoard images went to."""
    page = build_page(sweep_dir, output, figures_dir, title, model_figures, count)
    with atomic_path(output, ".md") as tmp:
        tmp.write_text(page)
    linked = [output.parent / path for path in re.findall(r"!\[[^]]*\]\(([^)]+)\)", page)]
    logdir = records.sweep_folder(sweep_dir).tensorboard
    log_figures_to_tensorboard(linked, logdir / "report")
    return logdir


def log_figures_to_tensorboard(figure_files: list[Path], logdir: Path) -> None:
    """The page's figures as TensorBoard images (tag report/<file stem>), replacing the
    previous report's event file, so `tensorboard --logdir SWEEP_DIR` shows them next to
    the runs' own summaries."""
    import shutil

    import tensorflow as tf

    shutil.rmtree(logdir, ignore_errors=True)
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for path in figure_files:
            image = tf.io.decode_png(path.read_bytes(), channels=4)
            tf.summary.image(f"report/{path.stem}", image[tf.newaxis], step=0)
    writer.close()
