"""A run's checkpointed state: the models, optimizers, epoch counters and MC dropout's
seed state, saved after every epoch of every stage and restored when a run resumes.

What a bitwise resume rests on, on this side (docs/ARCHITECTURE.md, "Resume", names the
rest): the optimizers' slots and step counts, the epoch counters that say where each stage
stopped, and the dropout layers' seed-generator states, so that a resumed stage draws the
masks an uninterrupted one would have drawn.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from tsynd_tf import models
from tsynd_tf.errors import RunDirError
from tsynd_tf.runs import RunDir

log = logging.getLogger(__name__)


def saved_checkpoints(run_dir: RunDir) -> list[str]:
    """The checkpoints the manager's state file lists in checkpoints/, newest first;
    where that file is missing or unreadable, the ckpt-N.index files found there."""
    folder = run_dir.checkpoints
    if not folder.is_dir():
        return []
    try:
        state = tf.train.get_checkpoint_state(str(folder))
    except ValueError:  # a state file naming no checkpoint
        state = None
    if state is not None and state.model_checkpoint_path:
        return (list(state.all_model_checkpoint_paths) or
                [state.model_checkpoint_path])[::-1]
    found = sorted(folder.glob("ckpt-*.index"), key=lambda p: int(p.stem.split("-")[-1]))
    return [str(p.with_suffix("")) for p in reversed(found)]


def checkpoint_files(path: str) -> list[str]:
    """The files of the checkpoint with prefix `path` (its .index and .data-* shards)."""
    prefix = Path(path)
    return [str(p) for p in prefix.parent.glob(prefix.name + ".*")] or [str(prefix)]


class RunCheckpoint:
    """The checkpoint of one run: `save()` after an epoch (callbacks.Checkpoint calls it
    through `manager`), `restore()` once when the run starts."""

    def __init__(self, autoencoder: keras.Model, classifier: keras.Model, directory: RunDir):
        # Plain variables, outside any strategy's scope: every replica reads the same.
        self.ae_epoch = tf.Variable(0, dtype=tf.int64, name="ae_epoch")
        self.classifier_epoch = tf.Variable(0, dtype=tf.int64, name="classifier_epoch")
        self.best_val_auc = tf.Variable(-1.0, dtype=tf.float64, name="best_val_auc")
        self.dropout_states = models.seed_generator_states(classifier)
        self._state = dict(
            autoencoder=autoencoder, ae_optimizer=autoencoder.optimizer,
            classifier=classifier, optimizer=classifier.optimizer,
            ae_epoch=self.ae_epoch, classifier_epoch=self.classifier_epoch,
            best_val_auc=self.best_val_auc)
        self.checkpoint = tf.train.Checkpoint(**self._state,
                                              dropout_seed_states=self.dropout_states)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory.checkpoints,
                                                  max_to_keep=2)

    def epoch(self, stage: str) -> tf.Variable:
        """The epoch counter of a stage: 'autoencoder' or 'classifier'."""
        return {"autoencoder": self.ae_epoch, "classifier": self.classifier_epoch}[stage]

    def restore(self, chief_dir: RunDir) -> None:
        """The newest readable checkpoint in the chief's directory (every worker starts
        from the same state; it restores under any strategy). A damaged newest checkpoint
        is named in a warning and the one before it (the manager keeps 2) restored: the run
        then trains the lost epoch again, to the same result."""
        damaged = []
        for path in saved_checkpoints(chief_dir):
            try:
                self._restore_from(path)
            except (tf.errors.OpError, IndexError, ValueError) as e:
                damaged.append(path)
                log.warning("Checkpoint %s is damaged (%s: %s); trying the one before it.",
                            ", ".join(sorted(checkpoint_files(path))), type(e).__name__,
                            str(e).splitlines()[0] if str(e) else "")
                continue
            log.info("Resumed from %s (autoencoder epoch %d, classifier epoch %d).",
                     path, int(self.ae_epoch), int(self.classifier_epoch))
            return
        if damaged:
            raise RunDirError(
                f"No checkpoint in {chief_dir.checkpoints} can be read: "
                f"{', '.join(f for p in damaged for f in sorted(checkpoint_files(p)))} "
                "are damaged. The run cannot resume: move the run directory away and train "
                "again, or pass another --output_dir.")

    def _restore_from(self, path: str) -> None:
        has_seeds = any(name.startswith("dropout_seed_states/")
                        for name, _ in tf.train.list_variables(path))
        if not has_seeds:
            log.warning("%s was written by an older tsynd-tf, without dropout seeds: the run "
                        "resumes, drawing other dropout masks than an uninterrupted run "
                        "would.", path)
        (self.checkpoint if has_seeds else tf.train.Checkpoint(**self._state)).restore(
            path).assert_existing_objects_matched()

    def set_dropout_states(self, states) -> None:
        """Continues from dropout seed states recorded elsewhere (a pool's file)."""
        for variable, value in zip(self.dropout_states, states):
            variable.assign(value)

    def dropout_state_values(self):
        return [variable.numpy() for variable in self.dropout_states]
