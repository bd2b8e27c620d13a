"""The reference classifiers' recipes (tsynd_tf.reference), by name.

A module of names and settings only, importing nothing heavy, so that a command checks a
recipe name it was given (bench/quality_yardstick.py --references) before TensorFlow loads.
docs/QUALITY.md says why DEFAULT_RECIPE is the default. A change to a recipe or to the
default bumps reference.REFERENCE_VERSION, so that older cached references are not used.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A reference network, how it is trained, and which of its activations are features."""
    network: str  # "small_cnn" (tsynd_tf.models) or "wide_cnn" (tsynd_tf.reference)
    max_epochs: int
    # Geometric augmentation only: photometric augmentation (contrast, noise) would teach
    # the features to ignore exactly the degradations the yardstick must see.
    augment: bool = False
    # > 0: early stopping on validation loss once `patience` epochs have passed (BreastMNIST
    # has 5 steps per epoch and 78 noisy validation images), the best weights kept.
    patience: int = 0
    multi_layer: bool = False  # features of every stage, concatenated; not a training setting

    def training_settings(self) -> dict:
        """What the cached weights depend on (multi_layer only reads them differently)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "multi_layer"}


RECIPES = {
    "small_cnn": Recipe("small_cnn", max_epochs=10),  # version 1's reference
    "wide_cnn": Recipe("wide_cnn", max_epochs=40, augment=True, patience=10),
    "wide_cnn_multi": Recipe("wide_cnn", max_epochs=40, augment=True, patience=10,
                             multi_layer=True),
}
DEFAULT_RECIPE = "wide_cnn"
