r"""Does the quality yardstick see what it should? Degradations of known strength, measured.

  python -m bench.quality_yardstick                       # both datasets, every reference
  python -m bench.quality_yardstick --datasets=breastmnist --degradations=blur,copies \
      --references=wide_cnn --strengths=mild,severe

Real held-out images (the test split, 28 px) are degraded in known ways at three strengths
each and measured with every metric of reference.PoolQuality (tsynd_tf.quality) against the
training split, in the features of each reference recipe (reference_recipes.RECIPES), whose cached
network is trained first if needed (its seconds and validation accuracy are recorded). A
metric is usable for a degradation when it gets worse at every step clean -> mild ->
moderate -> severe ("worse": FID, KID and memorisation up; precision, recall and label
fidelity down; diversity further from 1 in log ratio). The clean test split is measured
twice: the second row shows the metric's own run-to-run noise (small_cnn's features are MC
dropout samples). --pools adds rows for synthetic pools (e.g. issue 25's GPU-trained DDPM).
Writes --output (JSON) and a Markdown table beside it; docs/QUALITY.md pastes that table.
Nothing is asserted.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import numpy as np
from absl import flags

from bench.degradations import DEGRADATIONS, STRENGTHS, degrade
from bench.machine import cpu_model, git_revision, machine_label, write_result
from tsynd_tf import cli
from tsynd_tf.reference_recipes import RECIPES

# +1: higher is worse; -1: lower is worse; 0: further from 1 (in log ratio) is worse.
METRICS = {"fid": +1, "kid": +1, "precision": -1, "recall": -1, "label_fidelity": -1,
           "diversity": 0, "memorisation_pixels": +1, "memorisation_features": +1}
DATASETS = ("pneumoniamnist", "breastmnist")

flags.DEFINE_list("datasets", list(DATASETS), f"Of {DATASETS}, at 28 px.")
flags.DEFINE_list("degradations", list(DEGRADATIONS), f"Of {list(DEGRADATIONS)}.")
flags.DEFINE_list("strengths", list(STRENGTHS), f"Of {STRENGTHS}, measured in this order.")
flags.DEFINE_list("metrics", list(METRICS), f"Of {list(METRICS)}.")
flags.DEFINE_list("references", ["small_cnn", "wide_cnn", "wide_cnn_multi"],
                  "Reference recipes (tsynd_tf.reference_recipes) whose features are compared.")
flags.DEFINE_list("pools", [], "Synthetic pools measured beside the degradations (one "
                  "dataset only): .npz files holding `images` uint8 NxHxWx1 and `labels` N.")
flags.DEFINE_string("data_dir", None, "MedMNIST folder (default $TSYND_DATA_DIR).")
flags.DEFINE_string("cache_dir", None, "Model cache for the references (default: the user's).")
flags.DEFINE_integer("seed", 0, "Seed of the noise, the blend partners and the copies.")
flags.DEFINE_string("output", "bench/results/quality_yardstick_28_cpu.json", "Result JSON.")
FLAGS = flags.FLAGS


def check_flags(recipes) -> None:
    """Every name a flag lists must be known: exit 2 naming the flag, before any work."""
    known = {"datasets": DATASETS, "degradations": DEGRADATIONS, "strengths": STRENGTHS,
             "metrics": METRICS, "references": recipes}
    for flag, names in known.items():
        given = FLAGS[flag].value
        unknown = [n for n in given if n not in names]
        if unknown or not given:
            raise cli.UsageError(f"--{flag}: unknown {unknown or 'empty list'}; choose from "
                                 f"{', '.join(names)}.")
        if len(set(given)) != len(given):
            raise cli.UsageError(f"--{flag} repeats a name: {given}.")
    if [s for s in STRENGTHS if s in FLAGS.strengths] != FLAGS.strengths:
        raise cli.UsageError(f"--strengths must go from mild to severe; got {FLAGS.strengths}.")
    if FLAGS.pools and len(FLAGS.datasets) != 1:
        raise cli.UsageError("--pools are of one dataset: give --datasets a single name.")
    missing = [p for p in FLAGS.pools if not Path(p).is_file()]
    if missing:
        raise cli.UsageError(f"--pools: no such file {missing}.")


def badness(metric: str, value: float) -> float:
    direction = METRICS[metric]
    return abs(np.log(max(value, 1e-12))) if direction == 0 else direction * value


def passes(metric: str, values: list[float]) -> bool:
    """Worse at every step, clean first, then the strengths in order."""
    bad = [badness(metric, v) for v in values]
    return all(np.isfinite(bad)) and all(b > a for a, b in zip(bad, bad[1:]))


def measure_dataset(name: str, recipe: str) -> dict:
    """Every degradation at every strength, in one reference's features."""
    from tsynd_tf import data, reference

    dataset = data.load_medmnist(name, 28, FLAGS.data_dir, download=False)
    start = time.time()
    meter = reference.PoolQuality(dataset, FLAGS.cache_dir, recipe=recipe)
    record = {k: meter.record[k] for k in ("seconds", "loaded", "val_acc", "settings",
                                           "memorisation_thresholds")}
    record["setup_seconds"] = round(time.time() - start, 1)
    keep = lambda m: {k: m[k] for k in FLAGS.metrics}  # noqa: E731
    clean = keep(meter.measure(dataset.test))
    rows = {"clean": clean, "clean, measured again": keep(meter.measure(dataset.test))}
    for kind in FLAGS.degradations:
        rng = np.random.default_rng(FLAGS.seed)  # the same draws whatever else is measured
        for strength in FLAGS.strengths:
            value = DEGRADATIONS[kind][STRENGTHS.index(strength)]
            degraded = degrade(kind, value, dataset.test, dataset.train, rng)
            rows[f"{kind} {strength} ({value:g})"] = keep(meter.measure(degraded))
    for path in FLAGS.pools:
        with np.load(path) as pool:
            targets = np.eye(dataset.info.num_classes, dtype=np.float32)[pool["labels"]]
            rows[f"pool {Path(path).name}"] = keep(meter.measure(data.Split(
                pool["images"].reshape(-1, 28, 28, 1), targets)))
    verdicts = {kind: {m: passes(m, [clean[m]] + [
                    rows[f"{kind} {s} ({DEGRADATIONS[kind][STRENGTHS.index(s)]:g})"][m]
                    for s in FLAGS.strengths]) for m in FLAGS.metrics}
                for kind in FLAGS.degradations}
    return {"reference": record, "rows": rows, "passes": verdicts}


def format_tables(results: dict, machine: dict) -> str:
    lines = [f"**Quality yardstick: test split degraded, against the training split, 28 px; "
             f"{machine_label(machine)}**", ""]
    for name, by_recipe in results.items():
        lines += [f"#### {name}: usable (worse at every step) per metric and degradation", "",
                  "| reference | val acc | train s | metric | "
                  + " | ".join(FLAGS.degradations) + " | passes |",
                  "|---|---|---|---|" + "---|" * (len(FLAGS.degradations) + 1)]
        for recipe, r in by_recipe.items():
            for metric in FLAGS.metrics:
                marks = [r["passes"][kind][metric] for kind in FLAGS.degradations]
                lines.append(f"| {recipe} | {r['reference']['val_acc']:.3f} | "
                             f"{r['reference']['seconds']:.0f} | {metric} | "
                             + " | ".join("✓" if m else "✗" for m in marks)
                             + f" | {sum(marks)}/{len(marks)} |")
        lines.append("")
        for recipe, r in by_recipe.items():
            lines += [f"#### {name}, {recipe} features: the values", "",
                      "| images | " + " | ".join(FLAGS.metrics) + " |",
                      "|---|" + "---|" * len(FLAGS.metrics)]
            lines += [f"| {row} | " + " | ".join(f"{v[m]:.4g}" for m in FLAGS.metrics) + " |"
                      for row, v in r["rows"].items()]
            lines.append("")
    return "\n".join(lines)


def main(argv):
    del argv  # cli.run rejects positional arguments
    check_flags(RECIPES)
    import keras
    import tensorflow as tf

    machine = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "cpu": cpu_model(), "cpu_cores_usable": len(os.sched_getaffinity(0)),
               "avx2": " avx2 " in Path("/proc/cpuinfo").read_text(), "gpus": [],
               "tensorflow": tf.__version__, "keras": keras.__version__, "git": git_revision()}
    start = time.time()
    results = {name: {recipe: measure_dataset(name, recipe) for recipe in FLAGS.references}
               for name in FLAGS.datasets}
    machine["seconds"] = round(time.time() - start, 1)
    flags_used = {f: FLAGS[f].value for f in ("datasets", "degradations", "strengths",
                                               "metrics", "references", "pools", "seed")}
    write_result(Path(FLAGS.output), {"machine": machine, "flags": flags_used,
                                      "degradations": DEGRADATIONS, "results": results},
                 format_tables(results, machine))
    return 0


if __name__ == "__main__":
    cli.run(main)
