"""Where a sweep's cells run: a process pool on this machine, or Ray tasks on a cluster.

  local  `LocalLauncher(workers)`: --workers cells at a time on this machine, each given
         cores / workers threads. The default; nothing to install.
  ray    `RayLauncher(address, cpus, gpus)`: one Ray task per cell declaring --cell_cpus CPUs
         (also its threads) and --cell_gpus GPUs (Ray hands the task its GPUs through
         CUDA_VISIBLE_DEVICES, which the cell's processes inherit), on the cluster at
         --ray_address or on a Ray instance this sweep starts on 127.0.0.1. Ray runs as many
         cells at once as the nodes' resources hold. Ray is an optional dependency
         (`pip install -e '.[ray]'`; BUILD.md).

Both run `experiment.run_cell` and yield each cell's name with its result line, or with the
RuntimeError it failed with: the sweep, in the driver process, alone appends to
results.jsonl, and a failed cell is counted there and does not stop the others. Ray retries
a task whose worker process or node was lost (RETRIES times); the retried cell's train
resumes from the checkpoint in its run directory. The lost train process died with its
worker (`die_with_parent`), which released its flock on train.lock, so the
retry's train takes the lock over (runs.RunDir.lock). A cell that fails on its own (a
RuntimeError) is not retried: it fails once, as under the local launcher. Ray sends
`run_cell` to its workers by value (the sweep runs as __main__); they import the rest of
tsynd_tf, and run train and evaluate, from their node's install.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import sys
from typing import Callable, Iterator

from tsynd_tf import cli

LAUNCHERS = ("local", "ray")
RAY_INSTALL = "pip install -e '.[ray]' (or make install-ray)"
RETRIES = 3  # attempts after a lost worker or node, per cell
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# Environment variables of the driver that its cells read (the data and cache folders),
# forwarded to Ray workers, whose own environment is that of their node's `ray start`.
FORWARDED_PREFIX = "TSYND_"

Outcome = tuple[str, "dict | RuntimeError"]


def die_with_parent():
    """A preexec_fn for the cells' processes (and compare's sweep): on Linux the kernel
    SIGKILLs the child when the thread that started it ends, the parent's death (kill -9
    included) with it, so no training outlives the command that started it. None
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()  # before the fork
    pr_set_pdeathsig = 1

    def preexec():
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took hold
            os._exit(1)

    return preexec


class LocalLauncher:
    """`workers` cells at a time in threads of this process, each running its subprocesses."""

    def __init__(self, workers: int):
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)

    def __enter__(self) -> "LocalLauncher":
        return self

    def __exit__(self, *exc_info) -> None:
        """Nothing to disconnect from (the pool ends with `results`)."""

    def describe(self) -> str:
        return f"{self.workers} at a time"

    def results(self, run: Callable, cells: dict[str, tuple], settings) -> Iterator[Outcome]:
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            futures = {pool.submit(run, cell, settings): name for name, cell in cells.items()}
            for future in concurrent.futures.as_completed(futures):
                try:
                    yield futures[future], future.result()
                except RuntimeError as e:
                    yield futures[future], e


def import_ray():
    """The ray module, or a UsageError naming the install command."""
    try:
        import ray
    except ImportError as e:
        raise cli.UsageError(f"--launcher=ray needs Ray, an optional dependency that is not "
                             f"installed ({e}): {RAY_INSTALL}; see BUILD.md.") from None
    return ray


class RayLauncher:
    """One Ray task per cell. An address that accepts no connection, and a missing Ray, are
    UsageErrors on construction. Connects on entering (an existing cluster at `address`, or
    a new local instance when it is empty) and disconnects on exit, which stops a local
    instance; a cell whose resources no node has is a UsageError there, before any cell."""

    def __init__(self, address: str, cpus: int, gpus: float):
        self.address, self.cpus, self.gpus = address, cpus, gpus
        self.threads = cpus
        if not address or address.rsplit(":", 1)[0] in LOOPBACK_HOSTS:
            # The sweep's own instance, or a one-machine cluster on the loopback: Ray turns
            # 127.0.0.1 into the machine's address (for other nodes to reach) unless this
            # setting, read when ray is imported, says clusters are off.
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        self.check_reachable()
        self.ray = import_ray()

    def __enter__(self) -> "RayLauncher":
        import logging

        env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}
        local = {} if self.address else {"_node_ip_address": "127.0.0.1"}
        try:
            self.ray.init(address=self.address or "local", include_dashboard=False,
                          logging_level=logging.WARNING, runtime_env={"env_vars": env_vars},
                          **local)
        except ConnectionError as e:
            raise cli.UsageError(
                f"--ray_address={self.address}: no Ray cluster could be joined ({e}). Is it "
                "running (`ray status`)? Run the sweep on a node of the cluster; a cluster "
                "with token authentication needs RAY_AUTH_MODE=token here and its token "
                "(BUILD.md).") from None
        try:
            self.check_resources()
        except BaseException:
            self.ray.shutdown()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.ray.shutdown()

    def describe(self) -> str:
        return (f"on Ray at {self.address or 'a local instance'}, {self.cpus} CPU(s) and "
                f"{self.gpus:g} GPU(s) each")

    def check_reachable(self) -> None:
        """A host:port address must accept a connection: ray.init would retry one that does
        not for many minutes."""
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            return  # "auto" (Ray looks for the cluster of this node), or empty
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as e:
            raise cli.UsageError(
                f"--ray_address={self.address}: nothing accepts connections there ({e}). Start "
                f"the head with `ray start --head --port={port}`, or pass --ray_address=auto "
                "on a node of the cluster.") from None

    def check_resources(self) -> None:
        nodes = {node["NodeManagerAddress"]: node["Resources"] for node in self.ray.nodes()
                 if node["Alive"]}
        if not any(node.get("CPU", 0) >= self.cpus and node.get("GPU", 0) >= self.gpus
                   for node in nodes.values()):
            have = ", ".join(f"{address}: {n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU"
                             for address, n in nodes.items())
            raise cli.UsageError(
                f"--cell_cpus={self.cpus} --cell_gpus={self.gpus:g}: no node of the Ray "
                f"cluster has that many (its nodes: {have or 'none'}); lower them, or add a "
                "node with `ray start --address=<head>:6379` (BUILD.md).")

    def results(self, run: Callable, cells: dict[str, tuple], settings) -> Iterator[Outcome]:
        task = self.ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=RETRIES,
                               retry_exceptions=False)(run)
        pending = {task.options(name=name).remote(cell, settings): name
                   for name, cell in cells.items()}
        while pending:
            [ready], _ = self.ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready)
            yield name, self.outcome(name, ready)

    def outcome(self, name: str, ref) -> dict | RuntimeError:
        """The cell's result line, or the RuntimeError it failed with. Another exception
        raised by the cell is a bug, raised here as under the local launcher."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.RayTaskError as e:
            if isinstance(e.cause, RuntimeError):
                return e.cause
            raise e.cause from None
        except exceptions.RayError as e:  # its worker or node lost RETRIES + 1 times, ...
            first_line = (str(e).strip().splitlines() or [""])[0]
            return RuntimeError(f"{name}: Ray could not finish it after {RETRIES} retries "
                                f"({type(e).__name__}: {first_line})")
