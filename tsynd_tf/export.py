r"""Exports a finished training run as a SavedModel with an uncertainty signature.

  python -m tsynd_tf.export --run_dir=runs/RUN [--export_dir=saved_models] [--name=NAME]
                            [--version=N] [--num_samples=T] [--mi_threshold=X]

writes <export_dir>/<name>/<version>/ (TF Serving's layout); see tsynd_tf/serving.py for the
signatures and saved_models/README.md for how to call it.
"""

import sys
from pathlib import Path

from absl import app, flags

from tsynd_tf import serving

flags.DEFINE_string("run_dir", None, "Training run folder holding config.json and "
                    "classifier.keras.")
flags.DEFINE_string("export_dir", "saved_models", "Base folder; the model is written to "
                    "<export_dir>/<name>/<version>/.")
flags.DEFINE_string("name", None, "Model name (folder under --export_dir). Default: the run "
                    "directory's name.")
flags.DEFINE_integer("version", None, "TF Serving version number (>= 1). Default: one more "
                     "than the highest version already in <export_dir>/<name>/.")
flags.DEFINE_integer("num_samples", None, "MC-dropout passes T per image served. Default: the "
                     "run's --num_samples.")
flags.DEFINE_float("mi_threshold", None, "Referral threshold on mutual information (nats). "
                   "Default: chosen on the run's validation split (--refer_fraction).")
flags.DEFINE_float("refer_fraction", serving.DEFAULT_REFER_FRACTION, "Share of validation "
                   "images whose MI lies above the default threshold.")
flags.mark_flag_as_required("run_dir")

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from tsynd_tf import runs
    from tsynd_tf.data import DataError

    try:
        run = runs.load_run(FLAGS.run_dir)
        num_samples = FLAGS.num_samples or run.flags["num_samples"]
        if FLAGS.mi_threshold is not None:
            threshold, rule = FLAGS.mi_threshold, {"rule": "given explicitly (--mi_threshold)"}
        else:
            val = run.load_dataset().val
            threshold, rule = serving.choose_mi_threshold(
                run.classifier, val.images, run.info, num_samples, val_targets=val.targets,
                refer_fraction=FLAGS.refer_fraction)
        path = serving.export_classifier(
            run.classifier, run.info, num_samples, threshold, FLAGS.export_dir,
            name=FLAGS.name or run.directory.resolve().name, version=FLAGS.version,
            threshold_rule=rule, extra_metadata={"run_dir": str(run.directory.resolve())})
    except (serving.ExportError, runs.RunDirError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Exported {run.info.name} ({run.info.num_classes} classes, T={num_samples}, "
          f"MI threshold {threshold:.4g} nats) to {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
