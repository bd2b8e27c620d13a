"""The machine a bench ran on, for every bench's JSON and table heading, and how a bench
writes its result (no flags here, so any bench module can import it)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

from tsynd_tf.machine import cpu_model, instruction_set


def git_revision() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def device_info(parts) -> dict:
    import keras
    import tensorflow as tf

    from tsynd_tf import distribute

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "instruction_set": instruction_set(), "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                 for g in gpus],
        "python": platform.python_version(), "tensorflow": tf.__version__,
        "keras": keras.__version__, "mixed_precision": parts.policy,
        "jit_compile": bool(parts.config.jit_compile), **distribute.describe(parts.strategy),
        "intra_op_threads_env": os.environ.get("TF_NUM_INTRAOP_THREADS"),
        "onednn_opts_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "git": git_revision(),
    }


def machine_label(d: dict) -> str:
    """'<cpu> (<n> cores)[, GPU ...]; TF <v>, Keras <v>; <date>' of a device_info dict: the
    end of every bench table's heading."""
    return (f"{d['cpu']}, {d.get('instruction_set', '?')} ({d['cpu_cores_usable']} cores)"
            + (f", GPU {', '.join(d['gpus'])}" if d["gpus"] else "") +
            f"; TF {d['tensorflow']}, Keras {d['keras']}; {d['date'][:10]}")


def write_result(output: Path, result: dict, table: str) -> None:
    """The result JSON at `output` and its Markdown table beside it (.md), each written
    atomically; prints the table."""
    from tsynd_tf.fileio import atomic_path

    with atomic_path(output) as path:
        path.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(output.with_suffix(".md")) as path:
        path.write_text(table)
    print(table)
