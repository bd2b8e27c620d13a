r"""Exports a finished training run as a SavedModel with an uncertainty signature.

  python -m tsynd_tf.export --run_dir=runs/RUN [--export_dir=saved_models] [--name=NAME]
                            [--version=N] [--num_samples=T] [--mi_threshold=X]
                            [--ood_threshold=Y]

RUN is a run directory written by tsynd_tf.train (`runs.load_run`: its classifier and
TrainConfig, whose --num_samples is the default T). Its data is loaded again (and must be
the data it was trained on: config.json's fingerprint): the OOD score is fitted on its
labelled training images (subset.json) and both thresholds are chosen on its validation
split unless given. Writes <export_dir>/<name>/<version>/ (TF Serving's layout, atomically);
see tsynd_tf/serving.py for the signatures and saved_models/README.md for how to call it.
Exit codes are `tsynd_tf.cli`'s: 2 when the run directory, its data or a flag is wrong, or
the version exists already.
"""

import math
from pathlib import Path

from absl import flags

from tsynd_tf import cli, serving
from tsynd_tf.fileio import check_output

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
flags.DEFINE_float("ood_threshold", None, "Referral threshold on the OOD score (>= 0; ~1 "
                   "or less in distribution, tsynd_tf/ood.py). Default: chosen on the run's "
                   "validation split (--ood_refer_fraction).")
flags.DEFINE_float("ood_refer_fraction", serving.DEFAULT_OOD_REFER_FRACTION, "Share of "
                   "validation images whose OOD score lies above the default threshold, in "
                   "(0, 1).")
flags.mark_flag_as_required("run_dir")
flags.register_validator("mi_threshold", lambda x: x is None or (math.isfinite(x) and x >= 0),
                         "--mi_threshold must be a finite number >= 0 (nats).")
flags.register_validator("refer_fraction", lambda x: 0 < x < 1,
                         "--refer_fraction must be in (0, 1).")
flags.register_validator("ood_threshold", lambda x: x is None or (math.isfinite(x) and x >= 0),
                         "--ood_threshold must be a finite number >= 0.")
flags.register_validator("ood_refer_fraction", lambda x: 0 < x < 1,
                         "--ood_refer_fraction must be in (0, 1).")
flags.register_validator("name", lambda name: name is None or (
    name not in ("", ".", "..") and "/" not in name and not name.isdigit()),
    "--name must be a folder name: not empty, without '/', not a number.")

FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    check_output("--export_dir", FLAGS.export_dir)
    run_path = Path(FLAGS.run_dir).expanduser().resolve()
    name = FLAGS.name or run_path.name
    check_output("--name", Path(FLAGS.export_dir).expanduser() / name,
                 fix="pass another --name or --export_dir")
    from tsynd_tf import runs

    run = runs.load_run(FLAGS.run_dir)  # RunDirError: cli reports it, exit 2
    num_samples = FLAGS.num_samples or run.config.num_samples
    try:
        dataset = run.load_dataset()
        path = serving.export_trained(
            run.classifier, dataset, run.labelled(dataset), num_samples, FLAGS.export_dir,
            name=name, version=FLAGS.version,
            mi_threshold=FLAGS.mi_threshold, refer_fraction=FLAGS.refer_fraction,
            ood_threshold=FLAGS.ood_threshold, ood_refer_fraction=FLAGS.ood_refer_fraction,
            batch_size=run.config.eval_batch_size, extra_metadata={"run_dir": str(run_path)})
    except ValueError as err:  # ExportError, DataError, RunDirError, or a value serving rejects
        raise cli.UsageError(str(err)) from err
    metadata = serving.read_metadata(path)
    print(f"Exported {run.info.name} ({run.info.num_classes} classes, T={num_samples}, "
          f"MI threshold {metadata['mi_threshold']:.4g} nats, OOD threshold "
          f"{metadata['ood_threshold']:.4g}) to {path}")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
