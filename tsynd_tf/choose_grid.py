r"""Chooses a config's robustness grid from one of its runs and writes it as a flagfile.

  python -m tsynd_tf.choose_grid --run_dir=runs/<a baseline run of the config> \
      --output=flags/robustness/<config>.cfg

The rule is tsynd_tf.robustness's; the flagfile records it, the measured curves and this
command. `tsynd_tf.experiment` passes flags/robustness/<config>.cfg to every cell's
evaluation of that config when it exists.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from absl import flags

from tsynd_tf import cli, robustness

flags.DEFINE_string("run_dir", None, "A finished training run of the config (the baseline, "
                    "seed 0, by convention).")
flags.DEFINE_string("output", None, "Evaluation flagfile to write (flags/robustness/"
                    "<config>.cfg).")
# The bounds are evaluate's: the grid is measured as the sweep's evaluation will run.
flags.DEFINE_integer("num_samples", 10, "MC-dropout passes T (>= 2: with one pass the "
                     "mutual information is always 0).", lower_bound=2)
flags.DEFINE_integer("pgd_steps", 10, "PGD steps, as in the sweep's evaluation.",
                     lower_bound=1)
flags.mark_flags_as_required(["run_dir", "output"])
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tsynd_tf.fileio import atomic_path, check_output

    # Before minutes of measuring: a grid that cannot be written would be lost.
    check_output("--output", FLAGS.output, directory=False,
                 fix="name a .cfg file in a folder you can write")
    from tsynd_tf import runs

    run = runs.load_run(FLAGS.run_dir)
    split = run.load_dataset().val
    settings = {"num_samples": FLAGS.num_samples, "pgd_steps": FLAGS.pgd_steps}
    clean = robustness.evaluate(run, split, **settings)["val/balanced_acc"]
    floor = 0.5 if run.info.multilabel else 1.0 / run.info.num_classes
    band = (floor + robustness.MARGIN, clean - robustness.MARGIN)
    lines = [f"# Robustness grid chosen by tsynd_tf.choose_grid on "
             f"{datetime.date.today().isoformat()} (tsynd_tf/robustness.py states the rule):",
             f"# {' '.join(['python -m tsynd_tf.choose_grid', *sys.argv[1:]])}",
             f"# Balanced accuracy on the validation split of {run.directory}: clean "
             f"{clean:.3f}, constant-prediction floor {floor:.3f}; kept: strengths with "
             f"balanced accuracy in ({band[0]:.3f}, {band[1]:.3f})."]
    for family, (flag, _) in robustness.LADDERS.items():
        chosen, curve = robustness.grid_for(run, split, family, clean, floor, **settings)
        lines.append(f"# {family}: " + ", ".join(f"{s:g}: {a:.3f}" for s, a in curve.items()))
        if len(chosen) < robustness.MIN_POINTS:
            lines.append(f"# {family}: only {len(chosen)} informative strengths found")
        values = ([0.0] if family == "gaussian" else []) + chosen
        lines.append(f"--{flag}=" + ",".join(f"{s:g}" for s in values))
    with atomic_path(Path(FLAGS.output)) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
