"""`diffusion`: new labelled images from a class-conditional diffusion model.

`fit` trains the model (synthesis/diffusion_model.py; its recipe is
diffusion_model.SIZES[--generator_size]) on the labelled images for --generator_steps
batches of --batch_size at the recipe's learning rate, once per (labelled subset, settings): the trained
EMA weights go to the model cache (tsynd_tf.cache, --cache_dir), where a resumed run, another
method sampling the same model, or another run of a sweep finds them. Each round samples n
images by DDIM (--ddim_steps) with classifier-free guidance (--guidance_scale); their labels
are drawn from the labelled set's class frequencies, so the pool has the labelled set's
class mix.
"""

from __future__ import annotations

import keras
import numpy as np

from tsynd_tf import data
from tsynd_tf.data.pipeline import to_uint8
from tsynd_tf.synthesis import generators
from tsynd_tf.synthesis.base import Pool, SynthesisMethod
from tsynd_tf.synthesis.diffusion_model import SIZES, Recipe, build_diffusion

GENERATOR = "diffusion"
# Bumped when the network or its training changes: cached models of an older version are
# not reused. 2: recipes (SIZES), v-prediction, EMA start. 3: the learning rate is the
# recipe's; `small` is v-prediction with attention at lr 1e-3 (docs/PERFORMANCE.md).
DIFFUSION_VERSION = 3


def recipe_of(record: dict) -> Recipe:
    """The recipe a cached generator's record names (version 1 records name none: theirs
    is Recipe's defaults)."""
    recorded = record["settings"].get("recipe", {})
    return Recipe(**{**recorded, **({"widths": tuple(recorded["widths"])}
                                    if "widths" in recorded else {})})


class Diffusion(SynthesisMethod):
    def __init__(self, context, recipe: Recipe | None = None):
        """`recipe`: SIZES[--generator_size] unless given (bench.diffusion_recipes tries
        others)."""
        super().__init__(context)
        info, channels = context.info, context.val_images.shape[-1]
        recipe = recipe or SIZES[generators.generator_size(self.config)]
        # Grey content stored as colour (e.g. the chest X-ray folder at --channels=3): a
        # 3-channel model must learn that its channels are equal and, in 1,500 steps, does
        # not (issue 26.1, docs/PERFORMANCE.md); one channel repeated is equal by design.
        self.grey = generators.grey_content(context.val_images)
        self.model = build_diffusion(info.size, channels, info.num_classes, recipe,
                                     self.config.seed, grey=self.grey)
        self.model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate),
                           jit_compile=self.config.jit_compile)

    def fit(self, labelled: data.Split, unlabelled: data.Split) -> None:
        self.labelled = labelled
        generators.require_every_class(self.context, labelled)
        entry = generators.generator_entry(self.context, GENERATOR, DIFFUSION_VERSION,
                                           generator_steps=self.config.generator_steps,
                                           recipe=self.model.recipe.settings(),
                                           **({"grey": True} if self.grey else {}))
        self.generator_record = generators.fetch(self.context, entry, self.model.ema,
                                                 lambda: self.train(labelled))

    def train(self, labelled: data.Split) -> None:
        """--generator_steps batches of the labelled images (bench.generators times it)."""
        generators.fit_on_labelled(self.context, self.model, labelled, "Diffusion model")

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        seed = self.config.stream_seed(round_index)
        labels, targets = generators.pool_labels(self.labelled, n, seed)
        images = self.sample(labels, seed, classifier)
        return Pool(to_uint8(np.clip(images, 0.0, 1.0)), targets)

    def sample(self, labels: np.ndarray, seed: int, classifier) -> np.ndarray:
        """Images in [0, 1] for `labels`; this method does not read the classifier (the
        targeted one does: targeted_diffusion.TSynDDiffusion)."""
        return self.model.sample(labels, self.config.ddim_steps, self.config.guidance_scale,
                                 seed, batch_size=self.context.eval_batch_size)
