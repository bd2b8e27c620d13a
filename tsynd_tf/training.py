"""The TSynD schedule: autoencoder, classifier on real data, then R rounds of
(generate a synthetic pool, continue training on real + synthetic).

Every stage is resumable. A `tf.train.CheckpointManager` saves the autoencoder, classifier,
both optimizers (with their step counts), the epoch counters and MC dropout's seed state
after every epoch; each round's synthetic pool is an .npz written atomically before training
uses it. A restarted run restores the checkpoint and skips what is finished: an epoch is never
trained twice and a pool never generated twice. It is also the same run: a stage re-enters
its batch stream at the resumed epoch, and a pool read back restores the dropout state its
generation left, so on CPU a killed and resumed run ends bitwise equal to an uninterrupted one.

All methods train with the same batch size and number of steps per epoch, so they differ
only in what the batches hold: `baseline` real images only; the others a fixed share
(`synthetic_ratio`) of synthetic images from every pool generated so far.
"""

from __future__ import annotations

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

from tsynd_tf import data, distribute, evaluation, generation, models, runs, uncertainty
from tsynd_tf.fileio import atomic_path, write_json

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- set-up

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


def labelled_indices(dataset: data.Dataset, config) -> np.ndarray:
    return data.subsample_indices(
        dataset.train.targets, fraction=None if config.train_count else config.train_fraction,
        count=config.train_count or None, seed=config.seed,
        multilabel=dataset.info.multilabel)


# ----------------------------------------------------------------------------- pipelines

def for_fit(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """A dataset for `fit` under any strategy: in multi-worker training each worker takes its
    own part of every global batch (DATA sharding; the default AUTO policy first tries to
    shard by input file, which these in-memory datasets do not have)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def interleaving_order(n_real: int, n_synthetic: int) -> np.ndarray:
    """Row order that spreads the synthetic rows evenly through a [real, synthetic] batch, so
    that every replica's contiguous slice of it holds the same real/synthetic mix."""
    keys = np.concatenate([(np.arange(n_real) + 0.5) / n_real,
                           (np.arange(n_synthetic) + 0.5) / n_synthetic])
    return np.argsort(keys, kind="stable")


def classifier_batches(real: data.Split, synthetic: data.Split | None, config,
                       seed: int, replicas: int = 1) -> tf.data.Dataset:
    """Endless training batches: real only, or real and synthetic in a fixed ratio.

    With several replicas (a distribution strategy) the two parts are interleaved: each
    replica gets a contiguous slice of the batch and normalises it with its own BatchNorm
    statistics, which must not come from real or synthetic images alone.
    """
    if synthetic is None or len(synthetic) == 0:
        return data.make_pipeline(real.images, real.targets, config.batch_size, shuffle=True,
                                  seed=seed, augment=config.augment, repeat=True)
    n_synthetic = max(1, round(config.synthetic_ratio * config.batch_size))
    real_ds = data.make_pipeline(real.images, real.targets, config.batch_size - n_synthetic,
                                 shuffle=True, seed=seed, augment=config.augment, repeat=True)
    synthetic_ds = data.make_pipeline(synthetic.images, synthetic.targets, n_synthetic,
                                      shuffle=True, seed=seed + 1, augment=config.augment,
                                      repeat=True)
    order = (interleaving_order(config.batch_size - n_synthetic, n_synthetic)
             if replicas > 1 else None)

    def join(a, b):
        images, targets = tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)
        if order is None:
            return images, targets
        return tf.gather(images, order), tf.gather(targets, order)

    return tf.data.Dataset.zip(real_ds, synthetic_ds).map(join)


def eval_batches(split: data.Split, batch_size: int) -> tf.data.Dataset:
    return data.make_pipeline(split.images, split.targets, batch_size)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- callbacks

class EpochEnd(keras.callbacks.Callback):
    """After each epoch: validation metrics, summaries, best weights, then the checkpoint
    (last, so a checkpointed epoch always has its best-weights file already on disk)."""

    def __init__(self, trainer: "Trainer", stage: str):
        super().__init__()
        self.trainer, self.stage = trainer, stage

    def on_epoch_end(self, epoch, logs=None):
        self.trainer.end_epoch(self.stage, epoch + 1, logs or {})


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Holds one run's data, models, checkpoint and summary writer."""

    def __init__(self, config, flags: dict, flag_defaults: dict | None = None):
        """`flags`: the run's settings (config.json); `flag_defaults`: their defaults, so a
        run recorded before a flag existed resumes when the flag keeps its default."""
        self.config = config
        # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime.
        self.strategy = distribute.make_strategy(getattr(config, "strategy", "default"))
        self.is_chief = distribute.is_chief(self.strategy)
        # The run directory; in multi-worker training the chief writes it and the other
        # workers write their own folder inside it, but all resume from the chief's files.
        self.output_dir = Path(config.output_dir)
        self.run_dir = distribute.worker_dir(self.output_dir, self.strategy)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        quiet_tensorflow_logs()
        self.verbose = config.verbose if config.verbose >= 0 else (1 if sys.stdout.isatty() else 2)
        self.policy = set_precision(config.mixed_precision)
        keras.utils.set_random_seed(config.seed)

        self.dataset = data.load_dataset(config.dataset, config.size, config.data_dir,
                                         config.channels, config.val_fraction, config.seed)
        info = self.dataset.info
        runs.write_config(self.run_dir, flags, info, flag_defaults)
        self.labelled = labelled_indices(self.dataset, config)
        write_json(self.run_dir / "subset.json", {
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
        self.val_ds = eval_batches(self.dataset.val, self.eval_batch_size)
        self.real_images = uncertainty.without_autotuning(  # precise BN iterates it
            data.make_pipeline(self.real.images, None, self.eval_batch_size))

        if self.strategy.num_replicas_in_sync > 1 or not self.is_chief:
            log.info("Distributed: %s.", distribute.describe(self.strategy))
        with self.strategy.scope():
            self.build_models(info)
        self._inference = {}

        self.ae_epoch = tf.Variable(0, dtype=tf.int64, name="ae_epoch")
        self.classifier_epoch = tf.Variable(0, dtype=tf.int64, name="classifier_epoch")
        self.best_val_auc = tf.Variable(-1.0, dtype=tf.float64, name="best_val_auc")
        state = dict(
            autoencoder=self.autoencoder, ae_optimizer=self.autoencoder.optimizer,
            classifier=self.classifier, optimizer=self.classifier.optimizer,
            ae_epoch=self.ae_epoch, classifier_epoch=self.classifier_epoch,
            best_val_auc=self.best_val_auc)
        self.dropout_states = models.seed_generator_states(self.classifier)
        self.checkpoint = tf.train.Checkpoint(**state, dropout_seed_states=self.dropout_states)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.run_dir / "checkpoints",
                                                  max_to_keep=2)
        # Every worker resumes from the chief's checkpoint, so all start from the same state.
        # It restores under any strategy: a checkpoint holds one value per variable.
        latest = tf.train.latest_checkpoint(self.output_dir / "checkpoints")
        if latest:
            has_seeds = any(name.startswith("dropout_seed_states/")
                            for name, _ in tf.train.list_variables(latest))
            if not has_seeds:
                log.warning("%s was written by an older tsynd-tf, without dropout seeds: "
                            "the run resumes, drawing other dropout masks than an "
                            "uninterrupted run would.", latest)
            (self.checkpoint if has_seeds else tf.train.Checkpoint(**state)).restore(
                latest).assert_existing_objects_matched()
            log.info("Resumed from %s (autoencoder epoch %d, classifier epoch %d).",
                     latest, int(self.ae_epoch), int(self.classifier_epoch))
        self.writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        with self.writer.as_default():
            hparams_api.hparams({k: v for k, v in flags.items()
                                 if isinstance(v, (bool, int, float, str))})

    def build_models(self, info: data.DatasetInfo) -> None:
        """Autoencoder, classifier (compiled, optimizer slots built) and the latent ascent;
        called under the strategy's scope, so their variables are distributed."""
        config = self.config
        size, channels = info.size, self.dataset.train.images.shape[-1]
        self.encoder, self.decoder, self.autoencoder = models.build_autoencoder(
            size, channels, config.latent_channels, config.ae_width)
        self.autoencoder.compile(keras.optimizers.Adam(config.ae_learning_rate), "mse",
                                 metrics=[models.psnr, models.ssim],
                                 jit_compile=config.jit_compile)
        self.classifier = models.build_classifier(config.classifier, size, channels,
                                                  info.num_classes, config.dropout_rate)
        loss = (keras.losses.BinaryCrossentropy(from_logits=True) if info.multilabel else
                keras.losses.CategoricalCrossentropy(from_logits=True))
        self.classifier.compile(keras.optimizers.Adam(config.learning_rate), loss,
                                jit_compile=config.jit_compile)
        # Optimizer slots must exist before a restore can fill them.
        self.autoencoder.optimizer.build(self.autoencoder.trainable_variables)
        self.classifier.optimizer.build(self.classifier.trainable_variables)

        self.pool_size = (max(1, round(config.pool_fraction * len(self.real)))
                          if config.method != "baseline" else 0)
        self.ascent = None
        if config.method in generation.METHOD_OBJECTIVES:
            self.ascent = generation.LatentAscent(
                self.decoder, self.classifier, self.pool_size,
                objective=generation.METHOD_OBJECTIVES[config.method],
                epsilon=config.epsilon, step_size=config.step_size,
                num_samples=config.num_samples, multilabel=info.multilabel)
            self.ascent.compile(optimizer=None, jit_compile=config.jit_compile)

    def infer(self, model: keras.Model, images: np.ndarray) -> np.ndarray:
        """model(images, training=False) in batches, on this worker's device.

        Unlike `predict`, this never distributes the batches, so in multi-worker training
        every worker computes the whole result itself (encoder and decoder are
        deterministic: all workers get the same).
        """
        if model.name not in self._inference:
            self._inference[model.name] = tf.function(
                lambda x: model(x, training=False), reduce_retracing=True)
        step = self._inference[model.name]
        batches = uncertainty.without_autotuning(
            tf.data.Dataset.from_tensor_slices(images).batch(self.eval_batch_size))
        return np.concatenate([step(batch).numpy() for batch in batches], axis=0)

    # ------------------------------------------------------------------ per-epoch work

    def end_epoch(self, stage: str, epoch: int, logs: dict) -> None:
        with self.writer.as_default(step=epoch):
            if stage == "autoencoder":
                self.ae_epoch.assign(epoch)
                for key, value in logs.items():
                    split, name = ("val", key[4:]) if key.startswith("val_") else ("train", key)
                    tf.summary.scalar(f"{split}/ae_{name}", value)
            else:
                self.classifier_epoch.assign(epoch)
                tf.summary.scalar("train/loss", logs["loss"])
                models.recompute_batch_norm_statistics(self.classifier, self.real_images)
                val = self.evaluate(self.dataset.val, self.val_ds)
                for key, value in val.items():
                    tf.summary.scalar(f"val/{key}", value)
                if val["auc"] > float(self.best_val_auc):
                    self.best_val_auc.assign(val["auc"])
                    with atomic_path(self.run_dir / "best.weights.h5", ".weights.h5") as tmp:
                        self.classifier.save_weights(tmp)
        self.manager.save()

    def evaluate(self, split: data.Split, batches: tf.data.Dataset) -> dict:
        """MC-averaged metrics and mean uncertainty of the classifier on a split."""
        info = self.dataset.info
        # The same dropout masks at every epoch: model selection compares weights, not draws.
        with evaluation.seeded_dropout(self.classifier, self.config.seed):
            out = uncertainty.mc_predict(self.classifier, batches, self.config.num_samples,
                                         info.multilabel)
        metrics = evaluation.classification_metrics(split.targets, out["probs"], info)
        metrics = {k: v for k, v in metrics.items() if k in ("acc", "auc", "nll", "ece")}
        metrics["mi"] = float(out["mutual_information"].mean())
        metrics["entropy"] = float(out["predictive_entropy"].mean())
        return metrics

    # ------------------------------------------------------------------ stages

    def train_autoencoder(self) -> None:
        config = self.config
        if int(self.ae_epoch) >= config.ae_epochs:
            return
        images = self.dataset.train.images if config.ae_use_unlabelled else self.real.images
        to_pair = lambda x: (x, x)  # noqa: E731 - reconstruction target is the input
        # --steps_per_epoch applies here too: at 1% (one batch of labelled images) one pass
        # per epoch would give the autoencoder ~30 steps, and its decodes would be grey blurs.
        steps = config.steps_per_epoch or math.ceil(len(images) / config.batch_size)
        # fit() keeps one iterator across epochs: a resumed stage skips the batches it saw.
        train = for_fit(data.make_pipeline(images, None, config.batch_size, shuffle=True,
                                           seed=config.seed, repeat=True).map(to_pair)
                        .skip(int(self.ae_epoch) * steps))
        # Iterated afresh every epoch, where autotuning stalls (uncertainty.without_autotuning).
        val = for_fit(uncertainty.without_autotuning(data.make_pipeline(
            self.dataset.val.images, None, self.eval_batch_size).map(to_pair)))
        log.info("Autoencoder on %d images, epochs %d..%d.", len(images),
                 int(self.ae_epoch), config.ae_epochs)
        self.autoencoder.fit(train, validation_data=val, epochs=config.ae_epochs,
                             steps_per_epoch=steps, initial_epoch=int(self.ae_epoch),
                             verbose=self.verbose,
                             callbacks=[EpochEnd(self, "autoencoder")], shuffle=False)

    def stage_start(self, round_index: int) -> int:
        """First classifier epoch of a round, after the initial real-only epochs."""
        return self.config.initial_epochs + round_index * self.config.epochs_per_round

    def train_classifier(self, first: int, until_epoch: int,
                         synthetic: data.Split | None) -> None:
        """Trains the stage of epochs [first, until_epoch), from where it stopped."""
        start = int(self.classifier_epoch)
        if start >= until_epoch:
            return
        # One batch stream per stage, seeded by the stage; a resumed stage re-enters it.
        batches = for_fit(classifier_batches(self.real, synthetic, self.config,
                                             seed=self.config.seed * 1000 + first,
                                             replicas=self.strategy.num_replicas_in_sync)
                          .skip((start - first) * self.steps_per_epoch))
        self.classifier.fit(batches, epochs=until_epoch, initial_epoch=start,
                            steps_per_epoch=self.steps_per_epoch, verbose=self.verbose,
                            callbacks=[EpochEnd(self, "classifier")], shuffle=False)

    def pool_path(self, round_index: int, run_dir: Path | None = None) -> Path:
        return (run_dir or self.run_dir) / "synthetic" / f"round_{round_index:02d}.npz"

    def generate_pool(self, round_index: int) -> data.Split:
        """The round's synthetic images, generated once and then read back from disk (from
        the chief's run directory: in multi-worker training all workers read the same)."""
        path = self.pool_path(round_index)
        done = self.pool_path(round_index, self.output_dir)
        if done.exists():
            with np.load(done) as pool:
                # Resuming right after this pool's generation: continue from the dropout
                # state it left (the checkpoint predates it).
                if (int(self.classifier_epoch) == self.stage_start(round_index) and
                        "dropout_seed_states" in pool):
                    for variable, value in zip(self.dropout_states, pool["dropout_seed_states"]):
                        variable.assign(value)
                return data.Split(pool["images"], pool["targets"])
        config, seed = self.config, self.config.seed * 1000 + round_index
        start = time.time()
        rng = np.random.default_rng(seed)
        sources = rng.choice(len(self.real), size=self.pool_size,
                             replace=self.pool_size > len(self.real))
        source_images = self.real.images[sources].astype(np.float32) / 255.0
        anchors = self.infer(self.encoder, source_images)
        if config.method == "latent_noise":
            latents = generation.latent_noise(anchors, config.epsilon, seed).numpy()
        else:
            self.ascent.start_from(anchors)
            # Under a strategy each replica steps its share of every batch of latents.
            batch_size = uncertainty.images_per_call(config.batch_size, source_images.shape[1:],
                                                     config.num_samples)
            self.ascent.fit(for_fit(uncertainty.without_autotuning(
                                tf.data.Dataset.range(self.pool_size).batch(batch_size))),
                            epochs=config.ascent_steps, verbose=self.verbose, shuffle=False)
            latents = self.ascent.latents.numpy()
        reconstructions = self.infer(self.decoder, anchors)
        synthetic = generation.synthesize(source_images, reconstructions,
                                          self.infer(self.decoder, latents),
                                          config.synthesis)
        pool = data.Split(to_uint8(synthetic), self.real.targets[sources])
        self.log_pool(round_index, source_images, reconstructions, synthetic, anchors, latents,
                      pool.targets, time.time() - start)
        with atomic_path(path, ".npz") as tmp:
            np.savez(tmp, images=pool.images, targets=pool.targets,
                     source_indices=self.labelled[sources],
                     dropout_seed_states=np.asarray([v.numpy() for v in self.dropout_states]))
        return pool

    def log_pool(self, round_index, sources, reconstructions, synthetic, anchors, latents,
                 targets, seconds) -> None:
        info, config = self.dataset.info, self.config
        measures = {}
        for name, images in (("real", sources), ("reconstruction", reconstructions),
                             ("synthetic", synthetic)):
            batches = data.make_pipeline(to_uint8(images), targets, self.eval_batch_size)
            measures[name] = uncertainty.mc_predict(self.classifier, batches,
                                                    config.num_samples, info.multilabel)
        distance = (np.linalg.norm((latents - anchors).reshape(len(anchors), -1), axis=1) /
                    np.linalg.norm(anchors.reshape(len(anchors), -1), axis=1))
        with self.writer.as_default(step=round_index):
            for name, out in measures.items():
                tf.summary.scalar(f"generation/mi_{name}", out["mutual_information"].mean())
                tf.summary.scalar(f"generation/entropy_{name}",
                                  out["predictive_entropy"].mean())
                tf.summary.histogram(f"generation/mi_{name}_histogram", out["mutual_information"])
            tf.summary.scalar("generation/relative_latent_distance", distance.mean())
            tf.summary.scalar("generation/seconds", seconds)
            shown = slice(0, 8)
            rows = [sources[shown], reconstructions[shown], synthetic[shown],
                    np.abs(synthetic[shown] - reconstructions[shown])]
            grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
            tf.summary.image("generation/original_reconstruction_synthetic_difference",
                             grid[None], max_outputs=1)
        log.info("Round %d pool: %d images in %.1fs; MI real %.4f, reconstruction %.4f, "
                     "synthetic %.4f; latent distance %.3f of ||z0||.", round_index,
                     len(synthetic), seconds, measures["real"]["mutual_information"].mean(),
                     measures["reconstruction"]["mutual_information"].mean(),
                     measures["synthetic"]["mutual_information"].mean(), distance.mean())

    def run(self) -> dict:
        config, start = self.config, time.time()
        if config.method != "baseline":  # the baseline never decodes: same results, less time
            self.train_autoencoder()
        self.train_classifier(0, self.stage_start(0), synthetic=None)
        pools = []
        for round_index in range(config.rounds):
            if config.method != "baseline":
                pools.append(self.generate_pool(round_index))
            synthetic = (data.Split(np.concatenate([p.images for p in pools]),
                                    np.concatenate([p.targets for p in pools]))
                         if pools else None)
            self.train_classifier(self.stage_start(round_index),
                                  self.stage_start(round_index + 1), synthetic)
        return self.finish(time.time() - start)

    def export(self, export_dir: str, name: str) -> Path:
        """SavedModel of the best classifier, MI threshold chosen on validation."""
        from tsynd_tf import serving

        info, val = self.dataset.info, self.dataset.val
        threshold, rule = serving.choose_mi_threshold(
            self.classifier, val.images, info, self.config.num_samples,
            val_targets=val.targets, batch_size=self.eval_batch_size)
        return serving.export_classifier(
            self.classifier, info, self.config.num_samples, threshold, export_dir, name=name,
            threshold_rule=rule, extra_metadata={"run_dir": str(self.run_dir.resolve())})

    def finish(self, seconds: float) -> dict:
        """Best-on-validation classifier: saved, evaluated on test, results written."""
        self.classifier.load_weights(self.run_dir / "best.weights.h5")
        with atomic_path(self.run_dir / "classifier.keras", ".keras") as tmp:
            self.classifier.save(tmp)
        test = self.evaluate(self.dataset.test, eval_batches(self.dataset.test,
                                                             self.eval_batch_size))
        val = self.evaluate(self.dataset.val, self.val_ds)
        results = {f"test/{k}": v for k, v in test.items()}
        results.update({f"val/{k}": v for k, v in val.items()})
        results.update({"num_labelled": len(self.real), "method": self.config.method,
                        "classifier_epochs": int(self.classifier_epoch),
                        "pool_size": self.pool_size, "seconds_this_session": seconds,
                        "num_synthetic": self.pool_size * self.config.rounds})
        with self.writer.as_default(step=int(self.classifier_epoch)):
            for key, value in results.items():
                if key.startswith("test/"):
                    tf.summary.scalar(key, value)
        self.writer.flush()
        write_json(self.run_dir / "results.json", results)
        return results
