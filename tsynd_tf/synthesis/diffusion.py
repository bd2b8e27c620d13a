"""`diffusion`: new labelled images from a class-conditional diffusion model.

`fit` trains the model (synthesis/diffusion_model.py) on the labelled images for
--generator_steps batches of --batch_size, once per run: the trained EMA weights are cached
in the run directory (runs.RunDir.generator_file) with the settings they were trained with,
and a resumed run, or a second call, loads them instead of training again. A cached
generator from other settings, or one that does not load, is trained again (with a warning),
never trusted. Each round samples n images by DDIM (--ddim_steps) with classifier-free
guidance (--guidance_scale); their labels are drawn from the labelled set's class
frequencies, so the pool has the labelled set's class mix.
"""

from __future__ import annotations

import json
import logging
import time

import keras
import numpy as np

from tsynd_tf import data
from tsynd_tf.data.pipeline import to_uint8
from tsynd_tf.fileio import atomic_path, read_json, write_json
from tsynd_tf.synthesis.base import Pool, SynthesisMethod
from tsynd_tf.synthesis.diffusion_model import DiffusionModel, build_unet

log = logging.getLogger(__name__)
GENERATOR = "diffusion"


class Diffusion(SynthesisMethod):
    def __init__(self, context):
        super().__init__(context)
        info, channels = context.info, context.val_images.shape[-1]
        self.model = DiffusionModel(build_unet(info.size, channels, info.num_classes),
                                    build_unet(info.size, channels, info.num_classes),
                                    info.num_classes, seed=self.config.seed)
        self.model.compile(optimizer=keras.optimizers.Adam(self.config.generator_learning_rate),
                           jit_compile=self.config.jit_compile)

    def settings(self) -> dict:
        c = self.config
        return {"dataset": self.context.info.name, "size": self.context.info.size,
                "seed": c.seed, "train_fraction": c.train_fraction, "train_count": c.train_count,
                "generator_steps": c.generator_steps, "batch_size": c.batch_size,
                "generator_learning_rate": c.generator_learning_rate}

    def fit(self, labelled: data.Split, unlabelled: data.Split) -> None:
        self.labelled = labelled
        if self.context.info.multilabel:
            raise data.DataError("--method=diffusion conditions on one class per image; "
                                 f"{self.context.info.name} is multi-label.")
        missing = [self.context.info.class_names[k] for k, n in
                   enumerate(labelled.class_counts()) if n == 0]
        if missing:
            raise data.DataError(f"the labelled subset has no image of {missing}: a "
                                 "class-conditional generator cannot learn them; raise "
                                 "--train_fraction or --train_count.")
        if self.load_cached():
            return
        config, start = self.config, time.time()
        batches = data.make_pipeline(labelled.images, labelled.targets, config.batch_size,
                                     shuffle=True, seed=config.seed, repeat=True)
        log.info("Diffusion model on %d images, %d steps.", len(labelled), config.generator_steps)
        self.model.fit(batches, epochs=1, steps_per_epoch=config.generator_steps,
                       verbose=self.context.verbose, shuffle=False)
        path = self.context.run_dir.generator_file(GENERATOR)
        with atomic_path(path, ".weights.h5") as tmp:
            self.model.ema.save_weights(tmp)
        write_json(self.context.run_dir.generator_settings_file(GENERATOR),
                   {**self.settings(), "seconds": round(time.time() - start, 1)})

    def load_cached(self) -> bool:
        path = self.context.run_dir.generator_file(GENERATOR)
        recorded = read_json(self.context.run_dir.generator_settings_file(GENERATOR))
        if recorded is None or not path.exists():
            return False
        recorded.pop("seconds", None)
        if recorded != self.settings():
            log.warning("%s was trained with other settings (%s); training again.", path,
                        json.dumps(recorded, sort_keys=True))
            return False
        try:
            self.model.ema.load_weights(path)
        except Exception as e:  # noqa: BLE001 - a corrupt .h5 raises many types
            log.warning("%s does not load (%s: %s); training again.", path,
                        type(e).__name__, e)
            return False
        log.info("Diffusion model loaded from %s.", path)
        return True

    def pool(self, round_index: int, classifier, n: int) -> Pool:
        seed = self.config.seed * 1000 + round_index
        rng = np.random.default_rng(seed)
        labels = rng.choice(self.labelled.targets.argmax(1), size=n)
        images = self.model.sample(labels, self.config.ddim_steps, self.config.guidance_scale,
                                   seed, batch_size=self.context.eval_batch_size)
        targets = np.eye(self.context.info.num_classes, dtype=np.float32)[labels]
        return Pool(to_uint8(np.clip(images, 0.0, 1.0)), targets)
