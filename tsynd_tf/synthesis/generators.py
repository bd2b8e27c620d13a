"""What the generating methods share: written once here, used by every generator module.

  stream seeds        config.TrainConfig.stream_seed(round): a round's draws and sampling
  sources             draw_sources: which labelled images a round's pool starts from
  labels              pool_labels: class-conditional pools with the labelled class mix
  training            fetch (the model cache, or lockstep training in multi-worker runs) and
                      fit_on_labelled (--generator_steps seeded batches of labelled images)
  cache entries       generator_entry: one entry per (dataset, labelled subset, settings)
  sizes               generator_size: --generator_size with 'auto' resolved
  EMA                 update_ema: the averaged weights that sample and are cached
  batched sampling    sample_in_batches: a sampler called on slices of a label vector
  gradient scale      gradient_scale: keeps float16 gradients of a normalised step out of
                      underflow (the latent ascent and the uncertainty guide)
  pool uncertainty    pool_uncertainty (MC measures of a pool's images) and
                      log_pool_uncertainty (TensorBoard and the log)
"""

from __future__ import annotations

import hashlib
import logging
import time

import keras
import numpy as np
import tensorflow as tf

from tsynd_tf import cache, data, distribute, uncertainty

log = logging.getLogger(__name__)

# Under mixed_float16 the summed uncertainty's gradient underflows; any constant works
# because the steps that use it are normalised.
FLOAT16_GRADIENT_SCALE = 1024.0


def gradient_scale(model: keras.Model) -> float:
    """The loss scale for a gradient taken through `model` before a normalised step."""
    return FLOAT16_GRADIENT_SCALE if model.compute_dtype == "float16" else 1.0


def draw_sources(num_labelled: int, n: int, seed: int) -> np.ndarray:
    """n indices of labelled images, seeded; with replacement only when n exceeds them."""
    return np.random.default_rng(seed).choice(num_labelled, size=n, replace=n > num_labelled)


def pool_labels(labelled: data.Split, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n class indices drawn from the labelled images' labels (seeded) and their one-hot
    targets: a class-conditional generator's pool has the labelled set's class mix."""
    labels = np.random.default_rng(seed).choice(labelled.targets.argmax(1), size=n)
    return labels, np.eye(labelled.targets.shape[1], dtype=np.float32)[labels]


def require_every_class(context, labelled: data.Split) -> None:
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


def grey_content(images: np.ndarray) -> bool:
    """Whether colour images hold grey content: every channel equals the first. Read on the
    validation images, which exist before a generator is built, from the same source as
    the labelled ones."""
    return images.shape[-1] > 1 and bool(np.all(images == images[..., :1]))


def generator_size(config) -> str:
    """--generator_size, 'auto' resolved: large when TensorFlow sees a GPU, else small."""
    if config.generator_size != "auto":
        return config.generator_size
    return "large" if tf.config.list_physical_devices("GPU") else "small"


def generator_entry(context, name: str, version: int, **settings) -> cache.Entry:
    """The cache entry of a generator trained on this run's labelled images: the same for
    every method and run directory of one (dataset, labelled subset, generator settings);
    `settings` are the generator's own (its steps, learning rate, recipe)."""
    config = context.config
    labelled = hashlib.sha256(np.asarray(context.labelled_indices, np.int64).tobytes())
    return cache.entry(config.cache_dir, name, {
        "version": version, "dataset": context.info.name, "data": context.data_fingerprint[:16],
        "size": context.info.size,
        "channels": int(context.val_images.shape[-1]), "seed": config.seed,
        "labelled": labelled.hexdigest()[:16], "batch_size": config.batch_size,
        # The dtype policy in force (--mixed_precision resolved): bfloat16 weights are
        # another generator than float32 ones.
        "precision": keras.mixed_precision.dtype_policy().name, **settings})


def fetch(context, entry: cache.Entry, model, train) -> dict:
    """`cache.fetch(entry, model, train)`, except in multi-worker training: there every
    worker trains the generator in lockstep (its steps are collective), which the entry's
    lock would deadlock, so the cache is neither read nor written."""
    if distribute.task(context.strategy)[0] is None:
        return cache.fetch(entry, model, train)
    start = time.time()
    train()
    return {"kind": entry.kind, "settings": entry.settings, "entry": None,
            "seconds": round(time.time() - start, 1), "loaded": False}


def fit_on_labelled(context, model: keras.Model, labelled: data.Split, what: str) -> None:
    """`model.fit` for --generator_steps seeded batches of --batch_size labelled images
    (with their labels): how a class-conditional generator trains."""
    config = context.config
    batches = data.make_pipeline(labelled.images, labelled.targets, config.batch_size,
                                 shuffle=True, seed=config.seed, repeat=True)
    log.info("%s on %d images, %d steps.", what, len(labelled), config.generator_steps)
    model.fit(batches, epochs=1, steps_per_epoch=config.generator_steps,
              verbose=context.verbose, shuffle=False)


def update_ema(average: keras.Model, model: keras.Model, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, weight by weight (in a train_step)."""
    for averaged, weight in zip(average.weights, model.weights):
        averaged.assign(decay * averaged + (1.0 - decay) * weight)


def sample_in_batches(sample, labels: np.ndarray, batch_size: int,
                      empty_shape: tuple) -> np.ndarray:
    """np.concatenate of `sample(label_chunk, start)` over slices of `labels` of at most
    batch_size (start: the slice's first index, for seeding); (0, *empty_shape) for none."""
    out = [sample(tf.constant(labels[start:start + batch_size], tf.int32), start)
           for start in range(0, len(labels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, *empty_shape), np.float32)


def pool_uncertainty(context, classifier: keras.Model, images: np.ndarray,
                     targets: np.ndarray) -> dict:
    """uncertainty.mc_predict of uint8 images under the run's classifier, traced once for
    every batch size (image_shape). Why: a traced step of batch size b and the relaxed one
    differ in the last float bit, and which of them a batch meets depends on what the process
    traced before. Measuring pools with a step of their own keeps them out of the trace
    history of the run's validation and test evaluation, so a run resumed just before a pool
    (whose process measured the pool first) evaluates bit for bit as an uninterrupted one."""
    return uncertainty.mc_predict(
        classifier, data.make_pipeline(images, targets, context.eval_batch_size),
        context.config.num_samples, context.info.multilabel, image_shape=images.shape[1:])


def log_pool_uncertainty(writer, round_index: int, measures: dict, seconds: float,
                         describe: str = "") -> None:
    """TensorBoard generation/... scalars and histograms of each {name: mc_predict output}
    (e.g. real, synthetic) and the pool's seconds; one log line."""
    with writer.as_default(step=round_index):
        for name, out in measures.items():
            tf.summary.scalar(f"generation/mi_{name}", out["mutual_information"].mean())
            tf.summary.scalar(f"generation/entropy_{name}", out["predictive_entropy"].mean())
            tf.summary.histogram(f"generation/mi_{name}_histogram", out["mutual_information"])
        tf.summary.scalar("generation/seconds", seconds)
    log.info("Round %d pool: %d images in %.1fs; MI %s%s.", round_index,
             len(measures["synthetic"]["mutual_information"]), seconds,
             ", ".join(f"{name} {out['mutual_information'].mean():.4f}"
                       for name, out in measures.items()), describe)
