r"""How much uncertainty guidance keeps a pool's labels (issue 26.6)? A scan, sampling only.

  python -m bench.guidance_scan --flagfile=flags/pneumoniamnist_10pct.cfg
  python -m bench.guidance_scan --flagfile=flags/breastmnist_10pct.cfg --scales=0,0.01,0.1 \
      --generator_steps=3 --initial_epochs=1 --num_images=32 --ddim_steps=3 \
      --output=/tmp/scan.jsonl                                         # smoke

What `--method=tsynd_diffusion` has at round 0, built from the flags' config
(run_parts.assemble): its labelled subset, its diffusion generator (from the model cache, or
trained into it once), and its classifier after the initial stage (Trainer.train_classifier,
--initial_epochs on the labelled images). Then, from the same labels and noise, one pool of
--num_images per --scales value (the unguided pool is scale 0, always measured first) is
sampled with UncertaintyGuide at that scale and measured twice:
- by the run's own classifier: the pool's mean mutual information and predictive entropy
  (generators.pool_uncertainty, dropout masks seeded as a round's are): what guidance buys;
- by the validated yardstick (reference.PoolQuality, docs/QUALITY.md): label fidelity,
  precision, recall, FID, memorisation: what it costs.
The rule of the default (`chosen` in the table, docs/PERFORMANCE.md): the largest scale whose
pool has a higher MI than the unguided one, label fidelity >= 0.9x the unguided pool's, and
memorisation (pixels) no higher than the unguided pool's plus 0.01 (the binomial standard
error of a 5% share over 500 images). The reference classifier only measures here: nothing
the product trains or samples reads it. One JSON line per (config, generator, scale) is
appended to --output (lines already there are skipped), the Markdown table beside it (.md)
is rewritten from every line, and a class grid per scale goes to --grid_dir.
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

config.define_flags()  # the training settings, as `train` has them
flags.DEFINE_list("scales", ["0", "0.003", "0.01", "0.03", "0.1"],
                  "--uncertainty_guidance values scanned (>= 0; 0 is always measured).")
flags.DEFINE_integer("num_images", 500, "Images per pool.")
flags.DEFINE_string("output", "bench/results/guidance_scan.jsonl", "Result lines (JSONL).")
flags.DEFINE_string("grid_dir", "bench/results/guidance_scan", "Class grids (PNG).")
FLAGS = flags.FLAGS
SAMPLE_SEED = 12345  # the pools' labels and noise: the same at every scale
FIDELITY_KEPT, MEMORISATION_SLACK = 0.9, 0.01  # the default's rule (module docstring)


def check_flags() -> list[float]:
    """The scales, 0 first; UsageError naming the flag before any work."""
    try:
        scales = sorted({float(s) for s in FLAGS.scales} | {0.0})
    except ValueError:
        scales = [-1.0]
    if min(scales) < 0:
        raise cli.UsageError(f"--scales takes numbers >= 0; got {FLAGS.scales}.")
    pool_bench.check_outputs(FLAGS.num_images, FLAGS.output, FLAGS.grid_dir)
    return scales


def round_zero(settings: config.TrainConfig, run_dir: Path):
    """A tsynd_diffusion run's parts with its generator fitted and its classifier trained
    through the initial stage: what round 0's pool is sampled with."""
    from tsynd_tf import run_parts, training
    from tsynd_tf.runs import RunDir

    settings = dataclasses.replace(settings, method="tsynd_diffusion", output_dir=str(run_dir),
                                   verbose=0, pool_quality=False, export_dir="")
    parts = run_parts.assemble(settings, RunDir(run_dir))
    parts.method.fit(parts.real, parts.dataset.train)
    trainer = training.Trainer(parts)
    trainer.train_classifier(0, trainer.stage_start(0), synthetic=None)
    return parts


def measure(parts, meter, scale: float) -> dict:
    from tsynd_tf import data, uncertainty
    from tsynd_tf.data.pipeline import to_uint8
    from tsynd_tf.evaluation import seeded_dropout
    from tsynd_tf.synthesis import generators
    from tsynd_tf.synthesis.diffusion_model import UncertaintyGuide

    method, classifier, settings = parts.method, parts.classifier, parts.config
    labels, targets = generators.pool_labels(method.labelled, FLAGS.num_images, SAMPLE_SEED)
    guide = UncertaintyGuide(classifier, method.objective, scale, settings.guidance_every,
                             settings.num_samples, parts.dataset.info.multilabel)
    batch_size = uncertainty.images_per_call(parts.eval_batch_size, parts.real.images.shape[1:],
                                             settings.num_samples)
    start = time.time()
    with seeded_dropout(classifier, settings.stream_seed(0)):
        images = to_uint8(np.clip(method.model.sample(
            labels, settings.ddim_steps, settings.guidance_scale, SAMPLE_SEED,
            batch_size=batch_size, guide=guide), 0, 1))
        seconds = time.time() - start
        own = generators.pool_uncertainty(method.context, classifier, images, targets)
    pool_bench.save_class_grid(images, targets, parts.dataset.info.class_names, FLAGS.grid_dir,
                               f"{settings.dataset}_{settings.train_fraction:g}_{scale:g}")
    return {"scale": scale, "settings": method.generator_record["settings"],
            "train_fraction": settings.train_fraction, "ddim_steps": settings.ddim_steps,
            "guidance_scale": settings.guidance_scale, "num_images": len(images),
            "sample_seconds": round(seconds, 1),
            "mi": float(own["mutual_information"].mean()),
            "entropy": float(own["predictive_entropy"].mean()),
            **meter.measure(data.Split(images, targets))}


def row_key(row: dict) -> tuple:
    s = row["settings"]
    return (s["dataset"], s["labelled"], json.dumps(s, sort_keys=True), row["ddim_steps"],
            row["guidance_scale"], row["scale"])


def chosen(rows: list[dict]) -> float | None:
    """The default's rule (module docstring) over one generator's rows; None without 0."""
    unguided = next((r for r in rows if r["scale"] == 0), None)
    if unguided is None:
        return None
    kept = [r["scale"] for r in rows if r["scale"] == 0 or (
        r["mi"] > unguided["mi"]
        and r["label_fidelity"] >= FIDELITY_KEPT * unguided["label_fidelity"]
        and r["memorisation_pixels"] <= unguided["memorisation_pixels"] + MEMORISATION_SLACK)]
    return max(kept)


def table(rows: list[dict]) -> str:
    lines = ["| dataset | labelled | scale | MI (own classifier) | entropy | label fidelity | "
             "precision | recall | FID | memorised px | memorised feat | sample s | chosen |",
             "|---" * 13 + "|"]
    groups = {}
    for r in rows:
        groups.setdefault(row_key(r)[:-1], []).append(r)
    for group in groups.values():
        best = chosen(group)
        for r in sorted(group, key=lambda r: r["scale"]):
            lines.append(
                f"| {r['settings']['dataset']} | {r['train_fraction']:g} | {r['scale']:g} | "
                f"{r['mi']:.4f} | {r['entropy']:.4f} | {r['label_fidelity']:.3f} | "
                f"{r['precision']:.3f} | {r['recall']:.3f} | {r['fid']:.3g} | "
                f"{r['memorisation_pixels']:.3f} | {r['memorisation_features']:.3f} | "
                f"{r['sample_seconds']:.0f} | {'**yes**' if r['scale'] == best else ''} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    scales = check_flags()
    settings = config.from_flags(FLAGS)
    from tsynd_tf import data, reference
    from tsynd_tf.fileio import append_json_line, read_json_lines

    output = Path(FLAGS.output)
    done = {row_key(r) for r in read_json_lines(output) if "scale" in r}
    pool_bench.append_invocation(output)
    meter = reference.PoolQuality(data.load_configured(settings), settings.cache_dir)
    with tempfile.TemporaryDirectory(prefix="tsynd-bench-scan-") as root:
        with round_zero(settings, Path(root)) as parts:
            for scale in scales:
                probe = {"settings": parts.method.generator_record["settings"],
                         "ddim_steps": settings.ddim_steps,
                         "guidance_scale": settings.guidance_scale, "scale": scale}
                if row_key(probe) in done:
                    continue
                row = measure(parts, meter, scale)
                append_json_line(output, row)
                print(json.dumps(row), flush=True)
    pool_bench.write_table(output, table([r for r in read_json_lines(output) if "scale" in r]))
    return 0


if __name__ == "__main__":
    cli.run(main)
