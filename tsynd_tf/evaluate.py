r"""Evaluates a training run's classifier: clean metrics, Gaussian noise, FGSM/PGD attacks
and (with --corruptions) MedMNIST-C-style corruptions (tsynd_tf.evaluation).

  python -m tsynd_tf.evaluate --run_dir=RUN [--split=test] [--corruptions]

RUN is a run directory written by tsynd_tf.train, loaded by `runs.load_run`: its classifier,
and its TrainConfig, from which the dataset is re-loaded and --num_samples/--batch_size take
their defaults. Results go to the run's eval_<split>.json (`RunDir.write_eval`, atomic) as
{"settings": {...}, "metrics": {"test/acc": ..., "pgd_0.008/acc": ..., ...}} (an undefined
metric is null), and a short table is printed. Exit codes are `tsynd_tf.cli`'s: 2 for a bad
flag or run directory.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from absl import flags

from tsynd_tf import cli
from tsynd_tf.fileio import check_output


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """evaluate's flags, in `values`: the command's, or those a sweep checks its --eval_args
    with before any cell runs (experiment.check_eval_args)."""
    define = dict(flag_values=values)
    flags.DEFINE_string("run_dir", None, "Training run directory (config.json, "
                        "classifier.keras).", **define)
    flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to evaluate.",
                      **define)
    flags.DEFINE_integer("num_samples", None, "MC-dropout passes T (>= 2: with one pass "
                         "the mutual information is always 0); default: the run's.",
                         lower_bound=2, **define)
    flags.DEFINE_integer("batch_size", None, "Images per batch (x T passes); default: the "
                         "run's --eval_batch_size.", lower_bound=1, **define)
    flags.DEFINE_list("gaussian_sigmas", ["0", "0.05", "0.1", "0.2"], "Std of additive "
                      "Gaussian noise on [0, 1] images; empty for none.", **define)
    flags.DEFINE_list("fgsm_epsilons", ["0.002", "0.004", "0.008", "0.016"],
                      "L-inf budgets of FGSM on [0, 1] images; empty for none.", **define)
    flags.DEFINE_list("pgd_epsilons", ["0.002", "0.004", "0.008", "0.016"],
                      "L-inf budgets of PGD on [0, 1] images; empty for none.", **define)
    flags.DEFINE_integer("pgd_steps", 10, "PGD steps (step size 2.5 * eps / steps, random "
                         "start).", lower_bound=1, **define)
    flags.DEFINE_bool("corruptions", False, "Also evaluate the MedMNIST-C-style corruptions "
                      "(5 severities each; minutes on a CPU).", **define)
    flags.DEFINE_integer("max_examples", 0, "Evaluate a seeded stratified subset of this "
                         "many images, at least one per class (0: the whole split). For quick "
                         "checks only: it replaces the run's eval_<split>.json like any "
                         "evaluation.", lower_bound=0, **define)
    flags.DEFINE_integer("seed", 0, "Seed of the dropout masks, noise, PGD starts and "
                         "corruptions.", lower_bound=0, **define)
    flags.mark_flag_as_required("run_dir", **define)
    # Checked at parse time: a wrong path fails before TensorFlow spends seconds importing.
    flags.register_validator(
        "run_dir", lambda path: path is None or Path(path).expanduser().is_dir(),
        "--run_dir must be an existing training run directory.", **define)


def strengths(values: flags.FlagValues) -> tuple[list[float], ...]:
    """(--gaussian_sigmas, --fgsm_epsilons, --pgd_epsilons) as numbers; UsageError naming
    the flag when one is not a list of numbers in [0, 1)."""
    return tuple(_floats(values, name)
                 for name in ("gaussian_sigmas", "fgsm_epsilons", "pgd_epsilons"))


def _floats(values: flags.FlagValues, flag_name: str) -> list[float]:
    try:
        numbers = [float(v) for v in values[flag_name].value]
    except ValueError:
        raise cli.UsageError(f"--{flag_name} must be a comma-separated list of numbers; got "
                             f"{','.join(values[flag_name].value)!r}.") from None
    if any(not 0 <= v < 1 for v in numbers):
        raise cli.UsageError(f"--{flag_name} values are on [0, 1] images: 0 <= v < 1; got "
                             f"{numbers}.")
    return numbers


FLAGS = flags.FLAGS

TABLE_METRICS = {"acc": "acc", "auc": "auc", "balanced_acc": "bal_acc", "nll": "nll",
                 "ece": "ece", "mutual_information": "MI"}  # metric -> column header


def format_table(metrics: dict) -> str:
    """One row per condition ('test', 'gaussian_0.1', 'corruption/pixelate_3', ...)."""
    conditions = dict.fromkeys(key.rsplit("/", 1)[0] for key in metrics
                               if key.endswith("/acc"))
    width = max(len(c) for c in conditions) + 2
    lines = [f"{'condition':<{width}}" + "".join(f"{h:>9}" for h in TABLE_METRICS.values())]
    for condition in conditions:
        values = (metrics.get(f"{condition}/{m}") for m in TABLE_METRICS)
        lines.append(f"{condition:<{width}}" + "".join(
            f"{v:>9.4f}" if v is not None else f"{'-':>9}" for v in values))
    lines += [f"{key}: {value:.4f}" for key, value in metrics.items()
              if key.startswith("corruption/mean_")]
    return "\n".join(lines)


def main(argv):
    del argv  # cli.run rejects positional arguments
    sigmas, fgsm_eps, pgd_eps = strengths(FLAGS)
    # Deferred: TensorFlow takes seconds to import; flag errors should not wait for it.
    from tsynd_tf import evaluation, runs
    from tsynd_tf.data import subsample_indices

    check_output("--run_dir", FLAGS.run_dir,
                 fix=f"evaluate writes eval_{FLAGS.split}.json there")
    run = runs.load_run(FLAGS.run_dir)  # RunDirError/DataError: cli reports them, exit 2
    classes = 1 if run.info.multilabel else run.info.num_classes
    if 0 < FLAGS.max_examples < classes:
        raise cli.UsageError(f"--max_examples must be 0 (the whole split) or at least the "
                             f"number of classes, {classes}: the subset keeps every class; "
                             f"got {FLAGS.max_examples}.")
    dataset = run.load_dataset()
    num_samples = FLAGS.num_samples or run.config.num_samples
    batch_size = FLAGS.batch_size or run.config.eval_batch_size
    split = getattr(dataset, FLAGS.split)
    if FLAGS.max_examples:
        split = split.subset(subsample_indices(
            split.targets, count=min(FLAGS.max_examples, len(split)), seed=FLAGS.seed,
            multilabel=dataset.info.multilabel))

    start = time.time()
    metrics = evaluation.evaluate_classifier(
        run.classifier, split.images, split.targets, dataset.info, num_samples=num_samples,
        batch_size=batch_size, gaussian_sigmas=sigmas, fgsm_epsilons=fgsm_eps,
        pgd_epsilons=pgd_eps, pgd_steps=FLAGS.pgd_steps, corruptions=FLAGS.corruptions,
        seed=FLAGS.seed, split_name=FLAGS.split)
    settings = {
        "split": FLAGS.split, "num_examples": len(split), "num_samples": num_samples,
        "batch_size": batch_size, "gaussian_sigmas": sigmas, "fgsm_epsilons": fgsm_eps,
        "pgd_epsilons": pgd_eps, "pgd_steps": FLAGS.pgd_steps,
        "pgd_step_size": "2.5 * epsilon / pgd_steps", "pgd_random_start": True,
        "corruptions": (list(evaluation.corruptions_for(dataset.info.name))
                        if FLAGS.corruptions else []),
        "seed": FLAGS.seed, "seconds": round(time.time() - start, 1),
    }
    # JSON has no NaN: an undefined metric (AUC with one class present) is written as null.
    json_metrics = {k: None if math.isnan(v) else v for k, v in metrics.items()}
    replaced = replaced_settings(run.directory.read_eval(FLAGS.split), settings)
    path = run.directory.write_eval(FLAGS.split, {"settings": settings,
                                                  "metrics": json_metrics})
    print(format_table(metrics))
    print(f"\nWrote {path}" + (f", replacing an evaluation with other settings "
                                f"({replaced})." if replaced else "."))
    return cli.EXIT_OK


def replaced_settings(previous: dict | None, settings: dict) -> str:
    """'num_examples 624 -> 64, ...': the settings in which a previous evaluation differs."""
    old = (previous or {}).get("settings") or {}
    return ", ".join(f"{key} {old[key]} -> {value}" for key, value in settings.items()
                     if key in old and key != "seconds" and old[key] != value)


if __name__ == "__main__":
    define_flags()  # here: importing the module (a sweep's check) defines no flags
    cli.run(main)
