"""The sweep's Ray launcher, on real PneumoniaMNIST: a Ray instance on 127.0.0.1 started by
the test (`ray start --head`) runs the cells of a tiny sweep, one of whose workers is killed
mid-cell, and the cells end as under the local launcher.

Skipped where Ray, an optional dependency, is not installed (make install-ray).
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TINY_TRAIN_FLAGS, run_module, subprocess_env

from tsynd_tf import fileio, runs

pytest.importorskip("ray", reason="Ray is an optional dependency: make install-ray (or pip "
                    "install -e '.[ray]') to run the Ray launcher's tests")

TINY_CONFIG = "\n".join(TINY_TRAIN_FLAGS) + "\n"
EVAL_ARGS = "--gaussian_sigmas= --fgsm_epsilons= --pgd_epsilons= --max_examples=64"
# Ray resolves 127.0.0.1 to the machine's address unless told that clusters are off.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
KILLED, LOCKED = "tiny_baseline_s1", "tiny_baseline_s2"


def sweep_args(config: Path, sweep_dir: Path, num_seeds: int) -> list[str]:
    return [f"--configs={config}", "--methods=baseline", f"--num_seeds={num_seeds}",
            f"--sweep_dir={sweep_dir}", f"--eval_args={EVAL_ARGS}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_env():
    """The environment of every Ray process of the tests: the cluster's own token (not
    ~/.ray/auth_token), and Ray's files (sessions, logs, the current cluster's address) in a
    folder of their own, removed afterwards. A short path: it holds Unix sockets."""
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    yield {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_TMPDIR": folder}
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory, ray_env):
    """'127.0.0.1:PORT' of a one-node Ray cluster with 3 CPUs, stopped afterwards (`ray
    start --block` stops what it started when terminated)."""
    log_path = tmp_path_factory.mktemp("ray") / "head.log"
    port = free_port()
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [Path(sys.executable).parent / "ray", "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=3", "--num-gpus=0",
             "--include-dashboard=false", "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT,
            env=subprocess_env(**LOOPBACK_ONLY, **ray_env))
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        head.wait(timeout=60)


def process_of(*parts: str) -> tuple[int, int] | None:
    """(pid, parent pid) of a process with every one of `parts` among its arguments."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode().split("\0")
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue  # not a process, or one that just ended
        if all(part in command for part in parts):
            return int(entry.name), int(stat.rsplit(")", 1)[1].split()[1])
    return None


def kill_worker_mid_cell(sweep: subprocess.Popen, run_dir: runs.RunDir) -> str:
    """Once the cell's train process has written its first checkpoint, SIGKILLs the Ray
    worker that runs the cell (the train process dies with it); the worker's command."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweep.poll() is None:
        train = process_of("tsynd_tf.train", f"--output_dir={run_dir}")
        if train and (run_dir.checkpoints / "checkpoint").exists():
            # The cell's log is held by its worker alone: were the flock on the train's
            # stdout too, the dying train would hold it a moment after the worker, and a
            # retry started in that moment would be refused ("another sweep process").
            stdout = (Path("/proc") / str(train[0]) / "fdinfo" / "1").read_text()
            assert "lock:" not in stdout, stdout
            worker = (Path("/proc") / str(train[1]) / "cmdline").read_bytes().decode()
            os.kill(train[1], signal.SIGKILL)
            return worker
        time.sleep(0.2)
    raise AssertionError(f"{run_dir}: no train process with a checkpoint to interrupt")


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, medmnist_dir, ray_head, ray_env):
    """The same 2 cells under the local launcher (2 workers: 1 thread per cell, as Ray's
    --cell_cpus=1) and on Ray, where a third cell's run directory is held by this process
    (its train refuses to start) and the worker of one cell is killed mid-cell."""
    root = tmp_path_factory.mktemp("sweeps")
    config = root / "tiny.cfg"
    config.write_text(TINY_CONFIG)
    run_module("tsynd_tf.experiment", *sweep_args(config, root / "local", 2), "--workers=2",
               data_dir=medmnist_dir)
    ray_dir = root / "ray"
    with runs.RunDir(runs.SweepDir(ray_dir).run(LOCKED).path).lock(), \
            open(root / "ray.log", "w") as log:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "tsynd_tf.experiment", *sweep_args(config, ray_dir, 3),
             "--launcher=ray", f"--ray_address={ray_head}", "--cell_cpus=1"],
            stdout=log, stderr=subprocess.STDOUT,
            env=subprocess_env(TSYND_DATA_DIR=str(medmnist_dir), **ray_env))
        try:
            killed_worker = kill_worker_mid_cell(sweep, runs.SweepDir(ray_dir).run(KILLED))
            sweep.wait(timeout=600)
        finally:
            if sweep.poll() is None:
                sweep.kill()
    return {"local": root / "local", "ray": ray_dir, "ray_log": (root / "ray.log").read_text(),
            "ray_exit": sweep.returncode, "killed_worker": killed_worker}


def records(sweep_dir: Path) -> dict[str, dict]:
    lines = runs.SweepDir(sweep_dir).results_file.read_text().splitlines()
    cells = [json.loads(line) for line in lines if "cell" in json.loads(line)]
    by_name = {record["cell"]: record for record in cells}
    assert len(by_name) == len(cells), [record["cell"] for record in cells]  # no duplicate
    return by_name


def test_ray_sweep_records_the_same_cells_as_the_local_launcher(sweeps):
    """Bitwise the same test metrics, the killed and resumed cell's too (a resumed run ends
    as an uninterrupted one)."""
    local, ray = records(sweeps["local"]), records(sweeps["ray"])
    assert sorted(ray) == sorted(local) == ["tiny_baseline_s0", "tiny_baseline_s1"], (
        sweeps["ray_log"][-3000:],
        runs.SweepDir(sweeps["ray"]).log_file(KILLED).read_text()[-3000:])
    for name, record in ray.items():
        test_metrics = {k: v for k, v in record["metrics"].items() if k.startswith("test/")}
        assert len(test_metrics) > 5 and test_metrics == {
            k: v for k, v in local[name]["metrics"].items() if k.startswith("test/")}, name
        assert set(record) == set(local[name])
        assert record["run_dir"] == str(runs.SweepDir(sweeps["ray"]).run(name))
        assert "--launcher=ray" in record["sweep_command"]


def test_a_worker_killed_mid_cell_is_retried_and_its_run_resumes(sweeps):
    """One whole line per finished cell, the killed one's written once, by its retry."""
    assert sweeps["killed_worker"].startswith("ray::"), sweeps["killed_worker"]
    lines = runs.SweepDir(sweeps["ray"]).results_file.read_text().splitlines()
    assert [json.loads(line) for line in lines]  # every line whole: none torn or partial
    assert len(lines) == 1 + 2 and "plan" in json.loads(lines[0])
    log = runs.SweepDir(sweeps["ray"]).log_file(KILLED).read_text()
    assert log.count("-m tsynd_tf.train ") == 2, log[-3000:]  # the first attempt, its retry
    assert "which ended without releasing it" in log  # the dead holder's lock taken over
    assert "Resumed from" in log and log.count("-m tsynd_tf.evaluate ") == 1
    # Its line says so (its seconds count the retry only: the cost table leaves it out).
    assert [r["cell"] for r in records(sweeps["ray"]).values() if r["resumed"]] == [KILLED]


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(sweeps):
    """The cell whose run directory this test held failed (its train refused a directory
    in use, a failure that Ray does not retry); the others finished; exit 1."""
    assert sweeps["ray_exit"] == 1, sweeps["ray_log"][-3000:]
    assert f"{LOCKED}: train failed (exit 2)" in sweeps["ray_log"]
    assert "1 cell(s) failed" in sweeps["ray_log"]
    assert LOCKED not in records(sweeps["ray"])
    log = runs.SweepDir(sweeps["ray"]).log_file(LOCKED).read_text()
    assert log.count("-m tsynd_tf.train ") == 1 and f"is in use by PID {os.getpid()}" in log


def test_sweep_on_its_own_ray_instance_refuses_cells_no_node_can_hold(tmp_path, medmnist_dir,
                                                                       ray_env):
    config = tmp_path / "tiny.cfg"
    config.write_text(TINY_CONFIG)
    output = run_module("tsynd_tf.experiment", *sweep_args(config, tmp_path / "sweep", 1),
                        "--launcher=ray", "--cell_gpus=1", data_dir=medmnist_dir, exit_code=2,
                        **ray_env)
    assert "--cell_cpus=1 --cell_gpus=1: no node of the Ray cluster has that many" in output
    assert "127.0.0.1: " in output  # the instance the sweep started, on the loopback only
    assert fileio.read_json_lines(runs.SweepDir(tmp_path / "sweep").results_file) == []
