"""The synthesis seam: what every way of making synthetic training images implements.

A method is built once per run from a `Context` (the run's settings, models and writers),
then the Trainer calls, without knowing which method it has:

  fit(labelled, unlabelled)        once, before the classifier trains: train the method's
                                   generator (resumable through the run's checkpoint).
  pool(round_index, classifier, n) per round: n synthetic images with labels and per-image
                                   diagnostics. It may read the classifier (targeted methods
                                   do); it must not train it.

The Trainer owns persistence (a pool is written once to the run directory and read back on
resume) and the schedule; a method owns only its generator and how it samples.
Adding a method = one module with a `SynthesisMethod` subclass + one entry in
`synthesis.METHODS` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tsynd_tf import data


@dataclasses.dataclass
class Pool:
    """One round's synthetic images: uint8 (N, H, W, C), targets (N, K), and per-image
    arrays (N, ...) the run directory keeps with them (e.g. which real image each came
    from)."""
    images: np.ndarray
    targets: np.ndarray
    diagnostics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def as_split(self) -> data.Split:
        return data.Split(self.images, self.targets)


@dataclasses.dataclass
class Context:
    """What a method may use of the run it belongs to (built by the Trainer).

    `autoencoder` is the run's (encoder, decoder, autoencoder): every run builds it before the
    classifier, so that the classifier starts from the same initial weights for every method
    at a seed (a paired comparison), whether or not the method uses it. `ae_epoch` is its
    checkpointed epoch counter; `stage_callbacks(stage)` are the per-epoch callbacks
    (summaries, counter, checkpoint) a generator's `fit` passes to Keras.
    """
    config: object  # config.TrainConfig
    info: data.DatasetInfo
    strategy: object  # tf.distribute.Strategy
    writer: object  # tf.summary writer
    verbose: int
    eval_batch_size: int
    autoencoder: tuple  # (encoder, decoder, autoencoder) keras.Models
    ae_epoch: object  # tf.Variable
    labelled_indices: np.ndarray  # the labelled images' indices in the training split
    val_images: np.ndarray
    infer: object  # (model, images float [0, 1]) -> np.ndarray, batched, on this worker
    stage_callbacks: object  # (stage: str) -> list[keras.callbacks.Callback]
    run_dir: object = None  # runs.RunDir: where a method caches its trained generator


class SynthesisMethod:
    """Base class; a method overrides `fit` if it has a generator to train and `pool`."""

    #: False for methods that add no images (the baseline): the Trainer then skips pools.
    makes_images = True

    def __init__(self, context: Context):
        self.context = context
        self.config = context.config

    def fit(self, labelled: data.Split, unlabelled: data.Split) -> None:
        """Trains the generator; a resumed run continues where it stopped."""

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        raise NotImplementedError


class NoSynthesis(SynthesisMethod):
    """`baseline`: real images only (the compute-matched control: same steps and batches)."""

    makes_images = False

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        raise RuntimeError("the baseline makes no synthetic images")
