"""tf.distribute strategies for training (`--strategy`) and where each worker writes.

  default       no distribution: the current device (one GPU, or the CPU)
  mirrored      synchronous data parallelism over this machine's GPUs (over its logical
                CPU devices when there is no GPU: useful for tests only, slower than default)
  multi_worker  MultiWorkerMirroredStrategy: the same over several machines, configured by
                the TF_CONFIG environment variable of each worker (BUILD.md)
  tpu           TPUStrategy on the TPU named by the environment (untested here)

Models, their optimizers and the latent ascent are built under `strategy.scope()`; `fit`
then splits every global batch across the replicas. Checkpoints hold one value per
variable, so a run saved under one strategy restores under any other.

In multi-worker training every worker runs the same command. Every worker must take part in
every collective op, so all of them train, evaluate, generate and save, but only the chief
writes the run directory: the others write to `<output_dir>/workertemp_<task id>/` (as the
TensorFlow multi-worker guide recommends), and every worker resumes from the chief's
checkpoints (the run directory must be on a file system that all workers share).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import tensorflow as tf

from tsynd_tf.config import STRATEGIES
from tsynd_tf.errors import ConfigError


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called `name`. Create it before any other TensorFlow op of the program:
    MultiWorkerMirroredStrategy and TPUStrategy must configure the runtime first."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # MirroredStrategy() takes only CPU:0 when there is no GPU; take every logical CPU
        # device (tf.config.set_logical_device_configuration makes several).
        return tf.distribute.MirroredStrategy(
            [device.name for device in tf.config.list_logical_devices("CPU")])
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise _unavailable("--strategy=multi_worker needs the TF_CONFIG environment "
                               "variable: the cluster's workers and this worker's index "
                               "(see BUILD.md).")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        patch_keras_for_multi_worker()
        return strategy
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="")
        except ValueError as e:  # no TPU named by the environment, or none attached
            raise _unavailable(f"--strategy=tpu found no TPU on this machine ({e}): run on a "
                               "TPU VM, or use --strategy=default or mirrored.") from None
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}; one of {STRATEGIES}.")


def _unavailable(message: str) -> ConfigError:
    """The error for a strategy this machine cannot make, reported as bad input."""
    return ConfigError(message)


def task(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    """(task type, task id) of this process; (None, 0) outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the worker that writes the run directory: task 'chief', or worker 0 of a
    cluster without one; always True outside multi-worker training."""
    task_type, task_id = task(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type == "worker" and task_id == 0:
        return "chief" not in strategy.cluster_resolver.cluster_spec().as_dict()
    return False


def worker_dir(output_dir: str | Path, strategy: tf.distribute.Strategy) -> Path:
    """Where this worker writes: the run directory itself on the chief, a per-worker folder
    inside it on the others."""
    output_dir = Path(output_dir)
    if is_chief(strategy):
        return output_dir
    _, task_id = task(strategy)
    return output_dir / f"workertemp_{task_id}"


def describe(strategy: tf.distribute.Strategy) -> dict:
    """JSON-able summary for logs and benchmarks."""
    task_type, task_id = task(strategy)
    return {"strategy": type(strategy).__name__,
            "replicas": int(strategy.num_replicas_in_sync),
            "task": None if task_type is None else f"{task_type}:{task_id}",
            "tf_config": json.loads(os.environ["TF_CONFIG"]) if os.environ.get("TF_CONFIG")
            else None}


def patch_keras_for_multi_worker() -> None:
    """Makes Keras 3 `fit` run under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Keras 3.15 `fit` (and `evaluate`) fail under that strategy in two places, both in
    keras/src/backend/tensorflow/trainer.py:
      1. `_maybe_symbolic_build` reduces a whole input batch across workers with
         `strategy.reduce` to learn its shapes; the collective reduce rejects a tuple of
         tensors. Building needs only the shapes: this worker's part of the batch has them.
      2. `reduce_per_replica` averages each step's (scalar) metric results with
         `strategy.reduce("MEAN", v, axis=0)`, which is invalid for a scalar; axis=None
         is the mean over replicas that is meant.
    Both replacements apply only under a multi-worker collective strategy and defer to
    Keras everywhere else. Delete this function once Keras fixes the issue.
    """
    from keras import tree
    from keras.src.backend.tensorflow import trainer as keras_trainer

    if getattr(keras_trainer, "_tsynd_multi_worker_patch", False):
        return
    multi_worker = keras_trainer._collective_all_reduce_multi_worker
    local_part = lambda strategy, value: (  # noqa: E731
        strategy.experimental_local_results(value)[0]
        if isinstance(value, tf.distribute.DistributedValues) else value)

    keras_build = keras_trainer.TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None and multi_worker(strategy):
            for _, _, batches in iterator:
                data_batch = tree.map_structure(lambda v: local_part(strategy, v),
                                                next(batches))
                break
            iterator = None
        return keras_build(self, iterator=iterator, data_batch=data_batch)

    keras_reduce = keras_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not multi_worker(strategy):
            return keras_reduce(values, strategy, reduction)

        def reduce(value):
            if local_part(strategy, value).shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return keras_reduce(value, strategy, reduction)

        return tree.map_structure(reduce, values)

    keras_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    keras_trainer.reduce_per_replica = reduce_per_replica
    keras_trainer._tsynd_multi_worker_patch = True
