"""Synthesis in the autoencoder's latent space: TSynD and its latent-noise control.

`fit` trains the run's autoencoder on the labelled images (or the whole training split with
--ae_use_unlabelled), once per labelled subset and autoencoder settings: later runs load it
from the model cache (tsynd_tf.cache) and train the same run bitwise. Each round then draws
source images x from the labelled set (with replacement when the pool is larger), encodes
z0 = enc(x), moves z0 inside the ball of radius epsilon * ||z0|| (`move`: at random for
`latent_noise`, by gradient ascent of the classifier's uncertainty for `tsynd_*`) and
renders the moved latent as an image (--synthesis: dec(z*), or x + dec(z*) - dec(z0)). A
synthetic image keeps its source's label.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import tensorflow as tf

from tsynd_tf import data, uncertainty
from tsynd_tf.data.pipeline import for_fit, to_uint8
from tsynd_tf.synthesis import generators
from tsynd_tf.synthesis.base import Pool, SynthesisMethod
from tsynd_tf.synthesis.latent_ascent import LatentAscent, latent_noise, render

log = logging.getLogger(__name__)

# Bumped when the autoencoder or its training changes: older cached ones are not reused.
AUTOENCODER_VERSION = 1


class LatentMethod(SynthesisMethod):
    """The shared schedule of the latent methods; subclasses say how z0 moves."""

    uses_autoencoder = True

    def __init__(self, context, autoencoder: tuple):
        super().__init__(context)
        self.encoder, self.decoder, self.autoencoder = autoencoder
        self.ae_epoch = context.services.epoch("autoencoder")
        self.labelled = None

    def fit(self, labelled: data.Split, unlabelled: data.Split) -> None:
        """The autoencoder, from the run's checkpoint when its epochs are done, else from the
        model cache: trained once per (labelled subset, autoencoder settings), shared by the
        latent methods and seeds' runs that would train the same one."""
        config, context = self.config, self.context
        self.labelled = labelled
        if int(self.ae_epoch) >= config.ae_epochs:
            return
        images = unlabelled.images if config.ae_use_unlabelled else labelled.images
        self.generator_record = generators.fetch(
            context, self.autoencoder_entry(), self.autoencoder,
            lambda: self.train_autoencoder(images))
        self.ae_epoch.assign(config.ae_epochs)

    def autoencoder_entry(self):
        config, context = self.config, self.context
        settings = {k: getattr(config, k) for k in (
            "latent_channels", "ae_width", "ae_learning_rate", "ae_epochs", "ae_use_unlabelled",
            "steps_per_epoch", "mixed_precision", "jit_compile", "strategy")}
        return generators.generator_entry(context, "autoencoder", AUTOENCODER_VERSION,
                                          **settings)

    def train_autoencoder(self, images: np.ndarray) -> None:
        """--ae_epochs epochs on `images`, resumed from the run's checkpoint (ae_epoch)."""
        config, context = self.config, self.context
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
            context.val_images, None, context.eval_batch_size).map(to_pair)))
        log.info("Autoencoder on %d images, epochs %d..%d.", len(images),
                 int(self.ae_epoch), config.ae_epochs)
        self.autoencoder.fit(train, validation_data=val, epochs=config.ae_epochs,
                             steps_per_epoch=steps, initial_epoch=int(self.ae_epoch),
                             verbose=context.verbose,
                             callbacks=context.services.callbacks("autoencoder"),
                             shuffle=False)

    def move(self, round_index: int, anchors: np.ndarray, classifier) -> np.ndarray:
        """The moved latents z*, one per anchor z0."""
        raise NotImplementedError

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        infer, start = self.context.services.infer, time.time()
        sources = generators.draw_sources(len(self.labelled), n,
                                          self.config.stream_seed(round_index))
        source_images = self.labelled.images[sources].astype(np.float32) / 255.0
        anchors = infer(self.encoder, source_images)
        latents = self.move(round_index, anchors, classifier)
        reconstructions = infer(self.decoder, anchors)
        synthetic = render(source_images, reconstructions, infer(self.decoder, latents),
                           self.config.rendering)
        pool = Pool(to_uint8(synthetic), self.labelled.targets[sources],
                    {"source_indices": self.context.labelled_indices[sources]})
        self.log_pool(round_index, classifier, (source_images, reconstructions, synthetic),
                      anchors, latents, pool.targets, time.time() - start)
        return pool

    def log_pool(self, round_index, classifier, images, anchors, latents, targets,
                 seconds) -> None:
        """TensorBoard: MC uncertainty of real, reconstructed and synthetic images, the latent
        distance moved, and a grid of examples."""
        context = self.context
        sources, reconstructions, synthetic = images
        measures = {name: generators.pool_uncertainty(context, classifier, to_uint8(batch),
                                                      targets)
                    for name, batch in zip(("real", "reconstruction", "synthetic"), images)}
        distance = (np.linalg.norm((latents - anchors).reshape(len(anchors), -1), axis=1) /
                    np.linalg.norm(anchors.reshape(len(anchors), -1), axis=1))
        generators.log_pool_uncertainty(context.writer, round_index, measures, seconds,
                                        f"; latent distance {distance.mean():.3f} of ||z0||")
        with context.writer.as_default(step=round_index):
            tf.summary.scalar("generation/relative_latent_distance", distance.mean())
            shown = slice(0, 8)
            rows = [sources[shown], reconstructions[shown], synthetic[shown],
                    np.abs(synthetic[shown] - reconstructions[shown])]
            grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
            tf.summary.image("generation/original_reconstruction_synthetic_difference",
                             grid[None], max_outputs=1)


class LatentNoise(LatentMethod):
    """`latent_noise`: z0 moved to a uniformly random point on the sphere of TSynD's budget."""

    def move(self, round_index, anchors, classifier):
        return latent_noise(anchors, self.config.epsilon,
                            self.config.stream_seed(round_index)).numpy()


class TSynD(LatentMethod):
    """`tsynd_mi`: z0 moved by projected gradient ascent of the classifier's mutual
    information (BALD) of dec(z); `tsynd_entropy` ascends the predictive entropy."""

    objective = "mi"
    reads_classifier = True

    def __init__(self, context, autoencoder: tuple):
        super().__init__(context, autoencoder)
        self.ascent = None

    def ascent_for(self, classifier, n: int) -> LatentAscent:
        """The ascent over a pool of n latents, built once (under the run's strategy)."""
        if self.ascent is None or self.ascent.classifier is not classifier or \
                self.ascent.latents.shape[0] != n:
            config = self.config
            with self.context.strategy.scope():
                self.ascent = LatentAscent(
                    self.decoder, classifier, n, objective=self.objective,
                    epsilon=config.epsilon, step_size=config.step_size,
                    num_samples=config.num_samples, multilabel=self.context.info.multilabel)
                self.ascent.compile(optimizer=None, jit_compile=config.jit_compile)
        return self.ascent

    def move(self, round_index, anchors, classifier):
        config = self.config
        ascent = self.ascent_for(classifier, len(anchors))
        ascent.start_from(anchors)
        # Under a strategy each replica steps its share of every batch of latents.
        batch_size = uncertainty.images_per_call(config.batch_size,
                                                 self.decoder.output_shape[1:],
                                                 config.num_samples)
        ascent.fit(for_fit(uncertainty.without_autotuning(
                       tf.data.Dataset.range(len(anchors)).batch(batch_size))),
                   epochs=config.ascent_steps, verbose=self.context.verbose, shuffle=False)
        return ascent.latents.numpy()


class TSynDEntropy(TSynD):
    objective = "entropy"
