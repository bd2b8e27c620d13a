r"""Which synthetic data helps on your images? The project's comparison, on your image folder.

  python -m tsynd_tf.compare --data_dir=MY_FOLDER --output=compare/ [--train_fraction=0.1] \
      [--methods=baseline,augment,diffusion,gan] [--num_seeds=5] [--external_pool=PATTERN]

MY_FOLDER holds train/<class>/*.png|jpg, test/<class>/... and optionally val/<class>/ (else
validation is carved from train keeping patients whole: --group_pattern,
tsynd_tf.data.image_folder). compare composes the project's commands:
1. OUTPUT/config/<folder>_<fraction>.cfg (e.g. chest_xray_10pct.cfg), the training flagfile
   of every cell: --dataset=folder, the folder's absolute path, --train_fraction, --size,
   --channels, the experiment flagfiles' --rendering=residual, then --train_args; its
   header names the compare command that wrote it;
2. `python -m tsynd_tf.experiment`: every method x seed trained and evaluated in
   OUTPUT/sweep (runs/, logs/, results.jsonl; generators trained once per labelled subset);
3. `python -m tsynd_tf.report`: OUTPUT/REPORT.md and OUTPUT/figures, the page the project's
   sweeps get.
Both are subprocesses of this Python: their flags are named like compare's (--methods,
--num_seeds, ...), so one process cannot import them.

Resume: the same command again. The sweep skips finished cells and resumes the others from
their checkpoints; the page is rewritten. More --num_seeds or --methods add cells to the same
page, another --train_fraction a second config. A config whose settings changed (--size,
--train_args, another folder of the same name) is refused (exit 2) once the sweep has cells
of it. --external_pool (your generator's images; it adds `external` to the default --methods)
reaches the cells as experiment's --train_args, not through the config (a pool is known by
its content, not its path), so adding it later adds external cells to the comparison there.

Faster: on a GPU machine the same command trains on the GPU (and diffusion's generator is the
large recipe, --generator_size=auto). On a Ray cluster (BUILD.md: the checkout, the data and
OUTPUT on a file system every node mounts) run the sweep on the written config, then this
command again, which finds every cell finished and writes the page:
  python -m tsynd_tf.experiment --configs=OUTPUT/config/NAME.cfg --methods=... \
      --num_seeds=N --sweep_dir=OUTPUT/sweep --launcher=ray --ray_address=auto --cell_gpus=1

Exit codes are tsynd_tf.cli's: 2 for a bad flag or folder, before any training; 1 when some
cells failed (the page shows the finished ones; run again to retry them).
"""

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from absl import flags, logging

from tsynd_tf import cli, launchers
from tsynd_tf import config as train_config
from tsynd_tf.errors import DataError
from tsynd_tf.fileio import atomic_path, check_output, read_json_lines
from tsynd_tf.runs import SweepDir

# The methods of the project's comparison (flags/sweep_comparison.cfg).
DEFAULT_METHODS = ["baseline", "augment", "latent_noise", "tsynd_mi", "diffusion", "gan",
                   "tsynd_diffusion"]
flags.DEFINE_string("data_dir", None, "Your image folder: train/<class>/*.png|jpg, "
                    "test/<class>/..., optionally val/<class>/.")
flags.DEFINE_string("output", None, "Folder for config/, sweep/, REPORT.md and figures/; "
                    "the same command again resumes there.")
flags.DEFINE_float("train_fraction", 0.1, "Labelled share of train/ that each classifier "
                   "learns from, in (0, 1].")
flags.DEFINE_list("methods", DEFAULT_METHODS, "Methods compared (tsynd_tf.synthesis); "
                  "with --external_pool the default adds external.")
flags.DEFINE_integer("num_seeds", 5, "Seeds per method: each a labelled subset, "
                     "initialisation and generator of its own.")
flags.DEFINE_integer("size", 64, "Image size the folder's images are resized to.")
flags.DEFINE_integer("channels", 1, "1 (grayscale) or 3 (RGB).")
flags.DEFINE_string("external_pool", "", "Your own generator's images for method external: "
                    "an .npz (images, labels) or a folder of <class>/*.png; {seed} becomes "
                    "the seed.")
flags.DEFINE_string("train_args", "", "Extra training flags, space-separated, written into "
                    "the config, e.g. --train_args='--generator_steps=500 --rounds=3'.")
flags.DEFINE_string("eval_args", None, "tsynd_tf.evaluate's flags for every cell "
                    "(default: tsynd_tf.experiment's).")
flags.DEFINE_integer("workers", 1, "Cells at once on this machine (tsynd_tf.experiment).")
flags.DEFINE_bool("model_figures", True, "The report's figures that load one seed's models "
                  "(pools, MI histograms, Grad-CAM): minutes on a CPU.")
flags.mark_flags_as_required(["data_dir", "output"])

FLAGS = flags.FLAGS
# Training flags compare sets itself (the per-cell ones are train_config.SET_PER_CELL).
OWN_FLAGS = ("dataset", "data_dir", "train_fraction", "size", "channels", "external_pool")


def chosen_methods() -> list[str]:
    methods = list(FLAGS.methods)
    if FLAGS.external_pool and not FLAGS["methods"].present:
        methods.append("external")
    unknown = [m for m in methods if m not in train_config.METHODS]
    if unknown or not methods:
        raise cli.UsageError(f"--methods: {f'unknown {unknown}' if unknown else 'empty'}; "
                             f"choose from {', '.join(train_config.METHODS)}.")
    if "external" in methods and not FLAGS.external_pool:
        raise cli.UsageError("--methods has external, which trains on your own generator's "
                             "images: pass them as --external_pool=<.npz or folder of "
                             "<class>/*.png; {seed} becomes the seed>.")
    return methods


def checked_folder(path: str) -> Path:
    """The image folder's absolute path, its layout checked (no image read yet)."""
    from tsynd_tf.data import image_folder  # PIL and scikit-learn; no TensorFlow

    root = Path(os.path.abspath(Path(path).expanduser()))
    if not root.is_dir():
        raise cli.UsageError(f"--data_dir: {root} is not a folder; pass the folder that holds "
                             "train/<class>/ and test/<class>/ image folders.")
    try:
        image_folder.check_layout(root)
    except DataError as e:
        raise cli.UsageError(f"--data_dir: {e}") from None
    return root


def parse_training(words: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    train_config.define_flags(values)
    try:
        rest = values(["compare", *words])
    except flags.Error as e:
        raise cli.UsageError(f"--train_args: {e}") from None
    if rest[1:]:
        raise cli.UsageError(f"--train_args: {rest[1:]} are not flags; pass training flags, "
                             "e.g. --train_args='--rounds=3 --generator_steps=500'.")
    return values


def training_flags(data_dir: Path) -> tuple[list[str], train_config.TrainConfig]:
    """The config's lines and its TrainConfig, checked as train checks its flags (a
    ConfigError names the flag). --train_args are written normalised, one per line, in
    the config's order, so that the same settings make the same config."""
    try:
        words = shlex.split(FLAGS.train_args)
    except ValueError as e:
        raise cli.UsageError(f"--train_args is not a space-separated list of flags ({e}).")
    extra = parse_training(words)
    present = [f.name for f in dataclasses.fields(train_config.TrainConfig)
               if extra[f.name].present]
    taken = [f"--{name}" for name in present if name in OWN_FLAGS + train_config.SET_PER_CELL]
    if taken:
        raise cli.UsageError(f"--train_args sets {', '.join(taken)}, which compare sets: "
                             "pass --data_dir, --train_fraction, --size, --channels and "
                             "--external_pool as compare's flags, and choose the cells' "
                             "methods and seeds with --methods and --num_seeds.")
    lines = ["--dataset=folder", f"--data_dir={data_dir}",
             f"--train_fraction={FLAGS.train_fraction}", f"--size={FLAGS.size}",
             f"--channels={FLAGS.channels}"]
    if "rendering" not in present:  # as the project's experiment flagfiles (docs/TUNING.md)
        lines.append("--rendering=residual")
    lines += [extra[name].serialize() for name in present]
    return lines, train_config.from_flags(parse_training(lines))


def config_name(data_dir: Path, config: train_config.TrainConfig) -> str:
    """<folder>_<amount>: the config's file name, which names its cells and page rows."""
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", data_dir.name).strip("._") or "images"
    if config.train_count:
        return f"{folder}_n{config.train_count}"
    fraction = config.train_fraction
    return f"{folder}_{'full' if fraction == 1 else f'{fraction * 100:g}pct'}"


def flag_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def has_cells(sweep: SweepDir, name: str) -> bool:
    """Whether the sweep has results or run directories of config `name`'s cells."""
    if any(r.get("config") == name for r in read_json_lines(sweep.results_file)):
        return True
    cell = re.compile(rf"{re.escape(name)}_({'|'.join(train_config.METHODS)})_s\d+")
    runs = sweep.path / "runs"
    return runs.is_dir() and any(cell.fullmatch(d.name) for d in runs.iterdir())


def write_config(path: Path, lines: list[str], sweep: SweepDir) -> None:
    """Writes the config, or keeps the one there when it has the same flags (a resume).
    Other flags while the sweep has cells of it would mix two settings' results."""
    if path.exists() and flag_lines(path.read_text()) == lines:
        return
    if path.exists() and has_cells(sweep, path.stem):
        old = flag_lines(path.read_text())
        was, now = [x for x in old if x not in lines], [x for x in lines if x not in old]
        raise cli.UsageError(f"--output: {path} was written for other training settings "
                             f"(it has {was} where this command has {now}) and {sweep.path} "
                             "has cells of them: pass another --output, or the flags in its "
                             "header to resume.")
    command = shlex.join(["python", "-m", "tsynd_tf.compare", *sys.argv[1:]])
    header = [f"# Written by: {command}", "# The training flags of every cell of its sweep; "
              "each cell adds --method and --seed."]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(header + lines) + "\n")


def run_step(command: list[str]) -> int:
    """Runs a step in a subprocess that dies with this one; its exit code."""
    logging.info("$ %s", shlex.join(["python", *command[1:]]))
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}  # TensorFlow's C++ logs, unless set
    return subprocess.run(command, env=env, preexec_fn=launchers.die_with_parent()).returncode


def sweep_command(config: Path, methods: list[str], sweep: SweepDir) -> list[str]:
    command = [sys.executable, "-m", "tsynd_tf.experiment", f"--configs={config}",
               f"--methods={','.join(methods)}", f"--num_seeds={FLAGS.num_seeds}",
               f"--sweep_dir={sweep.path}", f"--workers={FLAGS.workers}"]
    if FLAGS.external_pool:  # the other methods ignore it
        pool = os.path.abspath(Path(FLAGS.external_pool).expanduser())
        command.append(f"--train_args={shlex.join([f'--external_pool={pool}'])}")
    if FLAGS.eval_args is not None:
        command.append(f"--eval_args={FLAGS.eval_args}")
    return command


def main(argv):
    del argv  # cli.run rejects positional arguments
    methods = chosen_methods()
    if FLAGS.num_seeds < 1 or FLAGS.workers < 1:
        raise cli.UsageError("--num_seeds and --workers must be >= 1.")
    data_dir = checked_folder(FLAGS.data_dir)
    output = Path(os.path.abspath(Path(FLAGS.output).expanduser()))
    check_output("--output", output)
    lines, config = training_flags(data_dir)
    sweep = SweepDir(output / "sweep")
    path = output / "config" / f"{config_name(data_dir, config)}.cfg"
    write_config(path, lines, sweep)
    swept = run_step(sweep_command(path, methods, sweep))
    if swept == cli.EXIT_USAGE:
        cli.fail("the sweep refused these settings (its error above); nothing was trained.")
    if swept not in (cli.EXIT_OK, cli.EXIT_PARTIAL):
        cli.fail(f"the sweep ended with exit code {swept}; run the same command to resume.",
                 cli.EXIT_PARTIAL)
    page = output / "REPORT.md"
    report = [sys.executable, "-m", "tsynd_tf.report", f"--sweep_dir={sweep.path}",
              f"--output={page}", f"--figures_dir={output / 'figures'}",
              f"--title=Which synthetic data helps on {data_dir.name}?",
              *([] if FLAGS.model_figures else ["--nomodel_figures"])]
    if run_step(report) != cli.EXIT_OK:
        cli.fail(f"the report failed (its error above); the results are in {sweep.path}: "
                 "run the same command again to write the page.", cli.EXIT_PARTIAL)
    if swept == cli.EXIT_PARTIAL:
        cli.fail(f"some cells failed (see the sweep's log above); {page} shows the finished "
                 "ones; run the same command again to retry the others.", cli.EXIT_PARTIAL)
    logging.info("Wrote %s (figures in %s).", page, output / "figures")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
