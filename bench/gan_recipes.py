r"""Which GAN recipe covers the data best, at a few CPU-minutes (issue 26.5)?

  python -m bench.gan_recipes --flagfile=flags/pneumoniamnist_10pct.cfg \
      --recipes=v1,mode_seeking,wide_mode_seeking
  python -m bench.gan_recipes --flagfile=flags/breastmnist_10pct.cfg --recipes=v1 \
      --generator_steps=5 --num_images=64 --output=/tmp/gan.jsonl --grid_dir=/tmp/gan  # smoke

For each of --recipes (CANDIDATES: a gan_model.Recipe, a learning rate and a number of
training steps; --generator_steps, when given, replaces every candidate's), the `gan` method
of the flags' config (run_parts.assemble: its labelled subset, batch size, precision) trains
that recipe's generator through the model cache (--cache_dir), so a candidate is trained
once however often this runs; its training seconds are the cache record's. Each generator
samples --num_images images with the labelled set's class mix, measured with the validated
yardstick (reference.PoolQuality, docs/QUALITY.md): FID, precision, recall, label fidelity
overall and per class, memorisation, and the per-class collapse check. A class grid of each
pool goes to --grid_dir. One JSON line per recipe is appended to --output (rows already
there are skipped: an interrupted search resumes); the Markdown table beside it (.md) is
rewritten from every line. Nothing is asserted.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from absl import flags

from bench import pool_bench
from tsynd_tf import cli, config

# name: (gan_model.Recipe fields changed, G's learning rate, steps).
CANDIDATES = {
    "v1": ({}, 2e-4, 1500),  # the recipe of GAN_VERSION 1
    "steps3000": ({}, 2e-4, 3000),
    "mode_seeking": ({"mode_seeking": 1.0}, 2e-4, 1500),
    "mode_seeking_0.3": ({"mode_seeking": 0.3}, 2e-4, 1500),
    "wide_mode_seeking": ({"g_width": 32, "mode_seeking": 1.0}, 2e-4, 1500),
    "lr5e-4_ema99": ({"ema_decay": 0.99}, 5e-4, 1500),
}

config.define_flags()  # the training settings, as `train` has them
flags.DEFINE_list("recipes", ["v1", "mode_seeking", "wide_mode_seeking"],
                  f"Of {list(CANDIDATES)}.")
flags.DEFINE_integer("num_images", 500, "Images per pool measured.")
flags.DEFINE_string("output", "bench/results/gan_recipes.jsonl", "Result lines (JSONL).")
flags.DEFINE_string("grid_dir", "bench/results/gan_recipes", "Class grids (PNG).")
FLAGS = flags.FLAGS
SAMPLE_SEED = 12345  # the pools' labels and noise: the same for every recipe


def done_rows(path: Path) -> list[dict]:
    from tsynd_tf.fileio import read_json_lines

    return [row for row in read_json_lines(path) if "recipe" in row]


def check_flags() -> None:
    pool_bench.check_recipes(FLAGS.recipes, CANDIDATES)
    pool_bench.check_outputs(FLAGS.num_images, FLAGS.output, FLAGS.grid_dir)


def candidate_settings(settings: config.TrainConfig, name: str, root: Path):
    changes, learning_rate, steps = CANDIDATES[name]
    steps = settings.generator_steps if FLAGS["generator_steps"].present else steps
    return changes, dataclasses.replace(settings, method="gan", verbose=0,
                                        generator_learning_rate=learning_rate,
                                        generator_steps=steps, output_dir=str(root / name))


def row_key(recorded: dict, recipe: str) -> tuple:
    """What makes a row: the generator's data, steps and precision, the recipe."""
    return (recorded["dataset"], recorded["labelled"], recorded["generator_steps"],
            recorded["precision"], recipe)


def measure(parts, method, meter, name: str) -> dict:
    from tsynd_tf.data.pipeline import to_uint8
    from tsynd_tf.synthesis import generators

    labels, targets = generators.pool_labels(method.labelled, FLAGS.num_images, SAMPLE_SEED)
    images = to_uint8(method.model.sample(labels, SAMPLE_SEED,
                                          batch_size=parts.eval_batch_size))
    pool_bench.save_class_grid(images, targets, parts.dataset.info.class_names,
                               FLAGS.grid_dir, f"{parts.config.dataset}_{name}")
    return {"recipe": name, **pool_bench.pool_row(method, meter, images, targets,
                                                  method.model.ema.count_params())}


def table(rows: list[dict]) -> str:
    from tsynd_tf.reference import by_class

    lines = ["| dataset | recipe | G params | steps x batch | lr | train s | FID | precision | "
             "recall | label fidelity | per class | nearest-neighbour diversity | "
             "memorised px | memorised feat |", "|---" * 14 + "|"]
    for r in rows:
        s = r["settings"]
        per_class = ", ".join(f"{k[:10]} {v:.2f}"
                              for k, v in r["label_fidelity_per_class"].items())
        nearest = ", ".join(f"{k[:10]} {v:.2f}"
                            for k, v in by_class(r, "nearest_diversity").items())
        lines.append(
            f"| {s['dataset']} | {r['recipe']} | {r['parameters'] / 1e6:.2f}M | "
            f"{s['generator_steps']} x {s['batch_size']} | {s['generator_learning_rate']:g} | "
            f"{r['train_seconds']:.0f} | {r['fid']:.3g} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['label_fidelity']:.3f} | {per_class} | {nearest} | "
            f"{r['memorisation_pixels']:.3f} | {r['memorisation_features']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    check_flags()
    settings = config.from_flags(FLAGS)
    output = Path(FLAGS.output)
    from tsynd_tf import data, reference, run_parts
    from tsynd_tf.fileio import append_json_line
    from tsynd_tf.runs import RunDir
    from tsynd_tf.synthesis.gan import GAN
    from tsynd_tf.synthesis.gan_model import Recipe

    done = {row_key(r["settings"], r["recipe"]) for r in done_rows(output)}
    pool_bench.append_invocation(output)
    meter = reference.PoolQuality(data.load_configured(settings), settings.cache_dir)
    with tempfile.TemporaryDirectory(prefix="tsynd-bench-gan-") as root:
        for name in FLAGS.recipes:
            changes, run_settings = candidate_settings(settings, name, Path(root))
            with run_parts.assemble(run_settings, RunDir(Path(root) / name)) as parts:
                method = GAN(parts.method.context, Recipe(**changes))
                method.fit(parts.real, parts.dataset.train)
                if row_key(method.generator_record["settings"], name) in done:
                    continue
                row = measure(parts, method, meter, name)
                append_json_line(output, row)
                print(json.dumps(row), flush=True)
    pool_bench.write_table(output, table(done_rows(output)))
    return 0


if __name__ == "__main__":
    cli.run(main)
