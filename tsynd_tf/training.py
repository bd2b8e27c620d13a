"""The training schedule: the synthesis method's generator, the classifier on real data,
then R rounds of (a synthetic pool from the method, continued training on real + synthetic).

`Trainer(config, run_dir)` only schedules. The per-epoch work is in callbacks.py, the input
pipelines in data/pipeline.py, the ways of making synthetic images in synthesis/, and every
file of the run directory in runs.py.

Every stage is resumable. A `tf.train.CheckpointManager` saves the autoencoder, classifier,
both optimizers (with their step counts), the epoch counters and MC dropout's seed state
after every epoch; each round's synthetic pool is an .npz written atomically before training
uses it. A restarted run restores the checkpoint and skips what is finished: an epoch is never
trained twice and a pool never generated twice. It is also the same run: a stage re-enters
its batch stream at the resumed epoch, and a pool read back restores the dropout state its
generation left, so on CPU a killed and resumed run ends bitwise equal to an uninterrupted one.

All methods train with the same batch size and number of steps per epoch, so they differ
only in what the batches hold: `baseline` real images only; the others a fixed share
(`synthetic_ratio`) of synthetic images from every pool generated so far, the pools together
`synthetic_multiple` times the labelled images. With `--train_on=synthetic` every pool is
made first and every batch is synthetic (the Classification Accuracy Score). The quality of
the pools is measured when training ends (tsynd_tf.reference), after the classifier's last
step, so measuring never changes what a run trains.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging as absl_logging
from tensorboard.plugins.hparams import api as hparams_api

from tsynd_tf import callbacks, data, distribute, models, synthesis, uncertainty
from tsynd_tf.config import TrainConfig
from tsynd_tf.data.pipeline import classifier_batches, for_fit
from tsynd_tf.runs import RunDir, RunDirError

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


def joined(pools: list) -> data.Split:
    """The images and targets of several pools (data.Split each) as one Split."""
    return data.Split(np.concatenate([p.images for p in pools]),
                      np.concatenate([p.targets for p in pools]))


class Trainer:
    """One run: its data, models, synthesis method, checkpoint and summary writer."""

    def __init__(self, config: TrainConfig, run_dir: RunDir, lock: bool = False):
        """With `lock` (the train command) this process holds its run directory
        (RunDir.lock) until `close()`, or the end of a `with Trainer(...)` block."""
        self.config = config
        # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime.
        self.strategy = distribute.make_strategy(config.strategy)
        self.is_chief = distribute.is_chief(self.strategy)
        # In multi-worker training the chief writes the run directory and the other workers
        # their own folder inside it, but all resume from the chief's files.
        self.chief_dir = run_dir
        self.run_dir = (run_dir if self.is_chief else
                        run_dir.worker(distribute.task(self.strategy)[1]))
        self._held = contextlib.ExitStack()
        if lock:
            self._held.enter_context(self.run_dir.lock())
        try:
            self.set_up()
        except BaseException:
            self.close()  # a failed start leaves no empty run directory behind
            raise

    def set_up(self) -> None:
        config = self.config
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        quiet_tensorflow_logs()
        self.verbose = config.verbose if config.verbose >= 0 else (1 if sys.stdout.isatty() else 2)
        self.policy = set_precision(config.mixed_precision)
        keras.utils.set_random_seed(config.seed)
        self.load_data()
        if self.strategy.num_replicas_in_sync > 1 or not self.is_chief:
            log.info("Distributed: %s.", distribute.describe(self.strategy))
        self.writer = tf.summary.create_file_writer(str(self.run_dir.tensorboard))
        self._inference = {}
        self.finished_before = False  # set by run() when the run had finished already
        self.stage_seconds = {}  # this session's seconds per stage (`timed`), in results
        # Checkpointed progress (plain variables, outside the strategy's scope).
        self.ae_epoch = tf.Variable(0, dtype=tf.int64, name="ae_epoch")
        self.classifier_epoch = tf.Variable(0, dtype=tf.int64, name="classifier_epoch")
        self.best_val_auc = tf.Variable(-1.0, dtype=tf.float64, name="best_val_auc")
        with self.strategy.scope():
            self.build_models()
        self.restore()
        with self.writer.as_default():
            hparams_api.hparams({k: v for k, v in config.to_dict().items()
                                 if isinstance(v, (bool, int, float, str))})

    def close(self) -> None:
        """Releases the run directory (see `lock`)."""
        self._held.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def load_data(self) -> None:
        """The dataset, the recorded config and labelled subset, and the fixed pipelines."""
        config = self.config
        self.dataset = data.load_dataset(config.dataset, config.size, config.data_dir,
                                         config.channels, config.val_fraction, config.seed,
                                         config.group_pattern)
        info = self.dataset.info
        self.fingerprint = fingerprint = data.fingerprint(self.dataset)
        recorded = self.run_dir.read_flags()
        if recorded is not None:
            config.check_resumable(recorded, self.run_dir.path)
            data.check_same_data(self.run_dir.read_fingerprint(), fingerprint, self.run_dir,
                                 fix="Pass the --data_dir of the data it was trained on to "
                                     "resume it, or another --output_dir for a new run.")
        self.run_dir.write_config(config.to_dict(), info, fingerprint)
        if self.dataset.files:  # an image folder: which file went where, auditable
            files = self.dataset.files
            self.run_dir.write_split({
                "group_pattern": config.group_pattern, **files, "shared_train_val_groups":
                sorted(data.shared_groups(files["train"], files["val"], config.group_pattern))})
        self.labelled = data.subsample_indices(
            self.dataset.train.targets,
            fraction=None if config.train_count else config.train_fraction,
            count=config.train_count or None, seed=config.seed, multilabel=info.multilabel)
        self.run_dir.write_subset({
            "dataset": info.name, "size": info.size, "seed": config.seed,
            "train_fraction": config.train_fraction, "train_count": config.train_count,
            "num_train": len(self.dataset.train), "indices": self.labelled.tolist()})
        self.real = self.dataset.train.subset(self.labelled)
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(len(self.real) /
                                                                   config.batch_size)
        # Inference batches shrink for large images (uncertainty.MAX_VALUES_PER_CALL); MC
        # calls split them further by T.
        self.eval_batch_size = uncertainty.images_per_call(
            config.eval_batch_size, self.real.images.shape[1:], num_samples=1)
        self.val_ds = data.make_pipeline(self.dataset.val.images, self.dataset.val.targets,
                                         self.eval_batch_size)
        self.real_images = uncertainty.without_autotuning(  # precise BN iterates it
            data.make_pipeline(self.real.images, None, self.eval_batch_size))
        self.pool_size = (max(1, round(config.synthetic_multiple * len(self.real) /
                                       config.rounds)) if config.rounds else 0)
        self.batch_norm_images = self.real_images  # the training images' BN statistics

    def build_models(self) -> None:
        """Under the strategy's scope: the autoencoder, then the classifier (so it starts
        from the same weights for every method at a seed), then the synthesis method."""
        config, info = self.config, self.dataset.info
        channels = self.dataset.train.images.shape[-1]
        self.encoder, self.decoder, self.autoencoder = models.build_autoencoder(
            info.size, channels, config.latent_channels, config.ae_width)
        self.autoencoder.compile(keras.optimizers.Adam(config.ae_learning_rate), "mse",
                                    metrics=[models.psnr, models.ssim],
                                    jit_compile=config.jit_compile)
        self.classifier = build_classifier(config, info, channels)
        # Optimizer slots must exist before a restore can fill them.
        for model in (self.autoencoder, self.classifier):
            model.optimizer.build(model.trainable_variables)
        self.method = synthesis.create(config.method, synthesis.Context(
            config=config, info=info, strategy=self.strategy, writer=self.writer,
            verbose=self.verbose, eval_batch_size=self.eval_batch_size,
            autoencoder=(self.encoder, self.decoder, self.autoencoder), ae_epoch=self.ae_epoch,
            labelled_indices=self.labelled, val_images=self.dataset.val.images,
            data_fingerprint=self.fingerprint["sha256"],
            infer=self.infer, stage_callbacks=self.stage_callbacks, run_dir=self.run_dir))

    def restore(self) -> None:
        """The checkpoint: written after every epoch, restored from the chief's directory
        (every worker starts from the same state; it restores under any strategy). A
        damaged newest checkpoint is named in a warning and the one before it (the manager
        keeps 2) restored: the run then trains the lost epoch again, to the same result."""
        state = dict(
            autoencoder=self.autoencoder, ae_optimizer=self.autoencoder.optimizer,
            classifier=self.classifier, optimizer=self.classifier.optimizer,
            ae_epoch=self.ae_epoch, classifier_epoch=self.classifier_epoch,
            best_val_auc=self.best_val_auc)
        self.dropout_states = models.seed_generator_states(self.classifier)
        self.checkpoint = tf.train.Checkpoint(**state, dropout_seed_states=self.dropout_states)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.run_dir.checkpoints,
                                                  max_to_keep=2)
        damaged = []
        for path in self.chief_dir.saved_checkpoints():
            try:
                self.restore_from(path, state)
            except (tf.errors.OpError, IndexError, ValueError) as e:
                damaged.append(path)
                log.warning("Checkpoint %s is damaged (%s: %s); trying the one before it.",
                            ", ".join(sorted(RunDir.checkpoint_files(path))), type(e).__name__,
                            str(e).splitlines()[0] if str(e) else "")
                continue
            log.info("Resumed from %s (autoencoder epoch %d, classifier epoch %d).",
                     path, int(self.ae_epoch), int(self.classifier_epoch))
            return
        if damaged:
            raise RunDirError(
                f"No checkpoint in {self.chief_dir.checkpoints} can be read: "
                f"{', '.join(f for p in damaged for f in sorted(RunDir.checkpoint_files(p)))} are "
                "damaged. The run cannot resume: move the run directory away and train "
                "again, or pass another --output_dir.")

    def restore_from(self, path: str, state: dict) -> None:
        has_seeds = any(name.startswith("dropout_seed_states/")
                        for name, _ in tf.train.list_variables(path))
        if not has_seeds:
            log.warning("%s was written by an older tsynd-tf, without dropout seeds: the run "
                        "resumes, drawing other dropout masks than an uninterrupted run "
                        "would.", path)
        (self.checkpoint if has_seeds else tf.train.Checkpoint(**state)).restore(
            path).assert_existing_objects_matched()

    def stage_callbacks(self, stage: str) -> list[keras.callbacks.Callback]:
        """The ordered per-epoch work of a stage (callbacks.py)."""
        if stage == "autoencoder":
            return [callbacks.EpochCounter(self.ae_epoch),
                    callbacks.Summaries(self.writer, prefix="ae_"),
                    callbacks.Checkpoint(self.manager)]
        return [callbacks.EpochCounter(self.classifier_epoch),
                callbacks.PreciseBatchNorm(self.batch_norm_images),
                callbacks.MCValidation(self.dataset.val, self.val_ds, self.dataset.info,
                                       self.config.num_samples, self.config.seed),
                callbacks.Summaries(self.writer),
                callbacks.KeepBest(self.run_dir, self.best_val_auc),
                callbacks.Checkpoint(self.manager)]

    @contextlib.contextmanager
    def timed(self, stage: str):
        """Adds the block's seconds to `stage` (generator, classifier, synthesis,
        evaluation, pool_quality): results' seconds/... keys say where a run's time went."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] = (self.stage_seconds.get(stage, 0.0) +
                                         time.perf_counter() - start)

    def infer(self, model: keras.Model, images: np.ndarray) -> np.ndarray:
        """model(images, training=False) in batches, on this worker's device.

        Unlike `predict`, this never distributes the batches, so in multi-worker training
        every worker computes the whole result itself (encoder and decoder are
        deterministic: all workers get the same).
        """
        if model.name not in self._inference:
            self._inference[model.name] = tf.function(lambda x: model(x, training=False),
                                                      reduce_retracing=True)
        step = self._inference[model.name]
        batches = uncertainty.without_autotuning(
            tf.data.Dataset.from_tensor_slices(images).batch(self.eval_batch_size))
        return np.concatenate([step(batch).numpy() for batch in batches], axis=0)

    # ------------------------------------------------------------------ the schedule

    def stage_start(self, round_index: int) -> int:
        """First classifier epoch of a round, after the initial real-only epochs."""
        return self.config.initial_epochs + round_index * self.config.epochs_per_round

    def train_classifier(self, first: int, until_epoch: int, synthetic: data.Split | None,
                         synthetic_only: bool = False) -> None:
        """Trains the stage of epochs [first, until_epoch), from where it stopped, on real
        images (and `synthetic` ones in the configured share), or on `synthetic` only."""
        start = int(self.classifier_epoch)
        if start >= until_epoch:
            return
        real, synthetic = (synthetic, None) if synthetic_only else (self.real, synthetic)
        # One batch stream per stage, seeded by the stage; a resumed stage re-enters it.
        batches = for_fit(classifier_batches(real, synthetic, self.config,
                                             seed=self.config.seed * 1000 + first,
                                             replicas=self.strategy.num_replicas_in_sync)
                          .skip((start - first) * self.steps_per_epoch))
        with self.timed("classifier"):
            self.classifier.fit(batches, epochs=until_epoch, initial_epoch=start,
                                steps_per_epoch=self.steps_per_epoch, verbose=self.verbose,
                                callbacks=self.stage_callbacks("classifier"), shuffle=False)

    def pool(self, round_index: int) -> data.Split:
        """The round's synthetic images, made once by the method and then read back from
        disk (from the chief's run directory: in multi-worker training all workers read
        the same)."""
        done = self.chief_dir.read_pool(round_index)
        if done is not None:
            # Resuming right after this pool's generation: continue from the dropout state
            # it left (the checkpoint predates it).
            if (int(self.classifier_epoch) == self.stage_start(round_index) and
                    "dropout_seed_states" in done):
                for variable, value in zip(self.dropout_states, done["dropout_seed_states"]):
                    variable.assign(value)
            return data.Split(done["images"], done["targets"])
        with self.timed("synthesis"):
            pool = self.method.pool(round_index, self.classifier, self.pool_size)
        self.run_dir.write_pool(
            round_index, images=pool.images, targets=pool.targets, **pool.diagnostics,
            dropout_seed_states=np.asarray([v.numpy() for v in self.dropout_states]))
        return pool.as_split()

    def run(self) -> dict:
        """Trains what is left and finishes; a run that had finished already is neither
        trained nor evaluated again: its recorded results are returned."""
        recorded = self.recorded_results()
        if recorded is not None:
            return recorded
        config, start = self.config, time.time()
        with self.timed("generator"):
            self.method.fit(self.real, self.dataset.train)
        if self.method.generator_record is not None:
            self.run_dir.write_generator(self.method.generator_record)
        if config.train_on == "synthetic":
            synthetic = joined([self.pool(r) for r in range(config.rounds)])
            self.batch_norm_images = uncertainty.without_autotuning(
                data.make_pipeline(synthetic.images, None, self.eval_batch_size))
            self.train_classifier(0, self.stage_start(config.rounds), synthetic,
                                  synthetic_only=True)
            return self.finish(time.time() - start)
        self.train_classifier(0, self.stage_start(0), synthetic=None)
        pools = []
        for round_index in range(config.rounds):
            if self.method.makes_images:
                pools.append(self.pool(round_index))
            self.train_classifier(self.stage_start(round_index),
                                  self.stage_start(round_index + 1),
                                  joined(pools) if pools else None)
        return self.finish(time.time() - start)

    def recorded_results(self) -> dict | None:
        """results.json of a run whose checkpoint is at its last epoch, with the selected
        classifier loaded (for export); None when there is training or finishing left."""
        results = self.chief_dir.read_results()
        if results is None or int(self.classifier_epoch) < self.stage_start(self.config.rounds):
            return None
        self.finished_before = True
        self.classifier.load_weights(self.run_dir.best_weights)
        log.info("%s finished before: nothing is trained or evaluated again (delete %s to "
                 "evaluate it again).", self.chief_dir, self.chief_dir.results_file.name)
        return results

    def finish(self, seconds: float) -> dict:
        """Both views of the method: the classifier at the end of training and the
        best-on-validation one (the headline), each saved and evaluated; results written."""
        self.run_dir.save_classifier(self.classifier, last=True)
        last = self.test_and_val()  # seeded: leaves the dropout state as it was
        self.classifier.load_weights(self.run_dir.best_weights)
        self.run_dir.save_classifier(self.classifier)
        results = self.test_and_val()
        results.update({f"last/{k}": v for k, v in last.items()})
        pool_size = self.pool_size if self.method.makes_images else 0
        selection = self.run_dir.read_selection() or {}
        results.update({"num_labelled": len(self.real), "method": self.config.method,
                        "classifier_epochs": int(self.classifier_epoch),
                        "selected_epoch": selection.get("epoch"),
                        "pool_size": pool_size, "seconds_this_session": seconds,
                        "precision": self.policy,
                        "num_synthetic": pool_size * self.config.rounds})
        generator = self.method.generator_record
        if generator is not None:  # its training time, whichever run paid it
            results.update({"generator_seconds": generator["seconds"],
                            "generator_loaded": generator["loaded"]})
        if pool_size and self.config.pool_quality and self.is_chief:
            with self.timed("pool_quality"):
                results.update(self.measure_pools())
        results.update({f"seconds/{stage}": seconds
                        for stage, seconds in sorted(self.stage_seconds.items())})
        with self.writer.as_default(step=int(self.classifier_epoch)):
            for key, value in results.items():
                if key.startswith(("test/", "last/test/")):
                    tf.summary.scalar(key, value)
        self.writer.flush()
        self.run_dir.write_results(results)
        return results

    def measure_pools(self) -> dict:
        """Quality of each pool, of all of them, and of the real labelled images (the floor
        a generator is read against), against the training split (reference.PoolQuality):
        written to the run directory and TensorBoard; all pools' as quality/... results."""
        from tsynd_tf import reference

        meter = reference.PoolQuality(self.dataset, self.config.cache_dir,
                                      self.eval_batch_size)
        pools = [self.chief_dir.read_pool(r) for r in range(self.config.rounds)]
        # Next to a targeted pool's quality, the MI its images had under the classifier
        # that targeted them (its diagnostics): what the targeting traded realism for.
        rounds = [{**meter.measure(data.Split(p["images"], p["targets"])),
                   **({"mean_mi": float(p["mutual_information"].mean())}
                      if "mutual_information" in p else {})} for p in pools]
        every = meter.measure(joined([data.Split(p["images"], p["targets"]) for p in pools]))
        self.run_dir.write_quality({"reference": meter.record, "labelled":
                                    meter.measure(self.real), "rounds": rounds, "all": every})
        with self.writer.as_default():
            for round_index, measured in enumerate(rounds):
                for key, value in measured.items():
                    tf.summary.scalar(f"quality/{key}", value, step=round_index)
        log.info("Pool quality (all %d synthetic images): %s.", every["num_images"],
                 ", ".join(f"{k} {v:.4g}" for k, v in every.items() if k != "num_images"))
        return {f"quality/{key}": value for key, value in every.items()}

    def test_and_val(self) -> dict:
        """MC metrics of the classifier as it is, keyed test/... and val/..."""
        info, num_samples, seed = self.dataset.info, self.config.num_samples, self.config.seed
        results = {}
        with self.timed("evaluation"):
            for name, split, batches in (
                    ("test", self.dataset.test, data.make_pipeline(
                        self.dataset.test.images, self.dataset.test.targets,
                        self.eval_batch_size)),
                    ("val", self.dataset.val, self.val_ds)):
                metrics = callbacks.mc_metrics(self.classifier, split, batches, info,
                                               num_samples, seed)
                results.update({f"{name}/{k}": v for k, v in metrics.items()})
        return results

    def export(self, export_dir: str, name: str):
        """SavedModel of the best classifier, its OOD score fitted on the labelled images,
        MI and OOD thresholds chosen on validation (serving.export_trained). A run that had
        finished before reuses its export, if it has one (serving.find_export)."""
        from tsynd_tf import serving

        if self.finished_before:
            existing = serving.find_export(Path(export_dir) / name, self.run_dir.path)
            if existing is not None:
                log.info("%s holds this run's export already; not exported again.", existing)
                return existing
        return serving.export_trained(
            self.classifier, self.dataset, self.real, self.config.num_samples, export_dir,
            name=name, batch_size=self.eval_batch_size,
            extra_metadata={"run_dir": str(self.run_dir.path.resolve())})
