"""The per-epoch work of a training stage, as small ordered Keras callbacks.

A classifier epoch ends with, in this order (run_parts.RunParts.callbacks):
  EpochCounter      the checkpointed epoch counter := this epoch
  PreciseBatchNorm  BatchNorm statistics recomputed on the labelled images
  MCValidation      MC-dropout validation metrics, written into `logs` as val_<metric>
  Summaries         every value in `logs` to TensorBoard (train/..., val/...)
  KeepBest          the best-on-validation weights and the record of their epoch
  Checkpoint        the stage's tf.train checkpoint: last, so a checkpointed epoch always has
                    its best-weights file already on disk
An autoencoder epoch runs EpochCounter, Summaries and Checkpoint. Keras passes the same
`logs` dict to each callback in list order, so a later one sees what an earlier one added.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tsynd_tf import evaluation, models, uncertainty


def mc_metrics(classifier, split, batches, info, num_samples: int, seed: int) -> dict:
    """MC-averaged acc/auc/balanced_acc/nll/ece and mean MI/entropy of the classifier on a
    split (balanced_acc: the comparison reports it at the end of training too)."""
    # The same dropout masks at every epoch: model selection compares weights, not draws.
    with evaluation.seeded_dropout(classifier, seed):
        out = uncertainty.mc_predict(classifier, batches, num_samples, info.multilabel)
    metrics = evaluation.classification_metrics(split.targets, out["probs"], info)
    metrics = {k: v for k, v in metrics.items() if k in ("acc", "auc", "balanced_acc", "nll", "ece")}
    metrics["mi"] = float(out["mutual_information"].mean())
    metrics["entropy"] = float(out["predictive_entropy"].mean())
    return metrics


class EpochCounter(keras.callbacks.Callback):
    def __init__(self, counter: tf.Variable):
        super().__init__()
        self.counter = counter

    def on_epoch_end(self, epoch, logs=None):
        self.counter.assign(epoch + 1)


class PreciseBatchNorm(keras.callbacks.Callback):
    """BatchNorm statistics of the epoch's final weights (models.recompute_batch_norm_...):
    with few steps per epoch the moving averages lag the weights by many updates."""

    def __init__(self, images: tf.data.Dataset):
        super().__init__()
        self.images = images

    def on_epoch_end(self, epoch, logs=None):
        models.recompute_batch_norm_statistics(self.model, self.images)


class MCValidation(keras.callbacks.Callback):
    def __init__(self, split, batches, info, num_samples: int, seed: int):
        super().__init__()
        self.split, self.batches, self.info = split, batches, info
        self.num_samples, self.seed = num_samples, seed

    def on_epoch_end(self, epoch, logs=None):
        metrics = mc_metrics(self.model, self.split, self.batches, self.info,
                             self.num_samples, self.seed)
        logs.update({f"val_{key}": value for key, value in metrics.items()})


class Summaries(keras.callbacks.Callback):
    """`logs` as TensorBoard scalars at step = epoch number (1-based): `loss` -> train/loss,
    `val_auc` -> val/auc; `prefix` names a stage's keys (autoencoder: train/ae_loss)."""

    def __init__(self, writer, prefix: str = ""):
        super().__init__()
        self.writer, self.prefix = writer, prefix

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default(step=epoch + 1):
            for key, value in logs.items():
                split, name = ("val", key[4:]) if key.startswith("val_") else ("train", key)
                tf.summary.scalar(f"{split}/{self.prefix}{name}", value)


class KeepBest(keras.callbacks.Callback):
    """Saves the weights of an epoch whose val AUC beats every earlier epoch's (the first
    of equals is kept); `best_val_auc` is checkpointed, so a resumed run keeps the rule."""

    def __init__(self, run_dir, best_val_auc: tf.Variable):
        super().__init__()
        self.run_dir, self.best_val_auc = run_dir, best_val_auc

    def on_epoch_end(self, epoch, logs=None):
        if logs["val_auc"] > float(self.best_val_auc):
            self.best_val_auc.assign(logs["val_auc"])
            self.run_dir.save_best_weights(self.model, epoch + 1, logs["val_auc"])


class Checkpoint(keras.callbacks.Callback):
    def __init__(self, manager: tf.train.CheckpointManager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save()
