"""The TSynD schedule: autoencoder, classifier on real data, then R rounds of
(generate a synthetic pool, continue training on real + synthetic).

Every stage is resumable. A `tf.train.CheckpointManager` saves the autoencoder, classifier,
both optimizers (with their step counts), the dropout RNG states and the epoch counters after
every epoch; each round's synthetic pool is an .npz written atomically before training uses
it. A restarted run restores the checkpoint and skips what is finished: an epoch is never
trained twice and a pool never generated twice.

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

from tsynd_tf import data, evaluation, generation, models, runs, uncertainty
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

def classifier_batches(real: data.Split, synthetic: data.Split | None, config,
                       seed: int) -> tf.data.Dataset:
    """Endless training batches: real only, or real and synthetic in a fixed ratio."""
    if synthetic is None or len(synthetic) == 0:
        return data.make_pipeline(real.images, real.targets, config.batch_size, shuffle=True,
                                  seed=seed, augment=config.augment, repeat=True)
    n_synthetic = max(1, round(config.synthetic_ratio * config.batch_size))
    real_ds = data.make_pipeline(real.images, real.targets, config.batch_size - n_synthetic,
                                 shuffle=True, seed=seed, augment=config.augment, repeat=True)
    synthetic_ds = data.make_pipeline(synthetic.images, synthetic.targets, n_synthetic,
                                      shuffle=True, seed=seed + 1, augment=config.augment,
                                      repeat=True)
    return tf.data.Dataset.zip(real_ds, synthetic_ds).map(
        lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)))


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

    def __init__(self, config, flags: dict):
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        quiet_tensorflow_logs()
        self.verbose = config.verbose if config.verbose >= 0 else (1 if sys.stdout.isatty() else 2)
        self.policy = set_precision(config.mixed_precision)
        keras.utils.set_random_seed(config.seed)

        self.dataset = data.load_dataset(config.dataset, config.size, config.data_dir,
                                         config.channels, config.val_fraction, config.seed)
        info = self.dataset.info
        runs.write_config(self.run_dir, flags, info)
        self.labelled = labelled_indices(self.dataset, config)
        write_json(self.run_dir / "subset.json", {
            "dataset": info.name, "size": info.size, "seed": config.seed,
            "train_fraction": config.train_fraction, "train_count": config.train_count,
            "num_train": len(self.dataset.train), "indices": self.labelled.tolist()})
        self.real = self.dataset.train.subset(self.labelled)
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(len(self.real) /
                                                                   config.batch_size)
        self.val_ds = eval_batches(self.dataset.val, config.eval_batch_size)
        self.real_images = data.make_pipeline(self.real.images, None, config.eval_batch_size)

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

        self.ae_epoch = tf.Variable(0, dtype=tf.int64, name="ae_epoch")
        self.classifier_epoch = tf.Variable(0, dtype=tf.int64, name="classifier_epoch")
        self.best_val_auc = tf.Variable(-1.0, dtype=tf.float64, name="best_val_auc")
        self.checkpoint = tf.train.Checkpoint(
            autoencoder=self.autoencoder, ae_optimizer=self.autoencoder.optimizer,
            classifier=self.classifier, optimizer=self.classifier.optimizer,
            ae_epoch=self.ae_epoch, classifier_epoch=self.classifier_epoch,
            best_val_auc=self.best_val_auc)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.run_dir / "checkpoints",
                                                  max_to_keep=2)
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            log.info("Resumed from %s (autoencoder epoch %d, classifier epoch %d).",
                         self.manager.latest_checkpoint, int(self.ae_epoch),
                         int(self.classifier_epoch))
        self.writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        with self.writer.as_default():
            hparams_api.hparams({k: v for k, v in flags.items()
                                 if isinstance(v, (bool, int, float, str))})

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
        train = data.make_pipeline(images, None, config.batch_size, shuffle=True,
                                   seed=config.seed).map(to_pair)
        val = data.make_pipeline(self.dataset.val.images, None,
                                 config.eval_batch_size).map(to_pair)
        log.info("Autoencoder on %d images, epochs %d..%d.", len(images),
                     int(self.ae_epoch), config.ae_epochs)
        self.autoencoder.fit(train, validation_data=val, epochs=config.ae_epochs,
                             initial_epoch=int(self.ae_epoch), verbose=self.verbose,
                             callbacks=[EpochEnd(self, "autoencoder")], shuffle=False)

    def train_classifier(self, until_epoch: int, synthetic: data.Split | None) -> None:
        start = int(self.classifier_epoch)
        if start >= until_epoch:
            return
        # Seeded by the epoch it starts at, so a resumed stage is seeded as a fresh one.
        batches = classifier_batches(self.real, synthetic, self.config,
                                     seed=self.config.seed * 1000 + start)
        self.classifier.fit(batches, epochs=until_epoch, initial_epoch=start,
                            steps_per_epoch=self.steps_per_epoch, verbose=self.verbose,
                            callbacks=[EpochEnd(self, "classifier")], shuffle=False)

    def pool_path(self, round_index: int) -> Path:
        return self.run_dir / "synthetic" / f"round_{round_index:02d}.npz"

    def generate_pool(self, round_index: int) -> data.Split:
        """The round's synthetic images, generated once and then read back from disk."""
        path = self.pool_path(round_index)
        if path.exists():
            with np.load(path) as pool:
                return data.Split(pool["images"], pool["targets"])
        config, seed = self.config, self.config.seed * 1000 + round_index
        start = time.time()
        rng = np.random.default_rng(seed)
        sources = rng.choice(len(self.real), size=self.pool_size,
                             replace=self.pool_size > len(self.real))
        source_images = self.real.images[sources].astype(np.float32) / 255.0
        anchors = self.encoder.predict(source_images, batch_size=config.eval_batch_size,
                                       verbose=0)
        if config.method == "latent_noise":
            latents = generation.latent_noise(anchors, config.epsilon, seed).numpy()
        else:
            self.ascent.start_from(anchors)
            self.ascent.fit(tf.data.Dataset.range(self.pool_size).batch(config.batch_size),
                            epochs=config.ascent_steps, verbose=self.verbose, shuffle=False)
            latents = self.ascent.latents.numpy()
        synthetic = self.decoder.predict(latents, batch_size=config.eval_batch_size, verbose=0)
        pool = data.Split(to_uint8(synthetic), self.real.targets[sources])
        reconstructions = self.decoder.predict(anchors, batch_size=config.eval_batch_size,
                                               verbose=0)
        self.log_pool(round_index, source_images, reconstructions, synthetic, anchors, latents,
                      pool.targets, time.time() - start)
        with atomic_path(path, ".npz") as tmp:
            np.savez(tmp, images=pool.images, targets=pool.targets,
                     source_indices=self.labelled[sources])
        return pool

    def log_pool(self, round_index, sources, reconstructions, synthetic, anchors, latents,
                 targets, seconds) -> None:
        info, config = self.dataset.info, self.config
        measures = {}
        for name, images in (("real", sources), ("reconstruction", reconstructions),
                             ("synthetic", synthetic)):
            batches = data.make_pipeline(to_uint8(images), targets, config.eval_batch_size)
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
        self.train_autoencoder()
        self.train_classifier(config.initial_epochs, synthetic=None)
        pools = []
        for round_index in range(config.rounds):
            if config.method != "baseline":
                pools.append(self.generate_pool(round_index))
            synthetic = (data.Split(np.concatenate([p.images for p in pools]),
                                    np.concatenate([p.targets for p in pools]))
                         if pools else None)
            self.train_classifier(
                config.initial_epochs + (round_index + 1) * config.epochs_per_round, synthetic)
        return self.finish(time.time() - start)

    def export(self, export_dir: str, name: str) -> Path:
        """SavedModel of the best classifier, MI threshold chosen on validation."""
        from tsynd_tf import serving

        info, val = self.dataset.info, self.dataset.val
        threshold, rule = serving.choose_mi_threshold(
            self.classifier, val.images, info, self.config.num_samples,
            val_targets=val.targets, batch_size=self.config.eval_batch_size)
        return serving.export_classifier(
            self.classifier, info, self.config.num_samples, threshold, export_dir, name=name,
            threshold_rule=rule, extra_metadata={"run_dir": str(self.run_dir.resolve())})

    def finish(self, seconds: float) -> dict:
        """Best-on-validation classifier: saved, evaluated on test, results written."""
        self.classifier.load_weights(self.run_dir / "best.weights.h5")
        with atomic_path(self.run_dir / "classifier.keras", ".keras") as tmp:
            self.classifier.save(tmp)
        test = self.evaluate(self.dataset.test, eval_batches(self.dataset.test,
                                                             self.config.eval_batch_size))
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
