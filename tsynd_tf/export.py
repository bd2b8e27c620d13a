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

from tsynd_tf import cli, serving

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
    del argv  # cli.run rejects positional arguments
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
