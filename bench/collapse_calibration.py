r"""Where does a collapsed class start, in the reference's features (issue 26.5)?

  python -m bench.collapse_calibration --flagfile=flags/breastmnist_10pct.cfg
  python -m bench.collapse_calibration --flagfile=flags/pneumoniamnist_10pct.cfg

The flags' run with --method=gan (run_parts.assemble: its labelled subset; the generator
trained through the model cache, --cache_dir, or loaded from it) samples --per_class images
of every class; real images of each split, `augment`'s policy on --per_class labelled images
of each class, and deliberately collapsed pools (k distinct labelled images of a class,
repeated to --per_class, for each of --repeats) are measured the same way: per class,
reference.PoolQuality.nearest_diversity (what reference.collapsed_classes compares with
COLLAPSE_THRESHOLD) and GAN_VERSION 1's pixel-space ratio. A class grid of the GAN's
samples goes to --grid_dir. One JSON line per pool is printed and appended to --output.
Nothing is asserted.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
from absl import flags

from bench import pool_bench
from tsynd_tf import cli, config

config.define_flags()
flags.DEFINE_integer("per_class", 128, "Images per class of every pool measured.")
flags.DEFINE_list("repeats", ["1", "2", "5", "10"], "k of the k-distinct-images pools.")
flags.DEFINE_string("output", "bench/results/collapse_calibration.jsonl", "Rows (JSONL).")
flags.DEFINE_string("grid_dir", "bench/results/collapse_calibration", "GAN grids (PNG).")
FLAGS = flags.FLAGS
SAMPLE_SEED = 12345


def repeated(split, k: int, per_class: int, num_classes: int, seed: int,
             replace: bool = False):
    """Per class, k distinct images of `split` drawn at random (k draws with replacement
    if `replace`), each repeated to fill per_class images: a pool collapsed onto k modes."""
    rng = np.random.default_rng(seed)
    labels = split.targets.argmax(1)
    images, targets = [], []
    for c in range(num_classes):
        chosen = rng.choice(np.flatnonzero(labels == c), k, replace=replace)
        images.append(split.images[np.resize(chosen, per_class)])
        targets.append(np.eye(num_classes)[np.full(per_class, c)])
    return np.concatenate(images), np.concatenate(targets)


def augmented(images: np.ndarray, seed: int) -> np.ndarray:
    """`augment`'s policy on uint8 images: what its pools hold (synthesis/augment.py)."""
    import keras

    from tsynd_tf.data.pipeline import to_uint8
    from tsynd_tf.synthesis.augment import augmentation_policy

    policy = augmentation_policy(images.shape[1], seed)
    out = keras.ops.convert_to_numpy(policy(images.astype(np.float32) / 255.0, training=True))
    return to_uint8(np.clip(out, 0.0, 1.0))


def pixel_diversity(labelled, images: np.ndarray, targets: np.ndarray, names) -> dict:
    """GAN_VERSION 1's guard: per class, mean pairwise pixel distance over that of (up to
    128 of) the class's labelled images (quality.diversity on pixels)."""
    from tsynd_tf import quality

    found = {}
    for k, name in enumerate(names):
        real = labelled.images[labelled.targets.argmax(1) == k][:128].astype(np.float32)
        fake = images[targets.argmax(1) == k].astype(np.float32)
        if len(real) >= 2 and len(fake) >= 2:
            found[f"pixel_diversity/{name}"] = quality.diversity(
                real.reshape(len(real), -1), np.ones((len(real), 1)),
                fake.reshape(len(fake), -1), np.ones((len(fake), 1)))
    return found


def pools(parts, method) -> dict:
    """name -> (uint8 images, one-hot targets)."""
    from tsynd_tf.data.pipeline import to_uint8

    num_classes = parts.dataset.info.num_classes
    labels = np.repeat(np.arange(num_classes), FLAGS.per_class)
    gan = to_uint8(method.model.sample(labels, SAMPLE_SEED,
                                       batch_size=parts.eval_batch_size))
    found = {"gan": (gan, np.eye(num_classes)[labels])}
    for name, split in (("labelled", parts.real), ("val", parts.dataset.val),
                        ("test", parts.dataset.test)):
        found[f"real {name}"] = (split.images, split.targets)
    images, targets = repeated(parts.real, FLAGS.per_class, FLAGS.per_class, num_classes,
                               SAMPLE_SEED, replace=True)
    found["labelled images augmented"] = (augmented(images, SAMPLE_SEED), targets)
    for k in map(int, FLAGS.repeats):
        found[f"{k} labelled images repeated"] = repeated(parts.real, k, FLAGS.per_class,
                                                          num_classes, SAMPLE_SEED)
    return found


def main(argv):
    del argv
    settings = dataclasses.replace(config.from_flags(FLAGS), method="gan", verbose=0)
    from tsynd_tf import data, reference, run_parts
    from tsynd_tf.fileio import append_json_line
    from tsynd_tf.runs import RunDir

    output = Path(FLAGS.output)
    pool_bench.append_invocation(output)
    dataset = data.load_configured(settings)
    meter = reference.PoolQuality(dataset, settings.cache_dir)
    names = dataset.info.class_names
    with tempfile.TemporaryDirectory(prefix="tsynd-collapse-") as root:
        settings = dataclasses.replace(settings, output_dir=root)
        with run_parts.assemble(settings, RunDir(Path(root))) as parts:
            method = parts.method
            method.fit(parts.real, parts.dataset.train)
            for name, (images, targets) in pools(parts, method).items():
                if name == "gan":
                    pool_bench.save_class_grid(images, targets, names, FLAGS.grid_dir,
                                               f"{settings.dataset}_gan", per_class=16)
                features, _ = meter.features(images)
                row = {"dataset": settings.dataset, "pool": name,
                       "train_seconds": method.generator_record["seconds"],
                       "per_class": {n: int(c) for n, c in
                                     zip(names, targets.sum(0).astype(int))},
                       **meter.nearest_diversity(features, targets),
                       **pixel_diversity(parts.real, images, targets, names)}
                append_json_line(output, row)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
