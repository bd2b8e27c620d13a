"""The synthesis seam: what every way of making synthetic training images implements.

A method is built once per run from a `Context` (the run's settings, data facts, writer and
`Services`), then the Trainer calls, without knowing which method it has:

  fit(labelled, unlabelled)        once, before the classifier trains: train the method's
                                   generator (resumable through the run's checkpoint).
  pool(round_index, classifier, n) per round: n synthetic images with labels and per-image
                                   diagnostics. It may read the classifier (targeted methods
                                   do); it must not train it.

The Trainer owns persistence (a pool is written once to the run directory and read back on
resume) and the schedule; a method owns only its generator and how it samples. What a
method may ask of the run is `Services`: batched inference, a stage's per-epoch callbacks
and its checkpointed epoch counter; nothing in synthesis/ calls into training. Only methods
that say `uses_autoencoder` receive the run's autoencoder. The plumbing generators share
(EMA, batched sampling, seeds, the cache) is in synthesis/generators.py.
Adding a method = one module with a `SynthesisMethod` subclass + one entry in
`synthesis.METHODS` and its name in config.METHODS (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np

from tsynd_tf import data

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from tsynd_tf.config import TrainConfig
    from tsynd_tf.runs import RunDir


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


@dataclasses.dataclass(frozen=True)
class Services:
    """What a method may ask of the run that holds it (built by run_parts.assemble).

    infer(model, images)  model(images in [0, 1], training=False) in batches, on this worker
    callbacks(stage)      the per-epoch callbacks of a stage a generator trains in
                          ('autoencoder': counter, summaries, checkpoint), for its `fit`
    epoch(stage)          the stage's checkpointed epoch counter (a tf.Variable): a method
                          whose generator came from the cache sets it to the last epoch
    """
    infer: Callable[[keras.Model, np.ndarray], np.ndarray]
    callbacks: Callable[[str], list]
    epoch: Callable[[str], tf.Variable]


@dataclasses.dataclass
class Context:
    """What a method may use of the run it belongs to."""
    config: TrainConfig
    info: data.DatasetInfo
    strategy: tf.distribute.Strategy
    writer: object  # tf.summary writer: the run's TensorBoard
    verbose: int
    eval_batch_size: int
    labelled_indices: np.ndarray  # the labelled images' indices in the training split
    data_fingerprint: str  # data.fingerprint's sha256 of the dataset the run trains on
    val_images: np.ndarray
    pool_size: int  # synthetic images per round
    services: Services
    run_dir: RunDir | None = None


class SynthesisMethod:
    """Base class; a method overrides `fit` if it has a generator to train and `pool`."""

    #: False for methods that add no images (the baseline): the Trainer then skips pools.
    makes_images = True
    #: True for methods whose pools read the classifier being trained (targeted methods).
    reads_classifier = False
    #: True for methods built with the run's (encoder, decoder, autoencoder).
    uses_autoencoder = False

    #: The cache record of the generator `fit` trained or loaded (cache.fetch), if any.
    generator_record: dict | None = None

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
