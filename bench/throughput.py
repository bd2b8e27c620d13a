r"""Classifier training throughput, repetition by repetition, with the CPU this process got in
each: the measurement behind issue 19's bimodal throughput and its ResNet-18 row.

  python -m bench.throughput --classifier=resnet18 --batch_size=128    # MedMNIST's setting
  python -m bench.throughput --classifier=resnet18 --batch_size=128 --busy_processes=1
  python -m bench.throughput --classifier=resnet18 --batch_size=128 \
      --mixed_precision=mixed_bfloat16

The classifier is built and compiled as training builds it (run_parts.build_classifier: Adam
at --learning_rate, the project's loss) and trained with `fit` on the project's endless
tf.data pipeline (data.classifier_batches) over the whole training split of --dataset (all
labels, as MedMNIST's own trainer uses them), --bench_steps batches per repetition. For each
repetition it records img/s and, from getrusage, the CPU cores this process used (CPU seconds
/ wall seconds), its minor page faults and involuntary context switches, with the machine's
load average. --busy_processes starts that many busy-looping processes for the timed
repetitions: one competing process on a 2-core machine reproduces the slow mode.
Writes --output (JSON) and a Markdown table beside it. Timings only; nothing is asserted.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import sys
import time
import types
from pathlib import Path

from absl import flags

from bench.machine import device_info, machine_label, write_result
from tsynd_tf import cli, config

config.define_flags()

flags.DEFINE_integer("repeats", 12, "Timed repetitions.", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed repetitions first (tracing).", lower_bound=0)
flags.DEFINE_integer("bench_steps", 4, "Batches per repetition.", lower_bound=1)
flags.DEFINE_integer("busy_processes", 0, "Busy-looping processes competing for the CPU "
                     "during the timed repetitions.", lower_bound=0)
flags.DEFINE_float("peer_images_per_s", 50.0, "The peer figure to compare with: MedMNIST's "
                   "PyTorch trainer, ResNet-18 at 28 px, batch 128, 2 threads on this machine "
                   "type (issue 19: 50-54 img/s).")
flags.DEFINE_string("output", None, "JSON result path (default bench/results/throughput_"
                    "<classifier>_<precision>.json); a .md table is written beside it.")

FLAGS = flags.FLAGS


def _busy_loop():
    while True:
        pass


def repetition_timer(batch_images: int):
    import keras

    class RepetitionTimer(keras.callbacks.Callback):
        """img/s and this process's share of the CPU, per epoch (= repetition)."""

        def __init__(self):
            super().__init__()
            self.rows = []

        def on_epoch_begin(self, epoch, logs=None):
            self.usage, self.start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            wall = time.perf_counter() - self.start
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (usage.ru_utime + usage.ru_stime) - (self.usage.ru_utime + self.usage.ru_stime)
            self.rows.append({
                "images_per_s": batch_images / wall, "seconds": wall,
                "cores_used": cpu / wall,
                "minor_faults": usage.ru_minflt - self.usage.ru_minflt,
                "involuntary_switches": usage.ru_nivcsw - self.usage.ru_nivcsw,
                "load_average": os.getloadavg()[0]})

    return RepetitionTimer()


def markdown(result: dict) -> str:
    s, timed = result["settings"], result["repetitions"][result["warmup"]:]
    rates = [r["images_per_s"] for r in timed]
    head = (f"{s['dataset']} {s['size']}px, {s['classifier']}, batch {s['batch_size']}, "
            f"{result['precision']}, {result['busy_processes']} competing process(es); "
            f"{machine_label(result['device'])}")
    rows = [f"**{head}**", "",
            "| repetition | img/s | cores used | minor faults | involuntary switches |",
            "|---|---|---|---|---|"]
    for i, r in enumerate(result["repetitions"]):
        label = f"{i} (warm-up)" if i < result["warmup"] else str(i)
        rows.append(f"| {label} | {r['images_per_s']:.1f} | {r['cores_used']:.2f} | "
                    f"{r['minor_faults']} | {r['involuntary_switches']} |")
    peer = result["peer_images_per_s"]
    rows += ["", f"Timed: median {statistics.median(rates):.1f} img/s, min {min(rates):.1f}, "
             f"max {max(rates):.1f}; median / peer ({peer:g} img/s) "
             f"{statistics.median(rates) / peer:.2f}; {sum(r < peer for r in rates)} of "
             f"{len(rates)} repetitions below the peer."]
    return "\n".join(rows) + "\n"


def main(argv):
    del argv
    import keras
    import tensorflow as tf


    from tsynd_tf import data, run_parts

    settings = config.from_flags(FLAGS)
    precision = run_parts.set_precision(settings.mixed_precision)
    dataset = data.load_dataset(settings.dataset, settings.size, settings.data_dir,
                                settings.channels)
    split = dataset.train
    classifier = run_parts.build_classifier(settings, dataset.info, split.images.shape[-1])
    batches = data.for_fit(data.classifier_batches(split, None, settings, seed=settings.seed))
    timer = repetition_timer(FLAGS.bench_steps * settings.batch_size)
    busy = [multiprocessing.Process(target=_busy_loop, daemon=True)
            for _ in range(FLAGS.busy_processes)]

    class Competition(keras.callbacks.Callback):
        """Starts the busy processes once the warm-up repetitions are done."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == FLAGS.warmup:
                for process in busy:
                    process.start()

    try:
        classifier.fit(batches, epochs=FLAGS.warmup + FLAGS.repeats,
                       steps_per_epoch=FLAGS.bench_steps, verbose=0, shuffle=False,
                       callbacks=[Competition(), timer])
    finally:
        for process in busy:
            if process.is_alive():
                process.terminate()
    # device_info reads what it needs of a run's parts from these three attributes.
    device = device_info(types.SimpleNamespace(policy=precision, config=settings,
                                               strategy=tf.distribute.get_strategy()))
    result = {"settings": {k: settings.to_dict()[k] for k in
                           ("dataset", "size", "classifier", "batch_size", "learning_rate")},
              "precision": precision, "busy_processes": FLAGS.busy_processes,
              "warmup": FLAGS.warmup, "bench_steps": FLAGS.bench_steps,
              "images_per_repetition": FLAGS.bench_steps * settings.batch_size,
              "train_images": len(split), "peer_images_per_s": FLAGS.peer_images_per_s,
              "device": device, "command": " ".join(sys.argv),
              "repetitions": timer.rows}
    output = Path(FLAGS.output or f"bench/results/throughput_{settings.classifier}_"
                  f"{precision}.json")
    write_result(output, result, markdown(result))


if __name__ == "__main__":
    cli.run(main)
