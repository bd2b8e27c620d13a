r"""Throughput, overhead and memory of the TSynD training path, on real data, on this device.

  python -m bench.run                               # PneumoniaMNIST 28 px, batch 64, T=10
  python -m bench.run --dataset=folder --data_dir=../shared/data/chest_xray --size=224 \
      --batch_size=16 --eval_batch_size=64 --repeats=3 --bench_steps=8 \
      --output=bench/results/chest_xray_224.json

Every training flag applies (config.TrainConfig: dataset, size, classifier, batch_size,
num_samples, ascent_steps, train_fraction, mixed_precision, jit_compile, strategy, ...): the
models, data, pipelines and synthesis method are the run's parts (run_parts.assemble)
built from them, in one process on the current device, and each measurement calls those
objects (nothing is re-implemented here). Measured, each as the median over --repeats after
--warmup untimed repetitions (tracing, caches):

  train_pipeline   classifier `fit` on the project's tf.data pipeline, as Trainer trains
  train_numpy      the same model, compiled the same way, `fit` on numpy arrays
  train_mixed      the pipeline of a round: real and "synthetic" batches zipped (here both
                   streams hold real images: only the pipeline's cost is measured)
  ascent           the method's latent move on the round's pool (TSynD: the latent ascent):
                   latents x steps per second
  mc_inference     uncertainty.mc_predict on the test split: images per second at T
  epoch / round    one baseline classifier epoch of the default run (fit + validation +
                   checkpoint) and one TSynD generation round (encode, ascent, decode, pool
                   measures and summaries, .npz), both as Trainer runs them

Writes --output (JSON) and the same path with .md (a table for docs/PERFORMANCE.md), and
prints the table. Timings only; nothing is asserted. Run nothing else on the machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from bench.machine import device_info, machine_label
from tsynd_tf import cli, config

config.define_flags()  # the training settings, as `train` has them

flags.DEFINE_integer("repeats", 5, "Timed repetitions of each measurement (median).")
flags.DEFINE_integer("warmup", 1, "Untimed repetitions before them.")
flags.DEFINE_integer("bench_steps", 0, "Batches per timed classifier-throughput epoch; 0: "
                     "one pass over the training split.")
flags.DEFINE_integer("ascent_pool", 0, "Latents in the ascent-throughput pool; 0: the "
                     "round's pool (10% of train by default). Throughput per latent-step does "
                     "not depend on it once it holds a few batches; smaller keeps 224 px short.")
flags.DEFINE_integer("mc_images", 0, "Test images per MC-inference repetition; 0: all.")
flags.DEFINE_list("only", ["train", "ascent", "mc", "round"], "Measurements to run: train "
                  "(pipeline, numpy, mixed), ascent, mc, round (epoch vs round).")
flags.DEFINE_string("from_json", None, "Only rewrite the .md table of this result JSON.")
flags.DEFINE_string("output", None, "JSON result path (default bench/results/<dataset>_"
                    "<size>_<device>.json); a .md table is written beside it.")

FLAGS = flags.FLAGS
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- memory

def rss_peak_mib() -> float:
    """Peak resident set size of this process so far (Linux: ru_maxrss is in KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB


def gpu_peak_mib(reset: bool = False) -> float | None:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / MIB
    if reset:
        tf.config.experimental.reset_memory_stats("GPU:0")
    return peak


# ----------------------------------------------------------------------------- timing

def summary(seconds: list[float], per_repeat: float, unit: str) -> dict:
    """Median throughput (per_repeat items per repetition) and its spread."""
    timed = seconds[FLAGS.warmup:]
    rates = sorted(per_repeat / s for s in timed)
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1],
            "unit": unit, "items_per_repeat": per_repeat,
            "seconds_median": statistics.median(timed), "seconds": seconds,
            "warmup": FLAGS.warmup, "repeats": len(timed)}


def epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    return EpochTimer()


class Stopwatch:
    """Accumulates the time spent in wrapped functions (the parts of an epoch or round)."""

    def __init__(self):
        self.totals = {}

    def wrap(self, owner, name: str, label: str):
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, function)

    def take(self) -> dict:
        totals, self.totals = self.totals, {}
        return totals


# ----------------------------------------------------------------------------- measurements

def fresh_classifier(parts):
    """A second classifier built and compiled exactly as the run's own (run_parts)."""
    from tsynd_tf import run_parts

    with parts.strategy.scope():
        return run_parts.build_classifier(parts.config, parts.dataset.info,
                                         parts.dataset.train.images.shape[-1])


def measure_training(parts) -> dict:
    import numpy as np

    from tsynd_tf.data.pipeline import classifier_batches, for_fit

    config, split = parts.config, parts.dataset.train
    batch, epochs = config.batch_size, FLAGS.warmup + FLAGS.repeats
    steps = FLAGS.bench_steps or math.ceil(len(split) / batch)
    count = min(len(split), steps * batch)
    replicas = parts.strategy.num_replicas_in_sync
    results = {"images_per_epoch": count, "batch_size": batch}

    def pipeline_fit(model, synthetic):
        batches = for_fit(classifier_batches(split, synthetic, config, seed=config.seed,
                                             replicas=replicas))
        timer = epoch_timer()
        model.fit(batches, epochs=epochs, steps_per_epoch=math.ceil(count / batch),
                  verbose=0, callbacks=[timer], shuffle=False)
        return summary(timer.seconds, math.ceil(count / batch) * batch, "img/s")

    results["train_pipeline"] = pipeline_fit(parts.classifier, None)

    model = fresh_classifier(parts)
    x = split.images[:count].astype(np.float32) / 255.0
    timer = epoch_timer()
    model.fit(x, split.targets[:count], batch_size=batch, epochs=epochs, verbose=0,
              callbacks=[timer], shuffle=True)
    results["train_numpy"] = summary(timer.seconds, count, "img/s")
    del x
    results["numpy_over_pipeline"] = (results["train_numpy"]["median"] /
                                      results["train_pipeline"]["median"])
    results["train_mixed"] = pipeline_fit(fresh_classifier(parts), parts.real)
    return results


def pool_anchors(parts, size: int):
    import numpy as np

    from tsynd_tf.synthesis.generators import draw_sources

    sources = draw_sources(len(parts.real), size, parts.config.seed)
    return parts.infer(parts.encoder, parts.real.images[sources] / np.float32(255))


def measure_ascent(parts) -> dict:
    """The method's `move` of a pool of latents, as its `pool` calls it each round."""
    if not hasattr(parts.method, "move"):
        return {"skipped": f"--method={parts.config.method} moves no latents"}
    config = parts.config
    pool = FLAGS.ascent_pool or parts.pool_size
    anchors = pool_anchors(parts, pool)
    seconds = []
    for _ in range(FLAGS.warmup + FLAGS.repeats):
        start = time.perf_counter()
        parts.method.move(0, anchors, parts.classifier)
        seconds.append(time.perf_counter() - start)
    from tsynd_tf.synthesis import TSynD

    # TSynD steps each latent ascent_steps times; latent noise moves it once.
    steps = config.ascent_steps if isinstance(parts.method, TSynD) else 1
    result = summary(seconds, pool * steps, "latent-steps/s")
    result.update(pool_size=pool, num_samples=config.num_samples, ascent_steps=steps,
                  batch_size=config.batch_size,
                  mc_passes_per_s=result["median"] * config.num_samples)
    return result


def measure_mc(parts) -> dict:
    from tsynd_tf import data, uncertainty

    config, test = parts.config, parts.dataset.test
    images = test.images[:FLAGS.mc_images or len(test)]
    batches = data.make_pipeline(images, None, config.eval_batch_size)
    seconds = []
    for _ in range(FLAGS.warmup + FLAGS.repeats):
        start = time.perf_counter()
        uncertainty.mc_predict(parts.classifier, batches, config.num_samples,
                               parts.dataset.info.multilabel)
        seconds.append(time.perf_counter() - start)
    result = summary(seconds, len(images), "img/s")
    result.update(num_samples=config.num_samples, batch_size=config.eval_batch_size,
                  forward_passes_per_s=result["median"] * config.num_samples)
    return result


def measure_epoch_and_round(parts) -> dict:
    """One classifier epoch and one generation round, both exactly as Trainer.run runs them."""
    from tsynd_tf import callbacks, training, uncertainty

    trainer = training.Trainer(parts)
    watch = Stopwatch()
    restore = [watch.wrap(callbacks.PreciseBatchNorm, "on_epoch_end", "precise_batch_norm"),
               watch.wrap(callbacks.MCValidation, "on_epoch_end", "validation_mc"),
               watch.wrap(callbacks.Checkpoint, "on_epoch_end", "checkpoint"),
               watch.wrap(uncertainty, "mc_predict", "mc_predict")]
    epochs, epoch_parts = [], []
    try:
        for epoch in range(FLAGS.warmup + FLAGS.repeats):
            start = time.perf_counter()
            epoch = int(parts.checkpoint.classifier_epoch)
            trainer.train_classifier(epoch, epoch + 1, synthetic=None)
            epochs.append(time.perf_counter() - start)
            epoch_parts.append(watch.take())
        result = {"epoch": summary(epochs, 1, "epochs/s"),
                  "epoch_parts_median_s": median_parts(epoch_parts),
                  "steps_per_epoch": parts.steps_per_epoch,
                  "labelled": len(parts.real)}
        if not parts.method.makes_images:
            return result
        # The autoencoder's training is not timed: mark it done, so `fit` only hands the
        # method its labelled images.
        parts.checkpoint.ae_epoch.assign(parts.config.ae_epochs)
        parts.method.fit(parts.real, parts.dataset.train)
        rounds, round_parts = [], []
        for name, label in (("move", "ascent"), ("log_pool", "pool_measures_and_summaries")):
            if hasattr(parts.method, name):
                restore.append(watch.wrap(parts.method, name, label))
        for index in range(FLAGS.warmup + FLAGS.repeats):
            start = time.perf_counter()
            trainer.pool(index)
            rounds.append(time.perf_counter() - start)
            round_parts.append(watch.take())
    finally:
        for undo in reversed(restore):
            undo()
    result["round"] = summary(rounds, 1, "rounds/s")
    result["round_parts_median_s"] = median_parts(round_parts)
    result.update(pool_size=parts.pool_size, ascent_steps=parts.config.ascent_steps)
    epoch_s, round_s = result["epoch"]["seconds_median"], result["round"]["seconds_median"]
    result["round_over_epoch"] = round_s / epoch_s
    config = parts.config
    baseline_epochs = config.initial_epochs + config.rounds * config.epochs_per_round
    # TSynD trains the same number of epochs of the same steps as the baseline (Trainer):
    # its extra cost is the rounds.
    result["schedule"] = {"epochs": baseline_epochs, "rounds": config.rounds,
                          "tsynd_over_baseline": 1 + config.rounds * round_s /
                          (baseline_epochs * epoch_s)}
    return result


def median_parts(parts: list[dict]) -> dict:
    timed = parts[FLAGS.warmup:]
    keys = sorted({k for p in timed for k in p})
    return {k: statistics.median(p.get(k, 0.0) for p in timed) for k in keys}


# ----------------------------------------------------------------------------- report

def markdown(result: dict) -> str:
    d, s = result["device"], result["settings"]
    dataset = Path(s["data_dir"]).name if s["dataset"] == "folder" else s["dataset"]
    head = (f"{dataset} {s['size']}px, {s['classifier']}, batch {s['batch_size']}, "
            f"T={s['num_samples']}, {d['mixed_precision']}, "
            f"XLA {'on' if d['jit_compile'] else 'off'}, "
            f"{d['strategy']} x{d['replicas']}; {machine_label(d)}")
    rows = [f"**{head}**", "", "| measurement | median | min–max | unit |", "|---|---|---|---|"]

    def row(name, m):
        if m and "median" in m:
            rows.append(f"| {name} | {m['median']:.4g} | {m['min']:.4g}–{m['max']:.4g} | "
                        f"{m['unit']} |")

    train = result.get("train", {})
    row("classifier fit, tf.data pipeline (Trainer)", train.get("train_pipeline"))
    row("classifier fit, numpy arrays", train.get("train_numpy"))
    row("classifier fit, real+synthetic pipeline", train.get("train_mixed"))
    if "numpy_over_pipeline" in train:
        rows.append(f"| numpy / pipeline | {train['numpy_over_pipeline']:.3f} | | ratio |")
    row(f"latent ascent (pool {result.get('ascent', {}).get('pool_size')})",
        result.get("ascent"))
    row(f"MC inference, T={s['num_samples']}", result.get("mc"))
    rounds = result.get("round", {})
    def seconds(name, m):
        rows.append(f"| {name} | {m['seconds_median']:.3g} | "
                    f"{min(m['seconds'][m['warmup']:]):.3g}–{max(m['seconds'][m['warmup']:]):.3g}"
                    f" | s |")

    def parts(key, labels):
        for part, label in labels:
            if part in rounds.get(key, {}):
                rows.append(f"| &nbsp;&nbsp;of which {label} | {rounds[key][part]:.3g} | | s |")

    if "epoch" in rounds:
        seconds(f"baseline classifier epoch ({rounds['steps_per_epoch']} steps, "
                f"{rounds['labelled']} labelled, + validation)", rounds["epoch"])
        parts("epoch_parts_median_s", [("validation_mc", "validation MC"),
                                       ("precise_batch_norm", "precise BatchNorm"),
                                       ("checkpoint", "checkpoint")])
    if "round" in rounds:
        seconds(f"TSynD generation round (pool {rounds['pool_size']}, "
                f"{rounds['ascent_steps']} ascent steps)", rounds["round"])
        parts("round_parts_median_s", [("ascent", "latent ascent"),
                                       ("pool_measures_and_summaries", "pool MC measures")])
        rows.append(f"| round / epoch | {rounds['round_over_epoch']:.3g} | | ratio |")
        sched = rounds["schedule"]
        rows.append(f"| TSynD / baseline run ({sched['epochs']} epochs, {sched['rounds']} "
                    f"rounds) | {sched['tsynd_over_baseline']:.3g} | | ratio |")
    memory = result["memory"]
    rows.append(f"| peak RSS | {memory['rss_peak_mib']:.0f} | | MiB |")
    if memory.get("gpu_peak_mib") is not None:
        rows.append(f"| peak GPU memory | {memory['gpu_peak_mib']:.0f} | | MiB |")
    return "\n".join(rows) + "\n"


def default_output() -> Path:
    import tensorflow as tf

    dataset = Path(FLAGS.data_dir).name if FLAGS.dataset == "folder" else FLAGS.dataset
    device = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    return Path("bench/results") / f"{dataset}_{FLAGS.size}_{device}.json"


def main(argv):
    unknown = set(FLAGS.only) - {"train", "ascent", "mc", "round"}
    if unknown or FLAGS.repeats < 1 or FLAGS.warmup < 0:
        raise cli.UsageError(f"--only takes train, ascent, mc, round (got {sorted(unknown)});"
                             " --repeats >= 1, --warmup >= 0.")
    if FLAGS.from_json:
        path = Path(FLAGS.from_json)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        print(path.with_suffix(".md").read_text())
        return
    settings = config.from_flags(FLAGS)
    from tsynd_tf import run_parts
    from tsynd_tf.runs import RunDir

    with tempfile.TemporaryDirectory(prefix="tsynd-bench-") as run_dir:
        settings = dataclasses.replace(settings, output_dir=run_dir, verbose=0)
        start = time.perf_counter()
        parts = run_parts.assemble(settings, RunDir(run_dir))
        result = {"device": device_info(parts),
                  "settings": {k: v for k, v in settings.to_dict().items()
                               if k not in ("output_dir", "export_dir", "verbose")},
                  "bench": {"repeats": FLAGS.repeats, "warmup": FLAGS.warmup,
                            "bench_steps": FLAGS.bench_steps, "only": FLAGS.only,
                            "command": " ".join(sys.argv)},
                  "setup_seconds": time.perf_counter() - start,
                  "memory": {"rss_after_setup_mib": rss_peak_mib()}}
        gpu_peak_mib(reset=True)
        for name, measure in (("train", measure_training), ("ascent", measure_ascent),
                              ("mc", measure_mc), ("round", measure_epoch_and_round)):
            if name in FLAGS.only:
                print(f"bench: {name} ...", flush=True)
                result[name] = measure(parts)
                result["memory"][f"rss_peak_after_{name}_mib"] = rss_peak_mib()
                result["memory"][f"gpu_peak_{name}_mib"] = gpu_peak_mib(reset=True)
        result["memory"]["rss_peak_mib"] = rss_peak_mib()
        gpu_peaks = [v for k, v in result["memory"].items()
                     if k.startswith("gpu_peak_") and v is not None]
        result["memory"]["gpu_peak_mib"] = max(gpu_peaks) if gpu_peaks else None
    output = Path(FLAGS.output) if FLAGS.output else default_output()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    table = markdown(result)
    output.with_suffix(".md").write_text(table)
    print(table)
    print(f"bench: wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    cli.run(main)
