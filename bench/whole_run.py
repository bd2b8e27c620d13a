r"""What a whole default run of each method costs next to the baseline's, stage by stage: the
TSynD / baseline run ratio of issue 19, measured rather than modelled from epochs and rounds.

  python -m bench.whole_run                      # flags/pneumoniamnist_10pct.cfg, 28 px
  python -m bench.whole_run --methods=baseline,tsynd_mi --seeds=0,0 \
      --output=bench/results/whole_run_pneumoniamnist_28_cpu.json

Each run is `python -m tsynd_tf.train --flagfile=--config --method=M --seed=S` in a fresh
process and a temporary run directory, as a user types it, with --train_flags appended; the
runs alternate (baseline, method, baseline, method, ...) so that a drift in the machine's
speed reaches both. Per run: the wall seconds of the command (TensorFlow's import and data
loading included) and its results' seconds/... (training.Trainer.timed: generator,
classifier, synthesis, evaluation, pool_quality). All runs share one temporary model cache,
so the first run that measures pool quality trains the reference classifier (reported as
pool_quality, ~15 s) and later runs load it, as a user's later runs would.
Writes --output (JSON) and a Markdown table beside it. Timings only; nothing is asserted.
Run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from bench.machine import cpu_model, git_revision, write_result
from tsynd_tf import cli

flags.DEFINE_string("config", "flags/pneumoniamnist_10pct.cfg", "Flagfile of the runs.")
flags.DEFINE_list("methods", ["baseline", "tsynd_mi"], "Methods; the first is the reference.")
flags.DEFINE_list("seeds", ["0"], "One run of each method per seed; a seed given twice runs "
                  "twice, the second time with the generators the first cached.")
flags.DEFINE_list("train_flags", [], "Extra tsynd_tf.train flags for every run, e.g. "
                  "--train_flags=--mixed_precision=mixed_bfloat16.")
flags.DEFINE_string("output", "bench/results/whole_run.json", "JSON result path.")

FLAGS = flags.FLAGS
STAGES = ("generator", "classifier", "synthesis", "evaluation", "pool_quality")


def train(method: str, seed: int, root: Path, env: dict) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{method}_s{seed}_", dir=root))
    command = [sys.executable, "-m", "tsynd_tf.train", f"--flagfile={FLAGS.config}",
               f"--method={method}", f"--seed={seed}", f"--output_dir={run_dir}",
               "--export_dir=", "--verbose=0", *FLAGS.train_flags]
    print(f"whole_run: {method} seed {seed} ...", flush=True)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    results = json.loads((run_dir / "results.json").read_text())
    return {"method": method, "seed": seed, "wall_seconds": wall,
            "load_average_after": os.getloadavg()[0],
            "session_seconds": results["seconds_this_session"],
            "stages": {s: results.get(f"seconds/{s}", 0.0) for s in STAGES},
            "generator_loaded": results.get("generator_loaded"),
            "test/acc": results["test/acc"], "test/auc": results["test/auc"]}


def markdown(result: dict) -> str:
    """One column per run, in the order they ran, and each run's ratio to the reference
    method's run of the same seed before it."""
    runs, reference = result["runs"], result["methods"][0]
    names = [f"{r['method']} s{r['seed']}" + (" (cached generator)" if r["generator_loaded"]
                                              else "") for r in runs]
    rows = [f"**{result['config']}, {' '.join(result['train_flags']) or 'default flags'}; "
            f"{result['cpu']} ({result['cpu_cores']} cores); {result['date'][:10]}**", "",
            f"| seconds | {' | '.join(names)} |", "|---|" + "---|" * len(runs)]
    measures = [("whole command (wall)", lambda r: r["wall_seconds"]),
                ("in the run (seconds_this_session)", lambda r: r["session_seconds"])]
    measures += [(f"&nbsp;&nbsp;{stage}", lambda r, s=stage: r["stages"][s]) for stage in STAGES]
    for label, value in measures:
        rows.append(f"| {label} | {' | '.join(f'{value(r):.1f}' for r in runs)} |")
    ratios, last = [], None
    for r in runs:
        last = r if r["method"] == reference else last
        ratios.append("" if r is last or last is None else
                      f"{r['wall_seconds'] / last['wall_seconds']:.2f}")
    rows.append(f"| wall / {reference}'s wall | {' | '.join(ratios)} |")
    metrics = [f"{r['test/acc']:.4f} / {r['test/auc']:.4f}" for r in runs]
    rows.append(f"| test ACC / AUC | {' | '.join(metrics)} |")
    return "\n".join(rows) + "\n"


def main(argv):
    del argv
    if not Path(FLAGS.config).is_file():
        raise cli.UsageError(f"--config={FLAGS.config} is not a file.")
    with tempfile.TemporaryDirectory(prefix="tsynd-whole-run-") as tmp:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TSYND_CACHE_DIR=str(Path(tmp) / "cache"))
        runs = [train(method, int(seed), Path(tmp), env)
                for seed in FLAGS.seeds for method in FLAGS.methods]
    result = {"config": FLAGS.config, "methods": FLAGS.methods, "seeds": FLAGS.seeds,
              "train_flags": FLAGS.train_flags, "cpu": cpu_model(),
              "cpu_cores": len(os.sched_getaffinity(0)), "git": git_revision(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(sys.argv), "runs": runs}
    output = Path(FLAGS.output)
    write_result(output, result, markdown(result))


if __name__ == "__main__":
    cli.run(main)
