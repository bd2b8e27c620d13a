r"""The cost of uncertainty-guided diffusion sampling: --num_images images sampled with and
without uncertainty guidance, the same DDIM steps, labels and noise, on this device.

  python -m bench.guided_sampling --method=tsynd_diffusion                # defaults
  python -m bench.guided_sampling --method=tsynd_diffusion --num_images=64 --ddim_steps=5 \
      --generator_steps=2 --repeats=2 --output=/tmp/guided.json           # a smoke run

Every training flag applies (config.TrainConfig: dataset, size, ddim_steps, guidance_scale,
uncertainty_guidance, guidance_every, num_samples, eval_batch_size, mixed_precision, ...),
and bench.run's --repeats, --warmup and --output. A run's parts (run_parts.assemble) are
built from them; its method fits (or loads from the model cache) its generator, and each
repetition times the method's own samplers on the run's classifier: `Diffusion.sample`
(unguided) and `TSynDDiffusion.sample` (guided), interleaved so that a change in the machine's load
reaches both. Neither time depends on the weights: a generator of --generator_steps=2 and
the untrained classifier time the same as trained ones. Writes --output (JSON, default
bench/results/guided_sampling_<dataset>_<size>_<device>.json) and a .md table beside it.
Timings only; nothing is asserted. The target: guided <= 3x unguided.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from bench.machine import device_info, machine_label
from bench.run import summary
from tsynd_tf import cli, config

flags.DEFINE_integer("num_images", 1000, "Images per timed sampling.")
FLAGS = flags.FLAGS
TARGETED = ("tsynd_diffusion", "tsynd_diffusion_entropy")


def measure(parts) -> dict:
    import numpy as np

    from tsynd_tf.synthesis.diffusion import Diffusion

    method, classifier, n = parts.method, parts.classifier, FLAGS.num_images
    labels = np.random.default_rng(0).choice(method.labelled.targets.argmax(1), size=n)
    samplers = {"unguided": lambda: Diffusion.sample(method, labels, 0, classifier),
                "guided": lambda: method.sample(labels, 0, classifier)}
    seconds = {name: [] for name in samplers}
    for _ in range(FLAGS.warmup + FLAGS.repeats):
        for name, sample in samplers.items():
            start = time.perf_counter()
            sample()
            seconds[name].append(time.perf_counter() - start)
    result = {name: summary(times, n, "img/s") for name, times in seconds.items()}
    result["guided_over_unguided"] = (result["guided"]["seconds_median"] /
                                      result["unguided"]["seconds_median"])
    return result


def markdown(result: dict) -> str:
    d, s = result["device"], result["settings"]
    head = (f"{s['dataset']} {s['size']}px, {result['num_images']} images, {s['ddim_steps']} "
            f"DDIM steps, guidance {s['uncertainty_guidance']:g} every {s['guidance_every']} "
            f"step(s), T={s['num_samples']}, eval batch {s['eval_batch_size']}, "
            f"{d['mixed_precision']}; {machine_label(d)}")
    rows = [f"**{head}**", "", "| sampling | median | min–max | unit |", "|---|---|---|---|"]
    for name in ("unguided", "guided"):
        m = result[name]
        timed = m["seconds"][m["warmup"]:]
        rows.append(f"| {name} | {m['seconds_median']:.3g} | {min(timed):.3g}–{max(timed):.3g}"
                    f" | s |")
    rows.append(f"| guided / unguided | {result['guided_over_unguided']:.3g} | | ratio "
                "(target <= 3) |")
    return "\n".join(rows) + "\n"


def main(argv):
    settings = config.from_flags(FLAGS)
    if settings.method not in TARGETED or settings.uncertainty_guidance == 0:
        raise cli.UsageError(f"bench.guided_sampling times uncertainty guidance: pass "
                             f"--method as one of {list(TARGETED)} and --uncertainty_guidance "
                             f"> 0 (got {settings.method!r}, {settings.uncertainty_guidance}).")
    if FLAGS.num_images < 1 or FLAGS.repeats < 1 or FLAGS.warmup < 0:
        raise cli.UsageError("--num_images and --repeats must be >= 1, --warmup >= 0.")
    from tsynd_tf import run_parts
    from tsynd_tf.runs import RunDir

    with tempfile.TemporaryDirectory(prefix="tsynd-bench-") as run_dir:
        settings = dataclasses.replace(settings, output_dir=run_dir, verbose=0)
        parts = run_parts.assemble(settings, RunDir(run_dir))
        parts.method.fit(parts.real, parts.dataset.train)
        result = {"device": device_info(parts), "num_images": FLAGS.num_images,
                  "settings": {k: v for k, v in settings.to_dict().items()
                               if k not in ("output_dir", "export_dir", "verbose")},
                  "command": " ".join(sys.argv), **measure(parts)}
    device = "gpu" if result["device"]["gpus"] else "cpu"
    output = Path(FLAGS.output or f"bench/results/guided_sampling_{settings.dataset}_"
                                  f"{settings.size}_{device}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    output.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"bench: wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    cli.run(main)
