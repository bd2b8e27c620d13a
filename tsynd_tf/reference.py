"""The quality of synthetic pools, measured in the feature space of a reference classifier.

No ImageNet Inception weights can be downloaded at run time, so the features come from a
reference classifier trained once per dataset on its *whole* training split with labels (a
fixed recipe, RECIPES[DEFAULT_RECIPE]), cached and version-stamped in the model cache
(tsynd_tf.cache). It is a measuring instrument, not part of any method: it sees more labels
than the low-data runs it measures, and nothing trains on its outputs. Its features are
global-average-pooled activations (of the last stage, or of every stage concatenated).
docs/QUALITY.md says which recipe was chosen and why, from degradations of known strength
(bench/quality_yardstick.py).

`PoolQuality(dataset, cache_dir)` holds the reference, the features of the training split
and of up to REAL_IMAGES of them (the target distribution); `measure(split)` gives FID, KID,
precision/recall (k=3), label fidelity, diversity, per-class nearest-neighbour diversity
(`collapsed_classes` reads it) and memorisation in pixels and in the features
(tsynd_tf.quality) of a set of images. The real labelled images, measured the same
way, are the floor a generator is read against. These are in-domain numbers: comparable
between methods on one dataset and reference version, not with published FIDs.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from tsynd_tf import cache, data, models, quality, uncertainty
from tsynd_tf.reference_recipes import DEFAULT_RECIPE, RECIPES, Recipe

log = logging.getLogger(__name__)

# Bumped when a recipe or the default changes (tsynd_tf.reference_recipes): older cached
# references are not used.
# 1: small_cnn, 10 epochs. 2: recipes; the default became the wide CNN (docs/QUALITY.md).
REFERENCE_VERSION = 2
REFERENCE_BATCH = 128
REFERENCE_SEED = 0
WIDTH = 32  # the wide CNN's first-stage channels (part of its recipe: bump the version)
REAL_IMAGES = 2000  # training images the synthetic ones are compared with (seeded sample)
MEMORISATION_QUANTILE = 0.05  # of held-out images' nearest-training-image distances
# A class of a set whose nearest-neighbour diversity (quality.nearest_diversity) is below
# this is collapsed: its images are closer to each other than real images of the class are.
# Calibrated on BreastMNIST 10% (bench/collapse_calibration.py, docs/QUALITY.md "Collapsed
# classes"): real labelled/validation/test images of a class 0.90-1.05, k labelled images
# repeated 0.00 for every k, the GAN's repeated malignant shape 0.73 (its benign 0.80),
# `augment`'s 128 variations of the 15 labelled malignant images 0.70 (benign 0.83).
COLLAPSE_THRESHOLD = 0.75


def _stage_features_small_cnn(info: data.DatasetInfo, channels: int):
    classifier = models.build_classifier("small_cnn", info.size, channels, info.num_classes,
                                         dropout_rate=0.3)
    pooled = next(layer for layer in classifier.layers
                  if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    return classifier.input, [pooled.output], classifier.output


def _stage_features_wide_cnn(info: data.DatasetInfo, channels: int):
    """Two 3x3 conv-BN-ReLU per stage, widths 32, 64, 128(, 256), max-pool between stages:
    0.29M parameters at 28 px, ~12x small_cnn, and ordinary (inference-off) dropout, so
    features are deterministic. ResNet-18 (tsynd_tf.models) trains at ~64 img/s on these
    2 cores (bench/results/throughput_resnet18_float32.md): 75 s per epoch of
    PneumoniaMNIST's 4,708 images, most of an hour to convergence."""
    inputs = keras.Input((info.size, info.size, channels), name="image")
    x, pooled = inputs, []
    for stage in range(models.num_downsamplings(info.size) + 1):
        if stage:
            x = keras.layers.MaxPooling2D()(x)
        for _ in range(2):
            x = keras.layers.Conv2D(WIDTH * 2 ** min(stage, 3), 3, padding="same",
                                    use_bias=False)(x)
            x = keras.layers.ReLU()(keras.layers.BatchNormalization(
                momentum=models.BN_MOMENTUM)(x))
        pooled.append(keras.layers.GlobalAveragePooling2D(name=f"pooled_{stage}")(x))
    x = keras.layers.Dropout(0.3)(pooled[-1])
    logits = keras.layers.Dense(info.num_classes, dtype="float32", name="logits")(x)
    return inputs, pooled, logits


def build_reference(info: data.DatasetInfo, channels: int,
                    recipe: Recipe = RECIPES[DEFAULT_RECIPE]) -> keras.Model:
    """The reference classifier's network: image -> (features, logits)."""
    builders = {"small_cnn": _stage_features_small_cnn, "wide_cnn": _stage_features_wide_cnn}
    inputs, pooled, logits = builders[recipe.network](info, channels)
    features = (keras.layers.Concatenate()(pooled) if recipe.multi_layer and len(pooled) > 1
                else pooled[-1])
    return keras.Model(inputs, [features, logits], name="reference")


def _augmenter() -> keras.Sequential:
    return keras.Sequential([
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=REFERENCE_SEED),
        keras.layers.RandomRotation(0.03, fill_mode="nearest", seed=REFERENCE_SEED),
        keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=REFERENCE_SEED)])


def train_reference(network: keras.Model, dataset: data.Dataset, recipe: Recipe) -> None:
    trainer = keras.Model(network.input, network.output[1])
    loss = (keras.losses.BinaryCrossentropy(from_logits=True) if dataset.info.multilabel else
            keras.losses.CategoricalCrossentropy(from_logits=True))
    trainer.compile(keras.optimizers.Adam(1e-3), loss)
    trainer.optimizer.build(trainer.trainable_variables)  # else the first step traces twice
    batches = data.make_pipeline(dataset.train.images, dataset.train.targets, REFERENCE_BATCH,
                                 shuffle=True, seed=REFERENCE_SEED)
    if recipe.augment:
        augmenter = _augmenter()
        batches = batches.map(lambda x, y: (augmenter(x, training=True), y))
    validation, callbacks = None, []
    if recipe.patience:
        validation = data.make_pipeline(dataset.val.images, dataset.val.targets,
                                        REFERENCE_BATCH)
        callbacks = [keras.callbacks.EarlyStopping(
            "val_loss", patience=recipe.patience, restore_best_weights=True,
            start_from_epoch=recipe.patience)]
    log.info("Reference classifier (%s) on the %d training images of %s, up to %d epochs.",
             recipe.network, len(dataset.train), dataset.info.name, recipe.max_epochs)
    history = trainer.fit(batches, epochs=recipe.max_epochs, validation_data=validation,
                          callbacks=callbacks, verbose=0, shuffle=False)
    log.info("Reference classifier trained for %d epochs.", len(history.history["loss"]))


def load_reference(dataset: data.Dataset, cache_dir: str | None,
                   recipe_name: str = DEFAULT_RECIPE) -> tuple[keras.Model, dict]:
    """The dataset's reference network, from the cache or trained into it, and its record."""
    if recipe_name not in RECIPES:
        raise ValueError(f"Unknown reference recipe {recipe_name!r}; one of {list(RECIPES)}.")
    recipe = RECIPES[recipe_name]
    info, channels = dataset.info, dataset.train.images.shape[-1]
    entry = cache.entry(cache_dir, "reference", {
        "version": REFERENCE_VERSION, "dataset": info.name, "size": info.size,
        "channels": int(channels), "data": data.fingerprint(dataset)["sha256"][:16],
        **recipe.training_settings()})
    keras.utils.set_random_seed(REFERENCE_SEED)  # the same reference in every process
    network = build_reference(info, channels, recipe)
    record = cache.fetch(entry, network, lambda: train_reference(network, dataset, recipe))
    return network, {**record, "recipe": recipe_name}


class PoolQuality:
    """Measures sets of images against the dataset's training images."""

    def __init__(self, dataset: data.Dataset, cache_dir: str | None, batch_size: int = 256,
                 recipe: str | None = None):
        self.info, self.batch_size = dataset.info, batch_size
        # None: DEFAULT_RECIPE as it is when called (a test may patch it to a cheaper one).
        self.network, self.record = load_reference(dataset, cache_dir,
                                                   recipe or DEFAULT_RECIPE)
        # Memorisation compares with every training image (a copy of any of them counts);
        # FID and the others with a seeded sample of them.
        self.train_images = dataset.train.images
        self.train_features, _ = self.features(self.train_images)
        rng = np.random.default_rng(REFERENCE_SEED)
        chosen = np.sort(rng.choice(len(dataset.train), min(REAL_IMAGES, len(dataset.train)),
                                    replace=False))
        self.real_targets = dataset.train.targets[chosen]
        self.real_features = self.train_features[chosen]
        val_features, val_probs = self.features(dataset.val.images)
        self.record["val_acc"] = quality.label_fidelity(val_probs, dataset.val.targets)
        # Held-out real images are new draws from the data distribution: the distance to
        # the training set that 95% of them exceed is where "closer" starts to mean copied.
        self.thresholds = {
            space: quality.memorisation_threshold(
                quality.nearest_distances(held_out, train), MEMORISATION_QUANTILE)
            for space, held_out, train in (
                ("pixels", dataset.val.images, self.train_images),
                ("features", val_features, self.train_features))}
        self.record["memorisation_thresholds"] = dict(self.thresholds)

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features, class probabilities) of uint8 images, training=False forward passes
        (small_cnn's MC dropout stays on: its features are samples; the wide CNN's are not)."""
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

    def memorisation(self, images: np.ndarray, features: np.ndarray) -> dict:
        """Share of `images` closer to a training image than 95% of held-out images are, in
        pixels (uint8 L2) and in the reference's features."""
        return {f"memorisation_{space}": quality.memorisation(
                    quality.nearest_distances(query, train), self.thresholds[space])
                for space, query, train in (("pixels", images, self.train_images),
                                            ("features", features, self.train_features))}

    def nearest_diversity(self, features: np.ndarray, targets: np.ndarray) -> dict:
        """{nearest_diversity/<class>: ratio} against the class's training images, for the
        classes both hold twice or more (quality.nearest_diversity)."""
        names = self.info.class_names
        return {f"nearest_diversity/{names[c]}": ratio for c, ratio in
                quality.nearest_diversity(self.real_features, self.real_targets, features,
                                          targets).items()}

    def per_class(self, features: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> dict:
        """{label_fidelity|precision|recall/<class>: value}: the pool's class c against the
        real images of class c, for the classes both hold more than 3 of (k=3 balls). A
        pool whose one class is poor hides behind a good majority class in the overall
        numbers (BreastMNIST's malignant third)."""
        found = {}
        real_class, pool_class = np.argmax(self.real_targets, 1), np.argmax(targets, 1)
        for c, name in enumerate(self.info.class_names):
            mine = pool_class == c
            if mine.sum() <= 3 or (real_class == c).sum() <= 3:
                continue
            precision, recall = quality.precision_recall(self.real_features[real_class == c],
                                                         features[mine], k=3)
            found.update({f"label_fidelity/{name}": quality.label_fidelity(probs[mine],
                                                                           targets[mine]),
                          f"precision/{name}": precision, f"recall/{name}": recall})
        return found

    def measure(self, split: data.Split) -> dict:
        """FID, KID, precision, recall, label fidelity (overall and per class), diversity
        and memorisation of `split`'s images."""
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
                                               features, split.targets),
                **self.per_class(features, probs, split.targets),
                **self.nearest_diversity(features, split.targets),
                **self.memorisation(split.images, features)}


def by_class(measured: dict, metric: str) -> dict[str, float]:
    """{class: value} of one per-class metric ('label_fidelity', 'nearest_diversity', ...)
    of a `PoolQuality.measure` result (its keys '<metric>/<class>')."""
    prefix = f"{metric}/"
    return {key[len(prefix):]: value for key, value in measured.items()
            if key.startswith(prefix)}


def collapsed_classes(measured: dict) -> list[str]:
    """The classes of a `PoolQuality.measure` result below COLLAPSE_THRESHOLD."""
    return [name for name, value in by_class(measured, "nearest_diversity").items()
            if value < COLLAPSE_THRESHOLD]
