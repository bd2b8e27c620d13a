r"""Which diffusion recipe buys the most quality per CPU-second (issue 26)?

  python -m bench.diffusion_recipes --flagfile=flags/pneumoniamnist_10pct.cfg \
      --recipes=v1,v,v_attention --sampling=25:1,50:2
  python -m bench.diffusion_recipes --flagfile=flags/breastmnist_10pct.cfg --recipes=v1 \
      --generator_steps=5 --num_images=64 --sampling=5:1 --output=/tmp/recipes.jsonl \
      --grid_dir=/tmp/recipes                                         # smoke

For each of --recipes (CANDIDATES: a diffusion_model.Recipe, a learning rate and a number of
training steps; --generator_steps, when given, replaces every candidate's), the `diffusion`
method of the flags' config (run_parts.assemble: its
labelled subset, batch size, precision) trains that recipe's generator through the model
cache (--cache_dir), so a candidate is trained once however often this runs; its training
seconds are the cache record's (the first run's, with the machine's load average then).
Each generator then samples --num_images images with the labelled set's class mix at every
--sampling setting (DDIM steps:classifier-free guidance), and every pool is measured with the
validated yardstick (reference.PoolQuality, docs/QUALITY.md): FID, precision, recall, label
fidelity overall and per class, memorisation (pixels, features). A class grid of each pool
goes to --grid_dir. One JSON line per (recipe, sampling) is appended to --output, and rows
already there are skipped: an interrupted search resumes. The Markdown table beside it
(.md) is rewritten from every line. Nothing is asserted.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags

from bench import pool_bench
from tsynd_tf import cli, config

# name: (recipe fields changed from diffusion_model.Recipe(), steps).
FAST = {"learning_rate": 1e-3}
CANDIDATES = {
    "v1": ({}, 1500),  # the recipe of DIFFUSION_VERSION 1
    "v1_lr1e-3": (FAST, 1500),
    "v": ({"prediction": "v"}, 1500),
    "v_lr1e-3": ({"prediction": "v", **FAST}, 1500),
    "v_attention": ({"prediction": "v", "attention": True, **FAST}, 1500),  # SIZES["small"]
    "v_wide": ({"prediction": "v", "attention": True, "widths": (64, 128, 128), **FAST}, 1500),
    "v_wide_ema999": ({"prediction": "v", "attention": True, "widths": (64, 128, 128),
                       "ema_decay": 0.999, "ema_start": 200, **FAST}, 1500),
    "v_deep": ({"prediction": "v", "attention": True, "blocks": 2, **FAST}, 1500),
    "large_300": ({"widths": (64, 128, 256), "blocks": 2, "attention": True, "dropout": 0.1,
                   "ema_decay": 0.999, "ema_start": 200}, 300),
}

config.define_flags()  # the training settings, as `train` has them
flags.DEFINE_list("recipes", ["v1", "v_lr1e-3", "v_attention", "v_wide"],
                  f"Of {list(CANDIDATES)}.")
flags.DEFINE_list("sampling", ["25:1"], "DDIM steps:classifier-free guidance scale pairs.")
flags.DEFINE_integer("num_images", 500, "Images per pool measured.")
flags.DEFINE_string("output", "bench/results/diffusion_recipes.jsonl", "Result lines (JSONL).")
flags.DEFINE_string("grid_dir", "bench/results/diffusion_recipes", "Class grids (PNG).")
FLAGS = flags.FLAGS
SAMPLE_SEED = 12345  # the pools' labels and noise: the same for every recipe


def parse_sampling(values: list[str]) -> list[tuple[int, float]]:
    """'25:1' -> (25, 1.0); UsageError naming --sampling."""
    try:
        pairs = [(int(steps), float(scale))
                 for steps, scale in (value.split(":") for value in values)]
    except ValueError:
        pairs = []
    if not pairs or any(steps < 1 or scale < 0 for steps, scale in pairs):
        raise cli.UsageError(f"--sampling takes DDIM steps:guidance pairs such as 25:1 "
                             f"(steps >= 1, guidance >= 0); got {values}.")
    return pairs


def check_flags() -> list[tuple[int, float]]:
    pool_bench.check_recipes(FLAGS.recipes, CANDIDATES)
    pool_bench.check_outputs(FLAGS.num_images, FLAGS.output, FLAGS.grid_dir)
    return parse_sampling(FLAGS.sampling)


def done_rows(path: Path) -> list[dict]:
    from tsynd_tf.fileio import read_json_lines

    return [row for row in read_json_lines(path) if "recipe" in row]


def row_key(recorded: dict, recipe: str, steps: int, scale: float) -> tuple:
    """What makes a row: the generator's data and precision, the recipe, the sampling."""
    return (recorded["dataset"], recorded["labelled"], recorded["precision"], recipe,
            steps, scale)


def train_candidate(settings: config.TrainConfig, name: str, root: Path):
    """The candidate's Diffusion method, its generator fetched from (or trained into) the
    cache; and the cache record."""
    from tsynd_tf import run_parts
    from tsynd_tf.runs import RunDir
    from tsynd_tf.synthesis.diffusion import Diffusion
    from tsynd_tf.synthesis.diffusion_model import Recipe

    changes, steps = CANDIDATES[name]
    steps = settings.generator_steps if FLAGS["generator_steps"].present else steps
    run_settings = dataclasses.replace(settings, method="diffusion", verbose=0,
                                       generator_steps=steps, output_dir=str(root / name))
    parts = run_parts.assemble(run_settings, RunDir(root / name))
    method = Diffusion(parts.method.context, Recipe(**changes))
    method.fit(parts.real, parts.dataset.train)
    return parts, method


def measure(parts, method, meter, name: str, sampling: tuple[int, float]) -> dict:
    from tsynd_tf.data.pipeline import to_uint8
    from tsynd_tf.synthesis import generators

    steps, scale = sampling
    labels, targets = generators.pool_labels(method.labelled, FLAGS.num_images, SAMPLE_SEED)
    start = time.time()
    images = to_uint8(np.clip(method.model.sample(labels, steps, scale, SAMPLE_SEED,
                                                  batch_size=parts.eval_batch_size), 0, 1))
    sample_seconds = time.time() - start
    pool_bench.save_class_grid(images, targets, parts.dataset.info.class_names,
                               FLAGS.grid_dir, f"{parts.config.dataset}_{name}_{steps}_{scale:g}")
    return {"recipe": name, "ddim_steps": steps, "guidance_scale": scale,
            "sample_seconds": round(sample_seconds, 1),
            **pool_bench.pool_row(method, meter, images, targets,
                                  method.model.network.count_params())}


def table(rows: list[dict]) -> str:
    lines = ["| dataset | recipe | version | precision policy | params | steps x batch | lr | "
             "train s | DDIM | CFG | FID | precision | recall | label fidelity | per class | "
             "memorised px | memorised feat | sample s |", "|---" * 18 + "|"]
    for r in rows:
        s = r["settings"]
        # Version 2 rows recorded the learning rate beside the recipe, version 3 in it.
        learning_rate = s["recipe"].get("learning_rate", s.get("generator_learning_rate"))
        per_class = ", ".join(f"{k[:10]} {v:.2f}" for k, v in r["label_fidelity_per_class"].items())
        lines.append(
            f"| {s['dataset']} | {r['recipe']} | {s['version']} | {s['precision']} | "
            f"{r['parameters'] / 1e6:.2f}M | "
            f"{s['generator_steps']} x {s['batch_size']} | {learning_rate:g} | "
            f"{r['train_seconds']:.0f} | {r['ddim_steps']} | {r['guidance_scale']:g} | "
            f"{r['fid']:.3g} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['label_fidelity']:.3f} | {per_class} | {r['memorisation_pixels']:.3f} | "
            f"{r['memorisation_features']:.3f} | {r['sample_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    sampling = check_flags()
    settings = config.from_flags(FLAGS)
    output = Path(FLAGS.output)
    from tsynd_tf import data, reference
    from tsynd_tf.fileio import append_json_line

    done = {row_key(r["settings"], r["recipe"], r["ddim_steps"], r["guidance_scale"])
            for r in done_rows(output)}
    pool_bench.append_invocation(output)
    meter = reference.PoolQuality(data.load_configured(settings), settings.cache_dir)
    with tempfile.TemporaryDirectory(prefix="tsynd-bench-recipes-") as root:
        for name in FLAGS.recipes:
            parts, method = train_candidate(settings, name, Path(root))
            with parts:
                recorded = method.generator_record["settings"]
                for steps, scale in sampling:
                    if row_key(recorded, name, steps, scale) in done:
                        continue
                    row = measure(parts, method, meter, name, (steps, scale))
                    append_json_line(output, row)
                    print(json.dumps(row), flush=True)
    pool_bench.write_table(output, table(done_rows(output)))
    return 0


if __name__ == "__main__":
    cli.run(main)
