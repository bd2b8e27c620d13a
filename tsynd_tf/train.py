r"""Trains a classifier with TSynD or one of its baselines.

  python -m tsynd_tf.train                                # TSynD-MI, PneumoniaMNIST, 10%
  python -m tsynd_tf.train --flagfile=flags/pneumoniamnist_1pct.cfg --method=baseline --seed=3
  tensorboard --logdir runs/

Every flag is a field of config.TrainConfig (its default, help and valid range live there).
The run directory (--output_dir; runs.RunDir lists what it holds) is resumed when it exists,
by one process at a time (RunDir.lock); unless --export_dir is empty, a SavedModel is
written under <export_dir>/<run name>/<version> (1 for a new run name). Running a finished
run again trains and evaluates nothing and reuses its export (delete results.json to
evaluate it again; python -m tsynd_tf.export writes a new version).
"""

import dataclasses
import logging
import os
from pathlib import Path

from absl import flags

from tsynd_tf import cli, config
from tsynd_tf import cache
from tsynd_tf.fileio import check_output

log = logging.getLogger(__name__)

config.define_flags()
FLAGS = flags.FLAGS


def config_from_flags() -> config.TrainConfig:
    """The flags as a TrainConfig; --data_dir is recorded absolute (so evaluate and report
    work from any folder) and --output_dir defaults to runs/<run name>."""
    settings = config.from_flags(FLAGS)
    if settings.data_dir:
        settings = dataclasses.replace(
            settings, data_dir=os.path.abspath(os.path.expanduser(settings.data_dir)))
    if not settings.output_dir:
        settings = dataclasses.replace(settings,
                                       output_dir=os.path.join("runs", settings.run_name()))
    check_output("--output_dir", settings.output_dir)
    if settings.export_dir:
        check_output("--export_dir", settings.export_dir,
                     fix="pass a folder you can write (or '' to skip the export)")
    check_output(cache.root_source(settings.cache_dir), cache.root(settings.cache_dir))
    return settings


def export(parts, finished_before: bool, export_dir: str, name: str):
    """SavedModel of the best classifier, its OOD score fitted on the labelled images,
    MI and OOD thresholds chosen on validation (serving.export_trained). A run that had
    finished before reuses its export, if it has one (serving.find_export)."""
    from tsynd_tf import serving

    if finished_before:
        existing = serving.find_export(Path(export_dir) / name, parts.run_dir.path)
        if existing is not None:
            log.info("%s holds this run's export already; not exported again.", existing)
            return existing
    return serving.export_trained(
        parts.classifier, parts.dataset, parts.real, parts.config.num_samples, export_dir,
        name=name, batch_size=parts.eval_batch_size,
        extra_metadata={"run_dir": str(parts.run_dir.path.resolve())})


def main(argv):
    del argv  # cli.run rejects positional arguments
    settings = config_from_flags()
    from tsynd_tf import synthesis  # Deferred: TensorFlow loads after the flags are valid.

    synthesis.check_config(settings)
    from tsynd_tf import run_parts, training
    from tsynd_tf.runs import RunDir

    with run_parts.assemble(settings, RunDir(settings.output_dir), lock=True) as parts:
        trainer = training.Trainer(parts)
        results = trainer.run()
        # In multi-worker training only the chief exports (the others hold the same weights).
        export_path = (export(parts, trainer.finished_before, settings.export_dir,
                              settings.run_name())
                       if settings.export_dir and parts.is_chief else None)
    print(f"\n{settings.run_name()}: test ACC {results['test/acc']:.4f}, AUC "
          f"{results['test/auc']:.4f} (best val AUC {results['val/auc']:.4f}); "
          f"{results['num_synthetic']} synthetic images.\nRun directory: {parts.run_dir}\n"
          f"TensorBoard:   tensorboard --logdir {parts.run_dir.tensorboard}"
          + (f"\nSavedModel:    {export_path}" if export_path else ""))


if __name__ == "__main__":
    cli.run(main)
