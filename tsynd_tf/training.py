"""The training schedule: the synthesis method's generator, the classifier on real data,
then R rounds of (a synthetic pool from the method, continued training on real + synthetic).

`Trainer(parts)` only schedules the parts of a run that run_parts.assemble built. The
per-epoch work is in callbacks.py, the input pipelines in data/pipeline.py, the ways of
making synthetic images in synthesis/, evaluating and recording the finished run in
finishing.py, and every file of the run directory in runs.py.

Every stage is resumable. A `tf.train.CheckpointManager` saves the autoencoder, classifier,
both optimizers (with their step counts), the epoch counters and MC dropout's seed state
after every epoch; each round's synthetic pool is an .npz written atomically before training
uses it. A restarted run restores the checkpoint and skips what is finished: an epoch is never
trained twice and a pool never generated twice. It is also the same run: a stage re-enters
its batch stream at the resumed epoch, and a pool read back restores the dropout state its
generation left, so on CPU a killed and resumed run ends bitwise equal to an uninterrupted one.

All methods train with the same batch size and number of steps per epoch, so they differ
only in what the batches hold: `baseline` real images only; the others a share
(`synthetic_ratio`: fixed, or 'proportional' to the pools' size so far, data/pipeline.py's
synthetic_per_batch) of synthetic images from every pool generated so far, the pools together
`synthetic_multiple` times the labelled images. With `--train_on=synthetic` every pool is
made first and every batch is synthetic (the Classification Accuracy Score). The quality of
the pools is measured when training ends (finishing.py), after the classifier's last step,
so measuring never changes what a run trains.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import tensorflow as tf

from tsynd_tf import data, finishing, pool_grid, uncertainty
from tsynd_tf.data.pipeline import classifier_batches, for_fit
from tsynd_tf.run_parts import RunParts

log = logging.getLogger(__name__)


class Trainer:
    """The schedule of one run: the method's generator, the initial epochs, the rounds."""

    def __init__(self, parts: RunParts):
        self.parts = parts
        self.config = parts.config
        self.finished_before = False  # set by run() when the run had finished already
        self.stage_seconds = {}  # this session's seconds per stage (`timed`), in results

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

    def stage_start(self, round_index: int) -> int:
        """First classifier epoch of a round, after the initial real-only epochs."""
        return self.config.initial_epochs + round_index * self.config.epochs_per_round

    def train_classifier(self, first: int, until_epoch: int, synthetic: data.Split | None,
                         synthetic_only: bool = False, batch_norm_batches=None) -> None:
        """Trains the stage of epochs [first, until_epoch), from where it stopped, on real
        images (and `synthetic` ones in the configured share), or on `synthetic` only;
        BatchNorm statistics come from `batch_norm_batches` (default: the labelled images)."""
        parts = self.parts
        start = int(parts.checkpoint.classifier_epoch)
        if start >= until_epoch:
            return
        real, synthetic = (synthetic, None) if synthetic_only else (parts.real, synthetic)
        # One batch stream per stage, seeded by the stage; a resumed stage re-enters it.
        batches = for_fit(classifier_batches(real, synthetic, self.config,
                                             seed=self.config.stream_seed(first),
                                             replicas=parts.strategy.num_replicas_in_sync)
                          .skip((start - first) * parts.steps_per_epoch))
        with self.timed("classifier"):
            parts.classifier.fit(batches, epochs=until_epoch, initial_epoch=start,
                                 steps_per_epoch=parts.steps_per_epoch, verbose=parts.verbose,
                                 callbacks=parts.callbacks("classifier", batch_norm_batches),
                                 shuffle=False)

    def pool(self, round_index: int) -> data.Split:
        """The round's synthetic images, made once by the method and then read back from
        disk (from the chief's run directory: in multi-worker training all workers read
        the same)."""
        parts = self.parts
        done = parts.chief_dir.read_pool(round_index)
        if done is not None:
            # Resuming right after this pool's generation: continue from the dropout state
            # it left (the checkpoint predates it).
            if (int(parts.checkpoint.classifier_epoch) == self.stage_start(round_index) and
                    "dropout_seed_states" in done):
                parts.checkpoint.set_dropout_states(done["dropout_seed_states"])
            return data.Split(done["images"], done["targets"])
        with self.timed("synthesis"):
            pool = parts.method.pool(round_index, parts.classifier, parts.pool_size)
        parts.run_dir.write_pool(
            round_index, images=pool.images, targets=pool.targets, **pool.diagnostics,
            dropout_seed_states=np.asarray(parts.checkpoint.dropout_state_values()))
        class_names = parts.dataset.info.class_names
        with parts.writer.as_default(step=round_index):  # what the reader sees of the pool
            tf.summary.image("pools/round_grid", pool_grid.class_grid(
                pool.images, pool.targets, class_names)[None],
                description=pool_grid.describe(class_names))
        return pool.as_split()

    def run(self) -> dict:
        """Trains what is left and finishes; a run that had finished already is neither
        trained nor evaluated again: its recorded results are returned."""
        recorded = self.recorded_results()
        if recorded is not None:
            return recorded
        parts, config, start = self.parts, self.config, time.time()
        with self.timed("generator"):
            parts.method.fit(parts.real, parts.dataset.train)
        if parts.method.generator_record is not None:
            parts.run_dir.write_generator(parts.method.generator_record)
        if config.train_on == "synthetic":
            synthetic = data.Split.joined([self.pool(r) for r in range(config.rounds)])
            self.train_classifier(0, self.stage_start(config.rounds), synthetic,
                                  synthetic_only=True,
                                  batch_norm_batches=uncertainty.without_autotuning(
                                      data.make_pipeline(synthetic.images, None,
                                                         parts.eval_batch_size)))
        else:
            self.train_classifier(0, self.stage_start(0), synthetic=None)
            pools = []
            for round_index in range(config.rounds):
                if parts.method.makes_images:
                    pools.append(self.pool(round_index))
                self.train_classifier(self.stage_start(round_index),
                                      self.stage_start(round_index + 1),
                                      data.Split.joined(pools) if pools else None)
        return finishing.finish(parts, time.time() - start, self.timed, self.stage_seconds)

    def recorded_results(self) -> dict | None:
        """results.json of a run whose checkpoint is at its last epoch, with the selected
        classifier loaded (for export); None when there is training or finishing left."""
        parts = self.parts
        results = parts.chief_dir.read_results()
        if (results is None or
                int(parts.checkpoint.classifier_epoch) < self.stage_start(self.config.rounds)):
            return None
        self.finished_before = True
        parts.classifier.load_weights(parts.run_dir.best_weights)
        log.info("%s finished before: nothing is trained or evaluated again (delete %s to "
                 "evaluate it again).", parts.chief_dir, parts.chief_dir.results_file.name)
        return results
