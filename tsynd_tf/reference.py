"""The quality of synthetic pools, measured in the feature space of a reference classifier.

No ImageNet Inception weights can be downloaded at run time, so the features come from a
reference classifier trained once per dataset on its *whole* training split with labels (a
fixed recipe: small_cnn, REFERENCE_EPOCHS epochs of Adam), cached and version-stamped in
the model cache (tsynd_tf.cache). It is a measuring instrument, not part of any method: it
sees more labels than the low-data runs it measures, and nothing trains on its outputs. Its
features are the global-average-pooled activations before the head.

`PoolQuality(dataset, cache_dir)` holds the reference and the features of up to
REAL_IMAGES training images (the target distribution); `measure(split)` gives FID, KID,
precision/recall (k=3), label fidelity and diversity (tsynd_tf.quality) of a set of images.
The real labelled images, measured the same way, are the floor a generator is read against.
These are in-domain numbers: comparable between methods on one dataset and reference
version, not with published FIDs.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from tsynd_tf import cache, data, models, quality, uncertainty

log = logging.getLogger(__name__)

REFERENCE_VERSION = 1  # bumped when the recipe changes: older cached references are unused
REFERENCE_EPOCHS = 10
REFERENCE_BATCH = 128
REFERENCE_SEED = 0
REAL_IMAGES = 2000  # training images the synthetic ones are compared with (seeded sample)


def build_reference(info: data.DatasetInfo, channels: int) -> keras.Model:
    """The reference classifier's network: image -> (features, logits)."""
    classifier = models.build_classifier("small_cnn", info.size, channels, info.num_classes,
                                         dropout_rate=0.3)
    pooled = next(layer for layer in classifier.layers
                  if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    return keras.Model(classifier.input, [pooled.output, classifier.output], name="reference")


def train_reference(network: keras.Model, dataset: data.Dataset) -> None:
    multilabel = dataset.info.multilabel
    trainer = keras.Model(network.input, network.output[1])
    loss = (keras.losses.BinaryCrossentropy(from_logits=True) if multilabel else
            keras.losses.CategoricalCrossentropy(from_logits=True))
    trainer.compile(keras.optimizers.Adam(1e-3), loss)
    batches = data.make_pipeline(dataset.train.images, dataset.train.targets, REFERENCE_BATCH,
                                 shuffle=True, seed=REFERENCE_SEED)
    log.info("Reference classifier on the %d training images of %s, %d epochs.",
             len(dataset.train), dataset.info.name, REFERENCE_EPOCHS)
    trainer.fit(batches, epochs=REFERENCE_EPOCHS, verbose=0, shuffle=False)


def load_reference(dataset: data.Dataset, cache_dir: str | None) -> tuple[keras.Model, dict]:
    """The dataset's reference network, from the cache or trained into it, and its record."""
    info, channels = dataset.info, dataset.train.images.shape[-1]
    entry = cache.entry(cache_dir, "reference", {
        "version": REFERENCE_VERSION, "dataset": info.name, "size": info.size,
        "channels": int(channels), "data": data.fingerprint(dataset)["sha256"][:16],
        "epochs": REFERENCE_EPOCHS})
    keras.utils.set_random_seed(REFERENCE_SEED)  # the same reference in every process
    network = build_reference(info, channels)
    record = cache.fetch(entry, network, lambda: train_reference(network, dataset))
    return network, record


class PoolQuality:
    """Measures sets of images against the dataset's training images."""

    def __init__(self, dataset: data.Dataset, cache_dir: str | None, batch_size: int = 256):
        self.info, self.batch_size = dataset.info, batch_size
        self.network, self.record = load_reference(dataset, cache_dir)
        rng = np.random.default_rng(REFERENCE_SEED)
        chosen = np.sort(rng.choice(len(dataset.train), min(REAL_IMAGES, len(dataset.train)),
                                    replace=False))
        self.real_targets = dataset.train.targets[chosen]
        self.real_features, _ = self.features(dataset.train.images[chosen])
        _, val_probs = self.features(dataset.val.images)
        self.record["val_acc"] = quality.label_fidelity(val_probs, dataset.val.targets)

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features, class probabilities) of uint8 images, deterministic forward passes."""
        batches = uncertainty.without_autotuning(
            data.make_pipeline(images, None, self.batch_size))
        features, probs = [], []
        for batch in batches:
            f, logits = self.network(batch, training=False)
            features.append(np.asarray(f, np.float64))
            # One deterministic pass as a (T=1, B, K) stack: the project's one probability
            # computation (uncertainty.uncertainty_from_logits).
            probs.append(uncertainty.uncertainty_from_logits(
                logits[None], self.info.multilabel)["probs"].numpy())
        return np.concatenate(features), np.concatenate(probs)

    def measure(self, split: data.Split) -> dict:
        """FID, KID, precision, recall, label fidelity and diversity of `split`'s images."""
        if len(split) <= 3:  # too few for precision/recall's k=3 balls, or a covariance
            return {"num_images": len(split)}
        features, probs = self.features(split.images)
        precision, recall = quality.precision_recall(self.real_features, features, k=3)
        return {"num_images": len(split),
                "fid": quality.frechet_distance(self.real_features, features),
                "kid": quality.kernel_distance(self.real_features, features),
                "precision": precision, "recall": recall,
                "label_fidelity": quality.label_fidelity(probs, split.targets),
                "diversity": quality.diversity(self.real_features, self.real_targets,
                                               features, split.targets)}
