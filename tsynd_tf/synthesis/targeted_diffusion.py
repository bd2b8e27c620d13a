"""`tsynd_diffusion`: new labelled images where the classifier is uncertain, from the
class-conditional diffusion model steered by the classifier's mutual information.

TSynD moves a labelled image's latent towards higher epistemic uncertainty; its authors name
generating new uncertain samples as the next step. This method does that with the diffusion
model of `diffusion`: the same generator (Diffusion.fit, the same cache entry, so a sweep
that runs both trains it once), sampled each round with uncertainty guidance
(diffusion_model.UncertaintyGuide): at every --guidance_every-th DDIM step the predicted clean
image is moved up the gradient of the MC-dropout classifier's mutual information over
--num_samples passes, by --uncertainty_guidance. The label a sample is drawn for conditions
every step and is its target. `tsynd_diffusion_entropy` ascends the predictive entropy.

The classifier's dropout masks during a pool are a function of (--seed, round), and its
dropout state is left as it was: a regenerated pool is the same and training draws the masks
it would have drawn. Each pool keeps every image's MI and predictive entropy under the
classifier (the stored uint8 image, --num_samples passes) and logs them to TensorBoard.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from tsynd_tf import uncertainty
from tsynd_tf.evaluation import seeded_dropout
from tsynd_tf.synthesis import generators
from tsynd_tf.synthesis.base import Pool
from tsynd_tf.synthesis.diffusion import Diffusion
from tsynd_tf.synthesis.diffusion_model import UncertaintyGuide


class TSynDDiffusion(Diffusion):
    """`tsynd_diffusion`: diffusion samples guided up the classifier's mutual information."""

    objective = "mi"
    reads_classifier = True

    def __init__(self, context):
        super().__init__(context)
        self.guide = None

    def guide_for(self, classifier) -> UncertaintyGuide:
        """The guide of this classifier, built once (its traced step is reused)."""
        if self.guide is None or self.guide.classifier is not classifier:
            config = self.config
            self.guide = UncertaintyGuide(classifier, self.objective,
                                          config.uncertainty_guidance, config.guidance_every,
                                          config.num_samples, self.context.info.multilabel)
        return self.guide

    def sample(self, labels: np.ndarray, seed: int, classifier) -> np.ndarray:
        if self.config.uncertainty_guidance == 0:
            return super().sample(labels, seed, classifier)  # the diffusion pool itself
        config = self.config
        # The guide runs T passes on every image of a batch: keep those within one call.
        batch_size = uncertainty.images_per_call(self.context.eval_batch_size,
                                                 self.context.val_images.shape[1:],
                                                 config.num_samples)
        return self.model.sample(labels, config.ddim_steps, config.guidance_scale, seed,
                                 batch_size=batch_size, guide=self.guide_for(classifier))

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        config, context, start = self.config, self.context, time.time()
        with seeded_dropout(classifier, config.stream_seed(round_index)):
            pool = super().pool(round_index, classifier, n)
            measures = {name: generators.pool_uncertainty(context, classifier, split.images,
                                                          split.targets)
                        for name, split in (("synthetic", pool.as_split()),
                                            ("real", self.labelled))}
        pool.diagnostics.update(
            mutual_information=measures["synthetic"]["mutual_information"],
            predictive_entropy=measures["synthetic"]["predictive_entropy"])
        self.log_pool(round_index, pool, measures, time.time() - start)
        return pool

    def log_pool(self, round_index: int, pool: Pool, measures: dict, seconds: float) -> None:
        """TensorBoard: MC uncertainty of the synthetic and the labelled real images, the
        pool's time, and its first images."""
        generators.log_pool_uncertainty(
            self.context.writer, round_index, measures, seconds,
            f" ({self.objective} guidance {self.config.uncertainty_guidance:g})")
        with self.context.writer.as_default(step=round_index):
            grid = np.concatenate(list(pool.images[:8]), axis=1)
            tf.summary.image("generation/synthetic", grid[None], max_outputs=1)


class TSynDDiffusionEntropy(TSynDDiffusion):
    """`tsynd_diffusion_entropy`: the same guidance up the predictive entropy (ablation)."""

    objective = "entropy"
