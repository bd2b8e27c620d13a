r"""Runs a sweep: training configs x methods x seeds, one training + evaluation per cell.

  python -m tsynd_tf.experiment --flagfile=flags/sweep_medmnist.cfg
  python -m tsynd_tf.report --sweep_dir=sweeps/medmnist        # tables, figures, RESULTS.md

The sweep folder is a `runs.SweepDir`: runs/<cell>/ (one run directory per cell),
logs/<cell>.log and results.jsonl. Each cell is `python -m tsynd_tf.train --flagfile=CONFIG
--method=M --seed=S` followed by `python -m tsynd_tf.evaluate` (clean, Gaussian noise, FGSM,
PGD) in subprocesses, so a cell that crashes does not take the sweep down and cells can run
side by side: on this machine (--launcher=local, --workers at a time) or as Ray tasks on a
cluster (--launcher=ray with --cell_cpus, --cell_gpus and --ray_address; tsynd_tf.launchers,
BUILD.md). Finished cells are appended, by this process alone, as one JSON line each to
results.jsonl (its training settings and results, read through `runs.RunDir`) and skipped
when the sweep is started again; an unfinished cell resumes from its run's checkpoint. Each
line records the sweep's command and the cell's UTC start and finish, from which the report
gives the sweep's wall time. Each start that has cells to run first appends a plan line
(every cell of its grid, finished or not), so the report can name the cells a stopped sweep
left.

Robustness grids: where a config CONFIG.cfg has a grid flagfile robustness/CONFIG.cfg beside
it (written by `tsynd_tf.grid`), its strengths replace --eval_args' for that config's cells.
--rerun_before=TIME runs the cells whose latest line finished before TIME again (a run
directory still there resumes, a finished one is only re-evaluated; else it is retrained);
the new line supersedes the old one in the report, and a restart skips what it re-ran.

Every cell's training flags (its flagfile, method and --train_args) are checked as train
would check them before the sweep starts, and its evaluation flags (--eval_args, the grid) as
evaluate would; --train_args and --eval_args may not set what the sweep sets per cell
(SET_BY_THE_SWEEP), and two configs may not share a file name (it names their cells). Each cell's processes die with the sweep (Linux:
the kernel kills them when the sweep process ends, even by kill -9), so no training outlives
it (under Ray: with its worker, and a job's workers end with the sweep); a run directory is
trained by one process at a time (runs.RunDir.lock).

Exit codes are `tsynd_tf.cli`'s: 1 when some cell failed (start the sweep again to retry
it), 2 for a bad flag.
"""

import dataclasses
import datetime
import itertools
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from absl import flags, logging

from tsynd_tf import cli, launchers, machine
from tsynd_tf import config as train_config
from tsynd_tf.fileio import append_json_line, check_output, read_json_lines
from tsynd_tf.runs import SweepDir

flags.DEFINE_list("configs", None, "Training flagfiles, one per dataset x train fraction "
                  "(e.g. flags/pneumoniamnist_1pct.cfg).")
flags.DEFINE_list("methods", ["baseline", "latent_noise", "tsynd_mi", "tsynd_entropy"],
                  "Methods compared in every config.")
flags.DEFINE_integer("num_seeds", 5, "Seeds 0..num_seeds-1 per config and method.")
flags.DEFINE_string("sweep_dir", None, "Sweep folder: runs/<cell>/ and results.jsonl.")
flags.DEFINE_string("train_args", "", "Extra training flags for every cell, space-separated, "
                    "e.g. --train_args='--rounds=3 --ae_epochs=20'.")
flags.DEFINE_string("eval_args", "--gaussian_sigmas=0,0.05,0.1,0.2 --fgsm_epsilons=0.004,0.016 "
                    "--pgd_epsilons=0.004,0.016", "Flags of tsynd_tf.evaluate for every cell, "
                    "space-separated.")
flags.DEFINE_enum("launcher", "local", launchers.LAUNCHERS, "Where cells run: local (--workers "
                  "at a time on this machine) or ray (one Ray task per cell; BUILD.md).")
flags.DEFINE_integer("workers", 1, "--launcher=local: cells run at once; each gets cores / "
                     "workers threads.")
flags.DEFINE_integer("cell_cpus", 1, "--launcher=ray: CPUs each cell declares; also its "
                     "threads.")
flags.DEFINE_float("cell_gpus", 0.0, "--launcher=ray: GPUs each cell declares (1: one cell "
                   "per GPU).")
flags.DEFINE_string("ray_address", "", "--launcher=ray: the cluster's address (e.g. auto, on "
                    "a node that ran `ray start`); empty: a Ray instance on 127.0.0.1 that "
                    "lives as long as the sweep.")
flags.DEFINE_string("rerun_before", None, "UTC ISO time (e.g. 2026-12-01T20:30:00+00:00): "
                    "cells whose latest line finished before it run again.")
flags.mark_flags_as_required(["configs", "sweep_dir"])

FLAGS = flags.FLAGS
# What the sweep sets in each cell's commands (run_cell): --train_args or --eval_args that
# set one would train or evaluate another cell than the one its results line names.
SET_BY_THE_SWEEP = {"train_args": train_config.SET_PER_CELL,
                    "eval_args": ("run_dir", "seed")}


def cell_name(config: str, method: str, seed: int) -> str:
    return f"{Path(config).stem}_{method}_s{seed}"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sweep_command() -> str:
    return shlex.join(["python", "-m", "tsynd_tf.experiment", *sys.argv[1:]])


def grid_flagfile(config: str) -> Path | None:
    """robustness/<config>.cfg beside the config's flagfile, if a grid was chosen for it."""
    path = Path(config).parent / "robustness" / Path(config).name
    return path if path.is_file() else None


def finished_cells(results_path: Path,
                   rerun_before: datetime.datetime | None = None) -> set[str]:
    """Cells with a line in the results, less those whose latest line finished before
    `rerun_before` (lines without a finish time count as before it)."""
    latest = {r["cell"]: r for r in read_json_lines(results_path) if "cell" in r}
    if rerun_before is None:
        return set(latest)
    return {cell for cell, r in latest.items() if r.get("finished") and
            datetime.datetime.fromisoformat(r["finished"]) >= rerun_before}


def parse_rerun_before(text: str | None) -> datetime.datetime | None:
    if text is None:
        return None
    try:
        cutoff = datetime.datetime.fromisoformat(text)
    except ValueError:
        cutoff = None
    if cutoff is None or cutoff.tzinfo is None:
        raise cli.UsageError(f"--rerun_before={text!r} must be an ISO time with its UTC "
                             "offset, e.g. 2026-12-01T20:30:00+00:00.")
    return cutoff


def split_args(flag_name: str) -> list[str]:
    try:
        return shlex.split(FLAGS[flag_name].value)
    except ValueError as e:
        raise cli.UsageError(f"--{flag_name}={FLAGS[flag_name].value!r} is not a "
                             f"space-separated list of flags ({e}).") from None


def check_grid(configs: list[str], methods: list[str]) -> None:
    """Every cell must have its own name: two flagfiles of one file name (a/tiny.cfg,
    b/tiny.cfg) would share cells, and one config would never run."""
    stems = {}
    for path in configs:
        stems.setdefault(Path(path).stem, []).append(path)
    clashes = [paths for paths in stems.values() if len(paths) > 1]
    if clashes:
        raise cli.UsageError(f"--configs: {' and '.join(clashes[0])} share the file name "
                             f"{Path(clashes[0][0]).stem!r}, which names their cells; "
                             "rename one (or list a config once).")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise cli.UsageError(f"--methods lists {', '.join(repeated)} more than once.")


def parse_args(flag_name: str, args: list[str], define, **defaults) -> flags.FlagValues:
    """`args` (the words of --train_args or --eval_args) parsed with the flags that `define`
    defines, `defaults` set first. UsageError naming --flag_name when they do not parse, or
    set a flag of SET_BY_THE_SWEEP."""
    values = flags.FlagValues()
    define(values)
    for name, value in defaults.items():
        values.set_default(name, value)
    try:
        values(["command", *args])
    except flags.Error as e:
        raise cli.UsageError(f"--{flag_name} would fail every cell: {e}") from None
    taken = [f"--{name}" for name in SET_BY_THE_SWEEP[flag_name] if values[name].present]
    if taken:
        raise cli.UsageError(f"--{flag_name} sets {', '.join(taken)}, which the sweep sets "
                             "for each cell (its method, seed and folders); use --methods, "
                             "--num_seeds and --sweep_dir instead.")
    return values


def check_eval_args(configs: list[str], eval_args: list[str]) -> None:
    """Parses each config's evaluation flags (--eval_args, then its grid flagfile) as
    evaluate does, so that a bad one fails now, not after every cell has trained."""
    from tsynd_tf import evaluate  # flag definitions only: no TensorFlow

    for path in configs:
        grid = grid_flagfile(path)
        args = [*eval_args, *([f"--flagfile={grid}"] if grid else [])]
        # --run_dir: each cell passes its own; any folder passes the validator meanwhile.
        values = parse_args("eval_args", args, evaluate.define_flags, run_dir=".")
        try:
            evaluate.strengths(values)
        except cli.UsageError as e:
            raise cli.UsageError(f"--eval_args{f' (with {grid})' if grid else ''} would fail "
                                 f"every cell's evaluation: {e}") from None


def check_cells(configs: list[str], methods: list[str], train_args: list[str],
                num_seeds: int) -> None:
    """Parses every config x method x seed's training flags as train does, into a
    TrainConfig, and checks what it asks of its method: a bad flagfile, method or
    --train_args fails here, not in every cell (seeds too: an --external_pool path may
    hold {seed})."""
    from tsynd_tf import synthesis  # imports TensorFlow: after the sweep's own flags

    parse_args("train_args", train_args, train_config.define_flags)
    for path, method, seed in itertools.product(configs, methods, range(num_seeds)):
        values = flags.FlagValues()
        train_config.define_flags(values)
        try:
            values(["train", f"--flagfile={path}", f"--method={method}", f"--seed={seed}",
                    *train_args])
            synthesis.check_config(train_config.from_flags(values))
        except (flags.Error, train_config.ConfigError) as e:
            raise cli.UsageError(f"the cells of {path} with --method={method}, seed {seed} "
                                 f"(and --train_args) would fail: {e}") from None


@dataclasses.dataclass(frozen=True)
class CellSettings:
    """What every cell of a sweep runs with. Passed with each cell, not read from the flags:
    under --launcher=ray a cell runs in a Ray worker, a process without parsed flags."""
    sweep_dir: str
    train_args: tuple[str, ...]
    eval_args: tuple[str, ...]
    threads: int  # intra-op threads of each of the cell's processes
    cwd: str  # the sweep process's working directory: relative paths resolve from it
    sweep_command: str  # recorded in every result line


def hold_log(log, name: str) -> None:
    """An exclusive flock on the cell's open log for as long as it runs. Two sweep processes
    on one sweep folder would otherwise both run the cell (the second's train is refused by
    the run's lock) into one log, their lines interleaved; the second is told instead."""
    import fcntl

    try:
        fcntl.flock(log, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"{name}: another sweep process is running this cell (it holds "
                           f"{log.name}); not run twice.") from None


def run_cell(cell: tuple[str, str, int], settings: CellSettings) -> dict:
    """Trains and evaluates one (config, method, seed) cell; its result line. RuntimeError
    when a step fails."""
    config, method, seed = cell
    name, sweep = cell_name(*cell), SweepDir(settings.sweep_dir)
    run_dir = sweep.run(name)
    threads = str(settings.threads)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS=threads,
               OMP_NUM_THREADS=threads)
    log_path = sweep.log_file(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    steps = {
        "train": [sys.executable, "-m", "tsynd_tf.train", f"--flagfile={config}",
                  f"--method={method}", f"--seed={seed}", f"--output_dir={run_dir}",
                  f"--cache_dir={sweep.cache}", "--export_dir=", "--verbose=2",
                  *settings.train_args],
        "evaluate": [sys.executable, "-m", "tsynd_tf.evaluate", f"--run_dir={run_dir}",
                     f"--seed={seed}", *settings.eval_args],
    }
    if grid_flagfile(config):  # last: its strengths win over --eval_args'
        steps["evaluate"].append(f"--flagfile={grid_flagfile(config)}")
    # A run directory that an earlier attempt began resumes: this cell's clock (seconds,
    # started) counts only this attempt, so the report's cost table leaves it out.
    resumed = run_dir.path.is_dir() and any(run_dir.path.iterdir())
    seconds, started = {}, utc_now()
    # The flock is on an open file description of its own, which the steps do not share:
    # a step's stdout (another open) would hold it too, so a step dying with its killed
    # worker would keep it a moment longer, and a retry started in that moment was refused.
    with open(log_path, "a") as held, open(log_path, "a") as log:
        hold_log(held, name)
        for step, command in steps.items():
            start = time.time()
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
            done = subprocess.run(command, env=env, cwd=settings.cwd, stdout=log,
                                  stderr=subprocess.STDOUT,
                                  preexec_fn=launchers.die_with_parent())
            if done.returncode != 0:
                raise RuntimeError(f"{name}: {step} failed (exit {done.returncode}); see "
                                   f"{log_path}")
            seconds[step] = round(time.time() - start, 1)
    training, evaluation = run_dir.read_results(), run_dir.read_eval("test")
    flag_values = run_dir.read_flags()
    if training is None or evaluation is None or flag_values is None:
        raise RuntimeError(f"{name}: {run_dir} lacks its training settings, results or test "
                           f"evaluation although both steps succeeded; see {log_path}")
    return {"cell": name, "config": Path(config).stem, "dataset": flag_values["dataset"],
            "train_fraction": flag_values["train_fraction"],
            "train_count": flag_values["train_count"], "method": method, "seed": seed,
            "run_dir": str(run_dir), "seconds": seconds, "training": training,
            "metrics": evaluation["metrics"], "started": started, "finished": utc_now(),
            "resumed": resumed,
            "sweep_command": settings.sweep_command,
            # The run directory stays on the machine that ran the cell; the line is the
            # record that travels (committed), so it carries the settings the page names.
            "flags": flag_values, "evaluation": evaluation.get("settings", {}),
            "quality": run_dir.read_quality(),
            # Results are bitwise equal only within one machine type; the page counts them.
            "machine": machine.describe()}


def make_launcher() -> launchers.LocalLauncher | launchers.RayLauncher:
    """The --launcher with its flags checked (each launcher's flags only with it); with ray,
    Ray imported (a UsageError naming the install command when it is not installed)."""
    ray_flags = [f"--{name}" for name in ("cell_cpus", "cell_gpus", "ray_address")
                 if FLAGS[name].present]
    if FLAGS.launcher == "local":
        if ray_flags:
            raise cli.UsageError(f"{', '.join(ray_flags)}: only for --launcher=ray.")
        return launchers.LocalLauncher(FLAGS.workers)
    if FLAGS["workers"].present:
        raise cli.UsageError("--workers is --launcher=local's: under --launcher=ray, Ray runs "
                             "as many cells at once as the cluster's --cell_cpus and "
                             "--cell_gpus allow.")
    if FLAGS.cell_cpus < 1 or FLAGS.cell_gpus < 0:
        raise cli.UsageError("--cell_cpus must be >= 1 and --cell_gpus >= 0.")
    return launchers.RayLauncher(FLAGS.ray_address, FLAGS.cell_cpus, FLAGS.cell_gpus)


def run_cells(launcher: launchers.LocalLauncher | launchers.RayLauncher,
              cells: dict[str, tuple], settings: CellSettings) -> int:
    """Runs the cells; appends each finished one's line (only this process writes the
    file) and returns how many failed."""
    failures = 0
    for name, outcome in launcher.results(run_cell, cells, settings):
        if isinstance(outcome, RuntimeError):
            failures += 1
            logging.error("%s", outcome)
            continue
        append_json_line(SweepDir(settings.sweep_dir).results_file, outcome)
        logging.info("%s: test acc %.4f auc %.4f (%s)", name, outcome["metrics"]["test/acc"],
                     outcome["metrics"]["test/auc"], outcome["seconds"])
    return failures


def main(argv):
    del argv  # cli.run rejects positional arguments
    missing = [c for c in FLAGS.configs if not Path(c).is_file()]
    if missing:
        raise cli.UsageError(f"--configs: no such flagfile {missing}.")
    if FLAGS.workers < 1 or FLAGS.num_seeds < 1:
        raise cli.UsageError("--workers and --num_seeds must be >= 1.")
    rerun_before = parse_rerun_before(FLAGS.rerun_before)
    check_output("--sweep_dir", FLAGS.sweep_dir)
    launcher = make_launcher()
    eval_args, train_args = split_args("eval_args"), split_args("train_args")
    check_grid(FLAGS.configs, FLAGS.methods)
    check_eval_args(FLAGS.configs, eval_args)
    check_cells(FLAGS.configs, FLAGS.methods, train_args, FLAGS.num_seeds)
    sweep = SweepDir(FLAGS.sweep_dir)
    sweep.path.mkdir(parents=True, exist_ok=True)
    done = finished_cells(sweep.results_file, rerun_before)
    # Seed-major order: an interrupted sweep has every config x method for the first seeds.
    grid = [(config, method, seed) for seed in range(FLAGS.num_seeds)
            for config in FLAGS.configs for method in FLAGS.methods]
    cells = {cell_name(*cell): cell for cell in grid if cell_name(*cell) not in done}
    logging.info("%d cells finished, %d to run, %s.", len(done), len(cells),
                 launcher.describe())
    if not cells:
        return cli.EXIT_OK
    command = sweep_command()
    with launcher:  # connects to Ray: a cluster without the cells' resources fails here
        append_json_line(sweep.results_file, {
            "plan": [[Path(config).stem, method, seed] for config, method, seed in grid],
            "sweep_command": command, "written": utc_now()})
        failures = run_cells(launcher, cells, CellSettings(
            sweep_dir=FLAGS.sweep_dir, train_args=tuple(train_args),
            eval_args=tuple(eval_args), threads=launcher.threads, cwd=os.getcwd(),
            sweep_command=command))
    if failures:
        cli.fail(f"{failures} cell(s) failed; fix and start the sweep again to retry them.",
                 cli.EXIT_PARTIAL)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
