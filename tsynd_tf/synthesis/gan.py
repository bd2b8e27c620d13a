"""`gan`: new labelled images from a class-conditional GAN (synthesis/gan_model.py).

`fit` trains the GAN on the labelled images for --generator_steps batches of --batch_size
(G at --generator_learning_rate, D at gan_model.D_LEARNING_RATE_RATIO times it), once per
(labelled subset, settings): the EMA generator's weights go to the model cache
(tsynd_tf.cache, --cache_dir), where a resumed run, another method sampling the same model,
or another run of a sweep finds them. Each round samples n images; their labels are drawn
from the labelled set's class frequencies, so the pool has the labelled set's class mix.

Mode-collapse guard. A collapsed GAN makes near-copies of a few images for a class, however
real each looks. After the generator is trained or loaded, `fit` samples GUARD_IMAGES images
of every class and computes quality.diversity in pixel space: their mean pairwise distance
over that of (up to GUARD_IMAGES of) the class's labelled images. A class below
COLLAPSE_RATIO is collapsed. Calibrated on PneumoniaMNIST 10% at 28 px: a class whose samples
were visibly near-copies of one image scored 0.33; the chosen recipe after 1,000 steps
0.56-0.59 (pneumonia) and 0.80-0.87 (normal); an untrained generator ~1.8 (noise is diverse);
a constant generator 0. A class with fewer than 2 labelled images cannot be judged (None).

The guard warns and records, it does not fail: the per-class ratios and the collapsed classes
go into `generator_record` (class_diversity, collapsed_classes) and a warning names them. A
collapsed class is an outcome of this generator on this labelled subset, which the comparison
of methods must report rather than drop: failing the run would leave the sweep's paired design
without this cell, and only for the seeds where the GAN did badly, biasing the GAN's results
upwards. The threshold is also a heuristic in pixel space, too coarse to stop a sweep on.
"""

from __future__ import annotations

import logging

import numpy as np

from tsynd_tf import data, quality
from tsynd_tf.data.pipeline import to_uint8
from tsynd_tf.synthesis import generators
from tsynd_tf.synthesis.base import Pool, SynthesisMethod
from tsynd_tf.synthesis.gan_model import build_gan, gan_optimizers

log = logging.getLogger(__name__)
GENERATOR = "gan"
# Bumped when the networks or their training change: cached models of an older version are
# not reused.
GAN_VERSION = 1
GUARD_IMAGES = 128
COLLAPSE_RATIO = 0.4


class GAN(SynthesisMethod):
    def __init__(self, context):
        super().__init__(context)
        info = context.info
        self.model = build_gan(info.size, context.val_images.shape[-1], info.num_classes,
                               seed=self.config.seed)
        self.model.compile(*gan_optimizers(self.config.generator_learning_rate),
                           jit_compile=self.config.jit_compile)

    def fit(self, labelled: data.Split, unlabelled: data.Split) -> None:
        self.labelled = labelled
        generators.require_every_class(self.context, labelled)
        record = generators.fetch(
            self.context, generators.generator_entry(self.context, GENERATOR, GAN_VERSION),
            self.model.ema, lambda: self.train(labelled))
        self.generator_record = {**record, **self.collapse_check(labelled)}

    def train(self, labelled: data.Split) -> None:
        """--generator_steps batches of the labelled images (bench.generators times it)."""
        generators.fit_on_labelled(self.context, self.model, labelled, "GAN")

    def collapse_check(self, labelled: data.Split) -> dict:
        """{class_diversity: {class: ratio or None}, collapsed_classes: [...]} of the EMA
        generator (module docstring); warns when a class collapsed."""
        names = self.context.info.class_names
        labels = np.repeat(np.arange(len(names)), GUARD_IMAGES)
        samples = self.model.sample(labels, self.config.seed,
                                    batch_size=self.context.eval_batch_size)
        real_labels = labelled.targets.argmax(1)
        ratios = {}
        for k, name in enumerate(names):
            real = labelled.images[real_labels == k][:GUARD_IMAGES].astype(np.float32) / 255.0
            fake = samples[labels == k]
            ratio = quality.diversity(real.reshape(len(real), -1), np.ones((len(real), 1)),
                                      fake.reshape(len(fake), -1), np.ones((len(fake), 1)))
            ratios[name] = None if np.isnan(ratio) else round(ratio, 4)
        collapsed = [name for name, ratio in ratios.items()
                     if ratio is not None and ratio < COLLAPSE_RATIO]
        if collapsed:
            log.warning("The GAN's samples of %s are near-copies (pixel diversity %s of the "
                        "labelled images', < %g): its pools of them hold little variety. More "
                        "--generator_steps or another --generator_learning_rate may help.",
                        collapsed, {name: ratios[name] for name in collapsed}, COLLAPSE_RATIO)
        return {"class_diversity": ratios, "collapsed_classes": collapsed}

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        seed = self.config.stream_seed(round_index)
        labels, targets = generators.pool_labels(self.labelled, n, seed)
        images = self.model.sample(labels, seed, batch_size=self.context.eval_batch_size)
        return Pool(to_uint8(images), targets)
