"""Building a run: its process settings, data, models, checkpoint and synthesis method.

`assemble(config, run_dir)` returns the `RunParts` of one training run, restored from its
checkpoint; the Trainer (training.py) schedules them, finishing.py evaluates them, train.py
exports them and bench/ measures them. Nothing here trains.

The order of building is part of the contract: the autoencoder is built before the
classifier whatever the method, so that the classifier starts from the same initial weights
for every method at a seed (a paired comparison).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import logging as absl_logging
from tensorboard.plugins.hparams import api as hparams_api

from tsynd_tf import callbacks, data, distribute, models, synthesis, uncertainty
from tsynd_tf.checkpointing import RunCheckpoint
from tsynd_tf.config import TrainConfig
from tsynd_tf.runs import RunDir

log = logging.getLogger(__name__)


def quiet_tensorflow_logs() -> None:
    """TensorFlow logs every checkpoint write at INFO through absl's logger: raise absl's
    threshold to WARNING and keep INFO for this package's own (std logging) logger."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("tsynd_tf").setLevel(logging.INFO)


def set_precision(mixed_precision: str) -> str:
    """'auto' is mixed_float16 on a GPU and float32 on a CPU (where float16 is 4-7x slower)."""
    policy = mixed_precision
    if policy == "auto":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


def build_classifier(config: TrainConfig, info: data.DatasetInfo, channels: int):
    """The MC-dropout classifier, compiled with its loss and Adam."""
    classifier = models.build_classifier(config.classifier, info.size, channels,
                                         info.num_classes, config.dropout_rate)
    loss = (keras.losses.BinaryCrossentropy(from_logits=True) if info.multilabel else
            keras.losses.CategoricalCrossentropy(from_logits=True))
    classifier.compile(keras.optimizers.Adam(config.learning_rate), loss,
                       jit_compile=config.jit_compile)
    return classifier


class BatchedInference:
    """model(images, training=False) in batches, on this worker's device (Services.infer).

    Unlike `predict`, this never distributes the batches, so in multi-worker training
    every worker computes the whole result itself (encoder and decoder are deterministic:
    all workers get the same).
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._steps = {}

    def __call__(self, model: keras.Model, images: np.ndarray) -> np.ndarray:
        if model.name not in self._steps:
            self._steps[model.name] = tf.function(lambda x: model(x, training=False),
                                                  reduce_retracing=True)
        step = self._steps[model.name]
        batches = uncertainty.without_autotuning(
            tf.data.Dataset.from_tensor_slices(images).batch(self.batch_size))
        return np.concatenate([step(batch).numpy() for batch in batches], axis=0)


@dataclasses.dataclass
class RunParts:
    """Everything a run is made of; `close()` releases its run directory (see assemble)."""
    config: TrainConfig
    strategy: tf.distribute.Strategy
    is_chief: bool
    chief_dir: RunDir  # where the run is recorded and resumed from
    run_dir: RunDir  # where this worker writes (the chief's own: chief_dir)
    policy: str  # the Keras dtype policy in force
    verbose: int
    writer: object  # tf.summary writer
    dataset: data.Dataset
    fingerprint: dict
    labelled: np.ndarray  # the labelled images' indices in the training split
    real: data.Split  # those images
    steps_per_epoch: int
    eval_batch_size: int
    val_batches: tf.data.Dataset
    real_batches: tf.data.Dataset  # the labelled images, unshuffled (precise BatchNorm)
    pool_size: int  # synthetic images per round
    encoder: keras.Model
    decoder: keras.Model
    autoencoder: keras.Model
    classifier: keras.Model
    checkpoint: RunCheckpoint
    infer: BatchedInference
    method: synthesis.SynthesisMethod = None
    held: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    def callbacks(self, stage: str, batch_norm_batches=None) -> list[keras.callbacks.Callback]:
        """The ordered per-epoch work of a stage (callbacks.py); a classifier stage
        recomputes BatchNorm statistics on `batch_norm_batches` (default: the labelled
        images)."""
        counter = self.checkpoint.epoch(stage)
        if batch_norm_batches is None:
            batch_norm_batches = self.real_batches
        if stage == "autoencoder":
            return [callbacks.EpochCounter(counter),
                    callbacks.Summaries(self.writer, prefix="ae_"),
                    callbacks.Checkpoint(self.checkpoint.manager)]
        return [callbacks.EpochCounter(counter),
                callbacks.PreciseBatchNorm(batch_norm_batches),
                callbacks.MCValidation(self.dataset.val, self.val_batches, self.dataset.info,
                                       self.config.num_samples, self.config.seed),
                callbacks.Summaries(self.writer),
                callbacks.KeepBest(self.run_dir, self.checkpoint.best_val_auc),
                callbacks.Checkpoint(self.checkpoint.manager)]

    def close(self) -> None:
        self.held.close()

    def __enter__(self) -> RunParts:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def assemble(config: TrainConfig, run_dir: RunDir, lock: bool = False) -> RunParts:
    """The parts of the run `config` in `run_dir`, restored from its checkpoint. With
    `lock` (the train command) this process holds its run directory (RunDir.lock) until
    `close()`, or the end of a `with assemble(...)` block; a failed start leaves no empty
    run directory behind."""
    synthesis.check_config(config)
    # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime.
    strategy = distribute.make_strategy(config.strategy)
    is_chief = distribute.is_chief(strategy)
    # In multi-worker training the chief writes the run directory and the other workers
    # their own folder inside it, but all resume from the chief's files.
    own_dir = run_dir if is_chief else run_dir.worker(distribute.task(strategy)[1])
    held = contextlib.ExitStack()
    if lock:
        held.enter_context(own_dir.lock())
    try:
        return _assemble(config, strategy, is_chief, run_dir, own_dir, held)
    except BaseException:
        held.close()
        raise


def _assemble(config, strategy, is_chief, chief_dir, own_dir, held) -> RunParts:
    own_dir.path.mkdir(parents=True, exist_ok=True)
    quiet_tensorflow_logs()
    verbose = config.verbose if config.verbose >= 0 else (1 if sys.stdout.isatty() else 2)
    policy = set_precision(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    dataset, labelled_data = _load_data(config, own_dir)
    if strategy.num_replicas_in_sync > 1 or not is_chief:
        log.info("Distributed: %s.", distribute.describe(strategy))
    channels = dataset.train.images.shape[-1]
    with strategy.scope():
        encoder, decoder, autoencoder = models.build_autoencoder(
            dataset.info.size, channels, config.latent_channels, config.ae_width)
        autoencoder.compile(keras.optimizers.Adam(config.ae_learning_rate), "mse",
                            metrics=[models.psnr, models.ssim], jit_compile=config.jit_compile)
        classifier = build_classifier(config, dataset.info, channels)
        # Optimizer slots must exist before a restore can fill them.
        for model in (autoencoder, classifier):
            model.optimizer.build(model.trainable_variables)
    parts = RunParts(
        config=config, strategy=strategy, is_chief=is_chief, chief_dir=chief_dir,
        run_dir=own_dir, policy=policy, verbose=verbose,
        writer=tf.summary.create_file_writer(str(own_dir.tensorboard)), dataset=dataset,
        **labelled_data, encoder=encoder, decoder=decoder, autoencoder=autoencoder,
        classifier=classifier, checkpoint=RunCheckpoint(autoencoder, classifier, own_dir),
        infer=BatchedInference(labelled_data["eval_batch_size"]), held=held)
    with strategy.scope():
        parts.method = synthesis.create(config.method, _context(parts),
                                        (encoder, decoder, autoencoder))
    parts.checkpoint.restore(chief_dir)
    with parts.writer.as_default():
        hparams_api.hparams({k: v for k, v in config.to_dict().items()
                             if isinstance(v, (bool, int, float, str))})
    return parts


def _load_data(config: TrainConfig, run_dir: RunDir) -> tuple[data.Dataset, dict]:
    """The dataset (checked against, then recorded in, the run directory) and the
    RunParts fields of its labelled subset and fixed pipelines."""
    dataset = data.load_configured(config)
    fingerprint = data.fingerprint(dataset)
    labelled = data.subsample_indices(
        dataset.train.targets, fraction=None if config.train_count else config.train_fraction,
        count=config.train_count or None, seed=config.seed, multilabel=dataset.info.multilabel)
    run_dir.record_start(config, dataset, fingerprint, labelled.tolist())
    real = dataset.train.subset(labelled)
    # Inference batches shrink for large images (uncertainty.MAX_VALUES_PER_CALL); MC
    # calls split them further by T.
    eval_batch_size = uncertainty.images_per_call(config.eval_batch_size,
                                                  real.images.shape[1:], num_samples=1)
    return dataset, dict(
        fingerprint=fingerprint, labelled=labelled, real=real,
        steps_per_epoch=config.steps_per_epoch or math.ceil(len(real) / config.batch_size),
        eval_batch_size=eval_batch_size,
        val_batches=data.make_pipeline(dataset.val.images, dataset.val.targets,
                                       eval_batch_size),
        real_batches=uncertainty.without_autotuning(  # precise BN iterates it
            data.make_pipeline(real.images, None, eval_batch_size)),
        pool_size=(max(1, round(config.synthetic_multiple * len(real) / config.rounds))
                   if config.rounds else 0))


def _context(parts: RunParts) -> synthesis.Context:
    """What the synthesis method may use of the run (synthesis.base.Context)."""
    return synthesis.Context(
        config=parts.config, info=parts.dataset.info, strategy=parts.strategy,
        writer=parts.writer, verbose=parts.verbose, eval_batch_size=parts.eval_batch_size,
        labelled_indices=parts.labelled, data_fingerprint=parts.fingerprint["sha256"],
        val_images=parts.dataset.val.images, pool_size=parts.pool_size, run_dir=parts.run_dir,
        services=synthesis.Services(infer=parts.infer, callbacks=parts.callbacks,
                                    epoch=parts.checkpoint.epoch))
