r"""Exports a finished training run as a SavedModel with an uncertainty signature.

  python -m tsynd_tf.export --run_dir=runs/RUN [--export_dir=saved_models] [--name=NAME]
                            [--version=N] [--num_samples=T] [--mi_threshold=X]

RUN is a run directory written by tsynd_tf.train (`runs.load_run`: its classifier and
TrainConfig, whose --num_samples is the default T). Writes <export_dir>/<name>/<version>/
(TF Serving's layout, atomically); see tsynd_tf/serving.py for the signatures and
saved_models/README.md for how to call it. Exit codes are `tsynd_tf.cli`'s: 2 when the run
directory or a flag is wrong, or the version exists already.
"""

from absl import flags

import math

from tsynd_tf import cli, serving
from tsynd_tf.fileio import unwritable

flags.DEFINE_string("run_dir", None, "Training run folder holding config.json and "
                    "classifier.keras.")
flags.DEFINE_string("export_dir", "saved_models", "Base folder; the model is written to "
                    "<export_dir>/<name>/<version>/.")
flags.DEFINE_string("name", None, "Model name (folder under --export_dir). Default: the run "
                    "directory's name.")
flags.DEFINE_integer("version", None, "TF Serving version number (>= 1). Default: one more "
                     "than the highest version already in <export_dir>/<name>/.", lower_bound=1)
flags.DEFINE_integer("num_samples", None, "MC-dropout passes T per image served (>= 2: with "
                     "one pass the mutual information is always 0). Default: the run's "
                     "--num_samples.", lower_bound=2)
flags.DEFINE_float("mi_threshold", None, "Referral threshold on mutual information (nats, "
                   ">= 0). Default: chosen on the run's validation split (--refer_fraction).")
flags.DEFINE_float("refer_fraction", serving.DEFAULT_REFER_FRACTION, "Share of validation "
                   "images whose MI lies above the default threshold, in (0, 1).")
flags.mark_flag_as_required("run_dir")
flags.register_validator("mi_threshold", lambda x: x is None or (math.isfinite(x) and x >= 0),
                         "--mi_threshold must be a finite number >= 0 (nats).")
flags.register_validator("refer_fraction", lambda x: 0 < x < 1,
                         "--refer_fraction must be in (0, 1).")
flags.register_validator("name", lambda name: name is None or (
    name not in ("", ".", "..") and "/" not in name and not name.isdigit()),
    "--name must be a folder name: not empty, without '/', not a number.")

FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    why = unwritable(FLAGS.export_dir)
    if why:
        raise cli.UsageError(f"--export_dir: {why}; pass a folder you can write.")
    from tsynd_tf import runs

    run = runs.load_run(FLAGS.run_dir)  # RunDirError: cli reports it, exit 2
    num_samples = FLAGS.num_samples or run.config.num_samples
    run_path = run.directory.path.resolve()
    try:
        if FLAGS.mi_threshold is not None:
            threshold, rule = FLAGS.mi_threshold, {"rule": "given explicitly (--mi_threshold)"}
        else:
            val = run.load_dataset().val
            threshold, rule = serving.choose_mi_threshold(
                run.classifier, val.images, run.info, num_samples, val_targets=val.targets,
                refer_fraction=FLAGS.refer_fraction)
        path = serving.export_classifier(
            run.classifier, run.info, num_samples, threshold, FLAGS.export_dir,
            name=FLAGS.name or run_path.name, version=FLAGS.version, threshold_rule=rule,
            extra_metadata={"run_dir": str(run_path)})
    except ValueError as err:  # ExportError, DataError, or a value serving rejects
        raise cli.UsageError(str(err)) from err
    print(f"Exported {run.info.name} ({run.info.num_classes} classes, T={num_samples}, "
          f"MI threshold {threshold:.4g} nats) to {path}")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
