"""`gan`: new labelled images from a class-conditional GAN (synthesis/gan_model.py).

`fit` trains the GAN on the labelled images for --generator_steps batches of --batch_size
(G at --generator_learning_rate, D at gan_model.D_LEARNING_RATE_RATIO times it), once per
(labelled subset, settings): the EMA generator's weights go to the model cache
(tsynd_tf.cache, --cache_dir), where a resumed run, another method sampling the same model,
or another run of a sweep finds them. Each round samples n images; their labels are drawn
from the labelled set's class frequencies, so the pool has the labelled set's class mix.

Mode collapse is checked where every generating method's pools are measured, in the
reference classifier's features (finishing.measure_pools, reference.collapsed_classes,
docs/QUALITY.md "Collapsed classes"), not here: version 1's pixel-space check (pairwise
diversity vs the labelled images, threshold 0.4) passed the repeated malignant shape of
BreastMNIST 10% at 0.71.
"""

from __future__ import annotations

from tsynd_tf import data
from tsynd_tf.data.pipeline import to_uint8
from tsynd_tf.synthesis import generators
from tsynd_tf.synthesis.base import Pool, SynthesisMethod
from tsynd_tf.synthesis.gan_model import Recipe, build_gan, gan_optimizers

GENERATOR = "gan"
# Bumped when the networks or their training change: cached models of an older version are
# not reused.
GAN_VERSION = 1


class GAN(SynthesisMethod):
    def __init__(self, context, recipe: Recipe = Recipe()):
        """`recipe`: the default unless given (bench.gan_recipes tries others)."""
        super().__init__(context)
        info = context.info
        self.model = build_gan(info.size, context.val_images.shape[-1], info.num_classes,
                               seed=self.config.seed, recipe=recipe)
        self.model.compile(*gan_optimizers(self.config.generator_learning_rate, recipe),
                           jit_compile=self.config.jit_compile)

    def fit(self, labelled: data.Split, unlabelled: data.Split) -> None:
        self.labelled = labelled
        generators.require_every_class(self.context, labelled)
        record = generators.fetch(
            self.context, generators.generator_entry(
                self.context, GENERATOR, GAN_VERSION,
                generator_steps=self.config.generator_steps,
                generator_learning_rate=self.config.generator_learning_rate,
                **self.model.recipe.settings()),
            self.model.ema, lambda: self.train(labelled))
        self.generator_record = record

    def train(self, labelled: data.Split) -> None:
        """--generator_steps batches of the labelled images (bench.generators times it)."""
        generators.fit_on_labelled(self.context, self.model, labelled, "GAN")

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        seed = self.config.stream_seed(round_index)
        labels, targets = generators.pool_labels(self.labelled, n, seed)
        images = self.model.sample(labels, seed, batch_size=self.context.eval_batch_size)
        return Pool(to_uint8(images), targets)
