r"""The command: tables, paired tests and figures of a sweep, generated into one markdown page.

  python -m tsynd_tf.report --sweep_dir=sweeps/medmnist [--output=docs/RESULTS.md] \
      [--figures_dir=docs/figures] [--title=...] [--nomodel_figures]

Reads the sweep's results file (one line per finished cell, written by tsynd_tf.experiment)
and the cells' run directories. Every number on the page is computed here from those files.
Per config (dataset x labelled fraction): mean ± std over seeds of every method, paired
differences between methods (seeds pair cells with the same labelled subset, autoencoder and
initialisation) with paired t-test and Wilcoxon p-values and the minimal detectable
difference, robustness as normalised areas under accuracy-vs-strength curves, balanced
error under corruptions relative to clean (cells evaluated with --corruptions), and a
verdict line; the paper's claims on the best-on-validation classifier and, where cells
recorded it, the classifier at the end of training. Figures: test
ACC/AUC vs labelled fraction, robust accuracy vs noise/attack strength, and, from one seed's
models (--model_figures), MI histograms of real vs synthetic images, synthetic examples and
Grad-CAM maps, and per config the round-0 pool of every generating method (pools_figure).
The models' data is found like the sweep's: the runs' --data_dir, else $TSYND_DATA_DIR.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging

from tsynd_tf import cli
from tsynd_tf.fileio import check_output
from tsynd_tf.report import page, records

flags.DEFINE_string("sweep_dir", None, "Sweep folder with "
                    f"{records.sweep_folder(Path('.')).results_file.name} and runs/ "
                    "(tsynd_tf.experiment).")
flags.DEFINE_string("output", "docs/RESULTS.md", "Markdown page to write.")
flags.DEFINE_string("figures_dir", None, "Folder for the PNG figures; default figures/ beside "
                    "--output.")
flags.DEFINE_string("title", "TSynD sweep results", "Title of the page.")
flags.DEFINE_bool("model_figures", True, "Also the figures that load one seed's classifiers, "
                  "pools and data: each config's pools, MI histograms, synthetic examples, "
                  "Grad-CAM.")
flags.DEFINE_integer("num_images", 8, "Images in the synthetic-example and Grad-CAM grids, "
                     "and per class in the pools figures.")
flags.mark_flag_as_required("sweep_dir")

FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    sweep_dir, output = Path(FLAGS.sweep_dir), Path(FLAGS.output)
    figures_dir = Path(FLAGS.figures_dir) if FLAGS.figures_dir else output.parent / "figures"
    if not sweep_dir.is_dir():
        raise cli.UsageError(f"--sweep_dir: {sweep_dir} is not a folder; pass the "
                             "--sweep_dir of a sweep (python -m tsynd_tf.experiment).")
    # Before the page is computed (minutes with --model_figures), not when it is written.
    check_output("--output", output, directory=False,
                 fix="name a .md file in a folder you can write")
    check_output("--figures_dir" if FLAGS.figures_dir else "--figures_dir (figures/ beside "
                 "--output)", figures_dir)
    check_output("--sweep_dir", records.sweep_folder(sweep_dir).tensorboard,
                 fix="the report also logs its figures to TensorBoard there; pass a sweep "
                     "folder you can write")
    logdir = page.write_page(sweep_dir, output, figures_dir, FLAGS.title, FLAGS.model_figures,
                             FLAGS.num_images)
    logging.info("Wrote %s and figures in %s; TensorBoard: %s.", output, figures_dir, logdir)


if __name__ == "__main__":
    cli.run(main)
