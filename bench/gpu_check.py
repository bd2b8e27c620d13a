r"""The GPU check: every accelerated path of the project once, on real data, in <= 8 minutes on
one GPU, into one JSON (run by bench/gpu_check.sh; issue 19).

  bench/gpu_check.sh                          # on a GPU machine: writes $OUT/gpu_check.json
  bench/gpu_check.sh --dry --output=/tmp/x.json   # the same steps, tiny, on a CPU (the test)

Steps, each a subprocess of the project's own commands (so each gets a fresh TensorFlow and
its own GPU memory), timed, with its exit status and the end of its output on failure:

  tsynd_run_xla_off   a short TSynD run, --mixed_precision=auto (mixed_float16 on a GPU),
  tsynd_run_xla_on    --jit_compile off and on, exported as a SavedModel; its test metrics
  bench_run           bench.run's rows: classifier fit, latent ascent, MC inference, with
                      the GPU's name and peak memory
  bench_generators    bench.generators' diffusion rows: a training step and a sampled pool
  export_reload       tsynd_tf.predict reloads the exported SavedModel and classifies real
                      chest X-ray files (resized to the model's 28 px)

--dry shrinks every step to seconds (1 epoch, 1 repetition, a few images) and keeps
everything else, so that tests/test_gpu_check.py runs it on a CPU and the script cannot rot.
Exit status 0 when every step succeeded; 1 otherwise (the JSON is written either way,
atomically: a JSON that exists is complete).
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

from tsynd_tf import cli
from tsynd_tf.fileio import atomic_path

flags.DEFINE_bool("dry", False, "Tiny sizes for a CPU: the test's mode (nothing is timed "
                  "meaningfully).")
flags.DEFINE_string("output", None, "JSON path. Default: $OUT/gpu_check.json where $OUT is "
                    "set (the device machine), else bench/results/gpu_check.json.")
flags.DEFINE_string("medmnist_dir", None, "Folder of the MedMNIST .npz files. Default: "
                    "$TSYND_DATA_DIR, else ../shared/data/medmnist.")
flags.DEFINE_string("images", None, "Image files or a folder for the reload step. Default: "
                    "../shared/data/chest_xray/test/NORMAL.")
flags.DEFINE_integer("step_timeout", 240, "Seconds one step may run before it is stopped.")

FLAGS = flags.FLAGS
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A short TSynD run with every stage (autoencoder, classifier epochs, ascent rounds, MC
# validation, export); on a GPU it takes about a minute, --dry makes it seconds.
RUN_FLAGS = ["--dataset=pneumoniamnist", "--train_fraction=0.1", "--ae_epochs=5",
             "--initial_epochs=3", "--rounds=2", "--epochs_per_round=2",
             "--mixed_precision=auto", "--verbose=2", "--pool_quality=false"]
DRY_RUN_FLAGS = ["--dataset=pneumoniamnist", "--train_count=40", "--ae_epochs=1",
                 "--initial_epochs=1", "--rounds=1", "--epochs_per_round=1",
                 "--ascent_steps=2", "--num_samples=4", "--synthetic_multiple=1",
                 "--mixed_precision=auto", "--verbose=2", "--pool_quality=false"]
BENCH_FLAGS = ["--dataset=pneumoniamnist", "--only=train,ascent,mc", "--repeats=3",
               "--mixed_precision=auto"]
DRY_BENCH_FLAGS = ["--dataset=pneumoniamnist", "--only=train,ascent,mc", "--repeats=1",
                   "--warmup=0", "--bench_steps=1", "--ascent_pool=8", "--mc_images=16",
                   "--num_samples=4", "--mixed_precision=auto"]
GENERATOR_FLAGS = ["--generators=diffusion", "--steps=20", "--repeats=3",
                   "--mixed_precision=auto"]
DRY_GENERATOR_FLAGS = ["--generators=diffusion", "--steps=1", "--repeats=1", "--warmup=0",
                       "--num_images=8", "--ddim_steps=2", "--mixed_precision=auto"]


def step(name: str, args: list[str], env: dict) -> tuple[dict, str]:
    """Runs `python -m args...`: (its seconds, exit status and, on failure, output tail;
    its stdout)."""
    print(f"gpu_check: {name} ...", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                              env=env, timeout=FLAGS.step_timeout)
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as error:
        returncode, stdout, stderr = "timeout", error.stdout or "", error.stderr or ""
        stdout, stderr = [s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr)]
    record = {"command": "python -m " + " ".join(args), "returncode": returncode,
              "seconds": round(time.perf_counter() - start, 1)}
    if returncode != 0:
        record["output_tail"] = (stdout + stderr)[-3000:]
    print(f"gpu_check: {name}: exit {returncode}, {record['seconds']} s", flush=True)
    return record, stdout


def tsynd_run(name: str, run_dir: Path, jit: bool, env: dict) -> dict:
    flags_ = (DRY_RUN_FLAGS if FLAGS.dry else RUN_FLAGS) + [
        "--method=tsynd_mi", f"--jit_compile={str(jit).lower()}",
        f"--output_dir={run_dir}", f"--export_dir={run_dir / 'saved_models'}"]
    record, _ = step(name, ["tsynd_tf.train", *flags_], env)
    results = run_dir / "results.json"
    if record["returncode"] == 0 and results.exists():
        metrics = json.loads(results.read_text())
        record["results"] = {k: metrics[k] for k in ("test/acc", "test/auc", "precision",
                                                     "seconds_this_session") if k in metrics}
    return record


def bench_run(work: Path, env: dict) -> dict:
    output = work / "bench_run.json"
    flags_ = (DRY_BENCH_FLAGS if FLAGS.dry else BENCH_FLAGS) + [f"--output={output}"]
    record, _ = step("bench_run", ["bench.run", *flags_], env)
    if output.exists():
        result = json.loads(output.read_text())
        record.update(device=result["device"], memory=result["memory"],
                      rows={**{k: result["train"][k]["median"] for k in
                               ("train_pipeline", "train_numpy", "train_mixed")},
                            "ascent_latent_steps_per_s": result["ascent"]["median"],
                            "mc_images_per_s": result["mc"]["median"]})
    return record


def bench_generators(env: dict) -> dict:
    flags_ = DRY_GENERATOR_FLAGS if FLAGS.dry else GENERATOR_FLAGS
    record, stdout = step("bench_generators", ["bench.generators", *flags_], env)
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    record["rows"] = [row for row in rows if "measure" in row]  # not the command line
    return record


def export_reload(run_dir: Path, work: Path, env: dict) -> dict:
    models = sorted((run_dir / "saved_models").glob("*/*/saved_model.pb"))
    if not models:
        return {"returncode": "no SavedModel", "seconds": 0.0,
                "output_tail": f"the run wrote no SavedModel under {run_dir / 'saved_models'}"}
    output = work / "predictions.json"
    images = FLAGS.images or str(SHARED / "chest_xray" / "test" / "NORMAL")
    record, _ = step("export_reload", ["tsynd_tf.predict", f"--model={models[0].parent}",
                                       f"--output={output}", "--show=0", images], env)
    if output.exists():
        written = json.loads(output.read_text())
        rows = written["predictions"]
        record.update(model=str(models[0].parent), images=len(rows),
                      failed=len(written["failed"]),
                      referred=sum(bool(r["refer"]) for r in rows))
    return record


def main(argv):
    del argv
    out = os.environ.get("OUT")
    output = Path(FLAGS.output or (Path(out) / "gpu_check.json" if out
                                   else "bench/results/gpu_check.json"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["TSYND_DATA_DIR"] = (FLAGS.medmnist_dir or env.get("TSYND_DATA_DIR")
                             or str(SHARED / "medmnist"))
    if not Path(env["TSYND_DATA_DIR"]).is_dir():
        raise cli.UsageError(f"No MedMNIST folder at {env['TSYND_DATA_DIR']}: pass "
                             "--medmnist_dir or set TSYND_DATA_DIR.")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tsynd-gpu-check-") as tmp:
        work = Path(tmp)
        env.setdefault("TSYND_CACHE_DIR", str(work / "cache"))
        steps = {"tsynd_run_xla_off": tsynd_run("tsynd_run_xla_off", work / "xla_off", False,
                                                env),
                 "tsynd_run_xla_on": tsynd_run("tsynd_run_xla_on", work / "xla_on", True, env),
                 "bench_run": bench_run(work, env),
                 "bench_generators": bench_generators(env)}
        steps["export_reload"] = export_reload(work / "xla_off", work, env)
    failed = [name for name, record in steps.items() if record["returncode"] != 0]
    result = {"dry": FLAGS.dry, "seconds": round(time.perf_counter() - start, 1),
              "failed": failed, "steps": steps}
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as path:
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"gpu_check: {len(steps) - len(failed)} of {len(steps)} steps passed in "
          f"{result['seconds']} s; wrote {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
