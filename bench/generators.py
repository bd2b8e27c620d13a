r"""The cost of the generating methods' generators: seconds per training step and seconds to
sample a pool, on real images, on this device, against the targets of issue 15 (at 28 px on 2
CPU cores: recognisable samples within 15 minutes of training, 1,000 images within 3 minutes).

  python -m bench.generators                                       # diffusion and gan, 28 px
  python -m bench.generators --generators=gan --steps=5 --num_images=64 --repeats=1  # smoke

Every training flag applies (config.TrainConfig: dataset, size, train_fraction, batch_size,
generator_steps, ddim_steps, guidance_scale, eval_batch_size, mixed_precision, ...), and
bench.run's --repeats and --warmup. For each of --generators, the run parts
(run_parts.assemble) of that --method are built in a temporary run directory with a
temporary model cache; its method fits its generator for --steps batches and samples a few
images (tracing). That first fit is timed as a whole (first_fit_seconds: tracing the step,
its --steps steps and writing the cache entry; first_fit_extra_seconds: what it costs above
--steps timed steps, mostly the tracing that every run that trains a generator pays once).
Then the method's own `train` (--steps batches of --batch_size on the labelled images) runs
--warmup times untimed and --repeats times timed, and its own `pool` (--num_images images;
diffusion at --ddim_steps) --sample_repeats times: one diffusion pool of 1,000 images takes
minutes on 2 cores, which is why it defaults to once. Neither time depends on the weights, so a
generator of a few steps times the same as a trained one. Prints one JSON line per
(generator, measurement), with the machine's load average, since a busy machine is slower;
`train` rows also give the seconds that --generator_steps would take. Timings only; nothing
is asserted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from bench.run import device_info  # also defines --repeats, --warmup
from tsynd_tf import cli, config

flags.DEFINE_list("generators", ["diffusion", "gan"], "Generating methods to time.")
flags.DEFINE_integer("steps", 20, "Training steps per timed repetition.")
flags.DEFINE_integer("num_images", 1000, "Images per timed sampling.")
flags.DEFINE_integer("sample_repeats", 1, "Timed samplings of --num_images (median).")
FLAGS = flags.FLAGS
TARGET_TRAIN_SECONDS, TARGET_SAMPLE_SECONDS = 15 * 60, 3 * 60  # at 28 px on 2 CPU cores


def timed(call, repeats: int, warmup: int = 0) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones."""
    seconds = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds[warmup:]


def measure(settings: config.TrainConfig, generator: str, root: Path) -> list[dict]:
    from tsynd_tf import run_parts
    from tsynd_tf.runs import RunDir

    run_settings = dataclasses.replace(
        settings, method=generator, generator_steps=FLAGS.steps, verbose=0,
        output_dir=str(root / generator), cache_dir=str(root / "cache"))
    parts = run_parts.assemble(run_settings, RunDir(root / generator))
    method = parts.method
    started = time.perf_counter()
    method.fit(parts.real, parts.dataset.train)  # traces the training step
    first_fit = time.perf_counter() - started
    method.pool(0, parts.classifier, min(FLAGS.num_images, 8))  # traces the sampler
    device = device_info(parts)
    common = {"generator": generator, "dataset": settings.dataset, "size": settings.size,
              "labelled_images": len(parts.real), "cpu": device["cpu"],
              "cpu_cores_usable": device["cpu_cores_usable"], "gpus": device["gpus"],
              "mixed_precision": device["mixed_precision"], "load_average": os.getloadavg()}
    train = timed(lambda: method.train(parts.real), FLAGS.repeats, FLAGS.warmup)
    per_step = statistics.median(train) / FLAGS.steps
    sample = timed(lambda: method.pool(0, parts.classifier, FLAGS.num_images),
                   FLAGS.sample_repeats)
    sampler = {"ddim_steps": settings.ddim_steps} if generator.endswith("diffusion") else {}
    return [
        {**common, "measure": "train", "batch_size": settings.batch_size,
         "steps": FLAGS.steps, "seconds_per_step": per_step,
         "seconds_per_step_min_max": [min(train) / FLAGS.steps, max(train) / FLAGS.steps],
         "first_fit_seconds": first_fit,
         "first_fit_extra_seconds": first_fit - per_step * FLAGS.steps,
         "generator_steps": settings.generator_steps,
         "seconds_at_generator_steps": per_step * settings.generator_steps,
         "target_seconds": TARGET_TRAIN_SECONDS},
        {**common, "measure": "sample", "num_images": FLAGS.num_images, **sampler,
         "eval_batch_size": parts.eval_batch_size, "seconds": statistics.median(sample),
         "seconds_min_max": [min(sample), max(sample)],
         "target_seconds": TARGET_SAMPLE_SECONDS}]


def main(argv):
    from tsynd_tf import synthesis

    trained = [name for name, method in synthesis.METHODS.items() if hasattr(method, "train")]
    if not FLAGS.generators or set(FLAGS.generators) - set(trained):
        raise cli.UsageError(f"--generators takes methods that train a generator, of "
                             f"{trained}; got {FLAGS.generators}.")
    if min(FLAGS.steps, FLAGS.num_images, FLAGS.repeats, FLAGS.sample_repeats) < 1 or \
            FLAGS.warmup < 0:
        raise cli.UsageError("--steps, --num_images, --repeats and --sample_repeats must be "
                             ">= 1, --warmup >= 0.")
    settings = config.from_flags(FLAGS)
    print(json.dumps({"command": " ".join(sys.argv)}), flush=True)
    with tempfile.TemporaryDirectory(prefix="tsynd-bench-generators-") as root:
        for generator in FLAGS.generators:
            for row in measure(settings, generator, Path(root)):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    cli.run(main)
