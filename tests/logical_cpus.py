"""Runs a module (as `python -m` would) or code (as `python -c`) on N logical CPU devices,
so that MirroredStrategy has N replicas on a machine without GPUs:

  python tests/logical_cpus.py N MODULE [ARGS...]
  python tests/logical_cpus.py N -c CODE

TensorFlow can split the physical CPU into logical devices only before its runtime starts,
hence a fresh process that does that first.
"""

import runpy
import sys

import tensorflow as tf

if __name__ == "__main__":
    count, target = int(sys.argv[1]), sys.argv[2]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    if target == "-c":
        code = sys.argv[3]
        sys.argv = ["-c", *sys.argv[4:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.path[0] = ""  # as `python -m`: the current directory, not this script's
        sys.argv = [target, *sys.argv[3:]]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
