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
import hashlib
import logging
import time

import numpy as np

from tsynd_tf import cache, data, distribute

log = logging.getLogger(__name__)


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
    data_fingerprint: str  # data.fingerprint's sha256 of the dataset the run trains on
    val_images: np.ndarray
    infer: object  # (model, images float [0, 1]) -> np.ndarray, batched, on this worker
    stage_callbacks: object  # (stage: str) -> list[keras.callbacks.Callback]
    run_dir: object = None  # runs.RunDir: where a method caches its trained generator


class SynthesisMethod:
    """Base class; a method overrides `fit` if it has a generator to train and `pool`."""

    #: False for methods that add no images (the baseline): the Trainer then skips pools.
    makes_images = True
    #: True for methods whose pools read the classifier being trained (targeted methods).
    reads_classifier = False

    #: The cache record of the generator `fit` trained or loaded (cache.fetch), if any.
    generator_record: dict | None = None

    def __init__(self, context: Context):
        self.context = context
        self.config = context.config

    def fit(self, labelled: data.Split, unlabelled: data.Split) -> None:
        """Trains the generator; a resumed run continues where it stopped."""

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        raise NotImplementedError

    def fetch_generator(self, entry: cache.Entry, model, train) -> dict:
        """`cache.fetch(entry, model, train)`, except in multi-worker training: there every
        worker trains the generator in lockstep (its steps are collective), which the
        entry's lock would deadlock, so the cache is neither read nor written."""
        if distribute.task(self.context.strategy)[0] is None:
            return cache.fetch(entry, model, train)
        start = time.time()
        train()
        return {"kind": entry.kind, "settings": entry.settings, "entry": None,
                "seconds": round(time.time() - start, 1), "loaded": False}

    def fit_generator(self, model, labelled: data.Split, what: str) -> None:
        """`model.fit` for --generator_steps seeded batches of --batch_size labelled images
        (with their labels): how a class-conditional generator trains."""
        config = self.config
        batches = data.make_pipeline(labelled.images, labelled.targets, config.batch_size,
                                     shuffle=True, seed=config.seed, repeat=True)
        log.info("%s on %d images, %d steps.", what, len(labelled), config.generator_steps)
        model.fit(batches, epochs=1, steps_per_epoch=config.generator_steps,
                  verbose=self.context.verbose, shuffle=False)


class NoSynthesis(SynthesisMethod):
    """`baseline`: real images only (the compute-matched control: same steps and batches)."""

    makes_images = False

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        raise RuntimeError("the baseline makes no synthetic images")


def require_every_class(context: Context, labelled: data.Split) -> None:
    """A class-conditional generator learns a class from its labelled images: none of a
    class is an error before any training."""
    if context.info.multilabel:
        raise data.DataError(f"--method={context.config.method} conditions on one class per "
                             f"image; {context.info.name} is multi-label.")
    missing = [context.info.class_names[k] for k, n in enumerate(labelled.class_counts())
               if n == 0]
    if missing:
        raise data.DataError(f"the labelled subset has no image of {missing}: --method="
                             f"{context.config.method} cannot learn them; raise "
                             "--train_fraction or --train_count.")


def pool_labels(labelled: data.Split, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n class indices drawn from the labelled images' labels (seeded) and their one-hot
    targets: a class-conditional generator's pool has the labelled set's class mix."""
    labels = np.random.default_rng(seed).choice(labelled.targets.argmax(1), size=n)
    return labels, np.eye(labelled.targets.shape[1], dtype=np.float32)[labels]


def generator_entry(context: Context, name: str, version: int, **settings) -> cache.Entry:
    """The cache entry of a generator trained on this run's labelled images: the same for
    every method and run directory of one (dataset, labelled subset, generator settings);
    `settings` adds a generator's own (the autoencoder's)."""
    config = context.config
    labelled = hashlib.sha256(np.asarray(context.labelled_indices, np.int64).tobytes())
    return cache.entry(config.cache_dir, name, {
        "version": version, "dataset": context.info.name, "data": context.data_fingerprint[:16],
        "size": context.info.size,
        "channels": int(context.val_images.shape[-1]), "seed": config.seed,
        "labelled": labelled.hexdigest()[:16], "generator_steps": config.generator_steps,
        "batch_size": config.batch_size,
        "generator_learning_rate": config.generator_learning_rate, **settings})
