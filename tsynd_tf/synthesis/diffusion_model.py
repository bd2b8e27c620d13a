"""A small class-conditional diffusion model in Keras 3: U-Net, training step, DDIM sampler.

  network    a U-Net predicting the noise eps in x_t (or v, below), conditioned on the noise
             level (a sinusoidal embedding of t) and the class (an embedding with one extra
             "no class" row, for classifier-free guidance). Residual blocks with GroupNorm,
             swish and optional dropout; one down/up level per halving down to 7-8 px (at
             most len(widths) - 1), skip connections, optional self-attention at the lowest
             resolution. A Recipe names all of it; SIZES holds the ones the flag
             --generator_size chooses.
  schedule   cosine (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2((t + s) / (1 + s) * pi/2),
             t in [0, 1], s = 0.008; images are scaled to [-1, 1].
  training   DiffusionModel.train_step: t ~ U(0, 1), x_t = sqrt(ab) x + sqrt(1 - ab) eps, the
             label replaced by "no class" with probability LABEL_DROPOUT, MSE on the
             prediction target: eps, or v = sqrt(ab) eps - sqrt(1 - ab) x (Salimans & Ho
             2022), whose scale does not blow up x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) at
             the noisiest levels. An EMA copy of the weights (recipe.ema_decay, a plain copy
             before step recipe.ema_start) is what samples.
  sampling   DDIM (eta = 0, Song et al. 2021) over `steps` evenly spaced levels, with
             classifier-free guidance eps = (1 + w) eps(x, y) - w eps(x, none) (Ho & Salimans
             2022); one batched call holds the conditional and unconditional halves.
  uncertainty guidance (UncertaintyGuide, --method=tsynd_diffusion): at every k-th DDIM
             step the predicted clean image x0_hat, as the [0, 1] image the classifier trains
             on, is scored by the MC-dropout classifier's mutual information (or predictive
             entropy) over T batched passes, and moved up that score's gradient, per image
             normalised to unit RMS, by scale * sqrt(1 - alpha_bar(t)) (in [0, 1] pixel
             units), before the DDIM update re-noises it. Holding eps fixed, moving x0_hat by
             d is moving x_t by sqrt(alpha_bar(t)) d, so this nudges x_t; the gradient is
             taken with respect to x0_hat only (the U-Net's Jacobian is left out, as in
             universal guidance, Bansal et al. 2023): backpropagating through the U-Net
             would add a backward pass of the U-Net, the step's dominant cost, to every
             guided step; this way a guided step adds T forward and backward passes of the
             small classifier. The sqrt(1 - alpha_bar) factor puts the push where the noise
             is large and the U-Net's later steps turn it into image structure, and leaves
             the last, nearly clean steps almost untouched (on PneumoniaMNIST 10%, 25 DDIM
             steps, a constant push of 0.02-0.1 reached half the MI of this schedule). The class
             label (and classifier-free guidance) conditions every step as before; with
             scale 0 the sampler is the unguided one, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tsynd_tf import uncertainty
from tsynd_tf.models import num_downsamplings
from tsynd_tf.synthesis.generators import gradient_scale, sample_in_batches, update_ema

LABEL_DROPOUT, COSINE_OFFSET = 0.1, 0.008
PREDICTIONS = ("eps", "v")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The network and its training, apart from what flags set (steps, batch size, DDIM
    steps, classifier-free guidance). Recorded in the cache key. The defaults are
    version 1's network (bench.diffusion_recipes' "v1")."""
    widths: tuple[int, ...] = (32, 64, 64)  # per level; the first is the full resolution's
    blocks: int = 1  # residual blocks per level
    attention: bool = False  # self-attention at the lowest resolution
    dropout: float = 0.0  # inside each residual block
    prediction: str = "eps"  # what the network predicts: "eps" or "v"
    ema_decay: float = 0.995
    ema_start: int = 0  # steps before which the EMA copy equals the weights
    learning_rate: float = 2e-4  # Adam's

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"Unknown prediction {self.prediction!r}; one of {PREDICTIONS}.")

    def settings(self) -> dict:
        """As the cache records it (JSON: widths a list), so a record matches its key."""
        return {**dataclasses.asdict(self), "widths": list(self.widths)}


# --generator_size: "small" for CPUs (docs/PERFORMANCE.md has the search that chose it);
# "large" is near issue 26's GPU-trained DDPM (../shared/data/external_pools/README.md).
SIZES = {
    "small": Recipe(prediction="v", attention=True, learning_rate=1e-3),  # "v_attention"
    "large": Recipe(widths=(64, 128, 256), blocks=2, attention=True, dropout=0.1,
                    prediction="eps", ema_decay=0.999, ema_start=200, learning_rate=2e-4),
}


def alpha_bar(t: tf.Tensor) -> tf.Tensor:
    """Signal share of x_t at noise level t in [0, 1] (cosine schedule), clipped away from 0."""
    f = tf.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    f0 = math.cos(COSINE_OFFSET / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return tf.clip_by_value(f / f0, 1e-5, 1.0)


def _time_embedding(t: tf.Tensor, dim: int) -> tf.Tensor:
    half = dim // 2
    frequencies = tf.exp(-math.log(10000.0) * tf.range(half, dtype=tf.float32) / half)
    angles = 1000.0 * tf.cast(t, tf.float32)[:, None] * frequencies[None, :]
    return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)


class TimeEmbedding(layers.Layer):
    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim

    def call(self, t):
        return _time_embedding(tf.reshape(t, [-1]), self.dim)


def _groups(width: int) -> int:
    return 8 if width % 8 == 0 else 1


def _residual_block(x, embedding, width: int, dropout: float):
    skip = x if x.shape[-1] == width else layers.Conv2D(width, 1)(x)
    h = layers.Activation("swish")(layers.GroupNormalization(_groups(x.shape[-1]))(x))
    h = layers.Conv2D(width, 3, padding="same")(h)
    h = h + layers.Reshape((1, 1, width))(layers.Dense(width)(embedding))
    h = layers.Activation("swish")(layers.GroupNormalization(_groups(width))(h))
    if dropout:
        h = layers.Dropout(dropout)(h)
    h = layers.Conv2D(width, 3, padding="same")(h)
    return h + skip


def _attention_block(x, heads: int = 4):
    """Pre-norm multi-head self-attention over the map's positions, added to x."""
    height, width, channels = x.shape[1:]
    h = layers.GroupNormalization(_groups(channels))(x)
    h = layers.Reshape((height * width, channels))(h)
    h = layers.MultiHeadAttention(heads, channels // heads)(h, h)
    return x + layers.Reshape((height, width, channels))(h)


def _level(x, embedding, width: int, recipe: Recipe, lowest: bool):
    for _ in range(recipe.blocks):
        x = _residual_block(x, embedding, width, recipe.dropout)
    return _attention_block(x) if lowest and recipe.attention else x


def build_unet(size: int, channels: int, num_classes: int, recipe: Recipe,
               embedding_dim: int = 64) -> keras.Model:
    """prediction = unet([x_t, t, label]) (eps or v, recipe.prediction); label ==
    num_classes means "no class"."""
    widths = recipe.widths
    levels = min(num_downsamplings(size), len(widths) - 1)
    image = keras.Input((size, size, channels), name="noisy_image")
    t = keras.Input((), name="noise_level")
    label = keras.Input((), dtype="int32", name="label")
    embedding = layers.Dense(embedding_dim, activation="swish")(
        TimeEmbedding(embedding_dim)(t))
    embedding = embedding + layers.Flatten()(
        layers.Embedding(num_classes + 1, embedding_dim)(label))
    x = layers.Conv2D(widths[0], 3, padding="same")(image)
    skips = []
    for level in range(levels + 1):
        x = _level(x, embedding, widths[level], recipe, lowest=level == levels)
        skips.append(x)
        if level < levels:
            x = layers.Conv2D(widths[level + 1], 3, strides=2, padding="same")(x)
    for level in reversed(range(levels + 1)):
        if level < levels:
            x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = _level(x, embedding, widths[level], recipe, lowest=level == levels)
    x = layers.Activation("swish")(layers.GroupNormalization(_groups(widths[0]))(x))
    prediction = layers.Conv2D(channels, 3, padding="same", dtype="float32",
                               name="prediction")(x)
    return keras.Model([image, t, label], prediction, name="diffusion_unet")


def build_diffusion(size: int, channels: int, num_classes: int, recipe: Recipe,
                    seed: int, grey: bool = False) -> DiffusionModel:
    """The training network and its EMA copy (which samples) of one recipe, for images of
    `channels`; `grey`: their channels are equal (grey content stored as colour), so the
    networks model one channel and the samples repeat it."""
    learned = 1 if grey else channels
    return DiffusionModel(build_unet(size, learned, num_classes, recipe),
                          build_unet(size, learned, num_classes, recipe), num_classes,
                          recipe, seed, image_channels=channels)


class DiffusionModel(keras.Model):
    """Trains `network` to predict noise (or v); `ema` (same architecture) samples."""

    def __init__(self, network: keras.Model, ema: keras.Model, num_classes: int,
                 recipe: Recipe, seed: int = 0, image_channels: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.network, self.ema, self.num_classes = network, ema, num_classes
        self.recipe = recipe
        # The networks' channels, and the images' (more when a grey model draws them).
        self.channels = network.input_shape[0][-1]
        self.image_channels = image_channels or self.channels
        self.ema.set_weights(network.get_weights())
        self.generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._guided = tf.function(self._guided_noise, reduce_retracing=True)
        # All state exists now; `fit` must not try to build this call-less model.
        self.built = True

    def compile(self, optimizer: keras.optimizers.Optimizer, jit_compile: bool = False):
        super().compile(optimizer=optimizer, jit_compile=jit_compile)
        # The slots now, not in the first traced step: tf.function traces a step that creates
        # variables twice (docs/PERFORMANCE.md, "Hot paths": ~10 s of every first fit).
        self.optimizer.build(self.network.trainable_variables)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, batch):
        images, targets = batch
        x = images[..., :self.channels] * 2.0 - 1.0
        n = tf.shape(x)[0]
        t = keras.random.uniform((n,), seed=self.generator)
        noise = keras.random.normal(tf.shape(x), seed=self.generator)
        keep = keras.random.uniform((n,), seed=self.generator) >= LABEL_DROPOUT
        labels = tf.where(keep, tf.argmax(targets, -1, output_type=tf.int32), self.num_classes)
        signal = tf.reshape(alpha_bar(t), [-1, 1, 1, 1])
        noisy = tf.sqrt(signal) * x + tf.sqrt(1.0 - signal) * noise
        target = (noise if self.recipe.prediction == "eps" else
                  tf.sqrt(signal) * noise - tf.sqrt(1.0 - signal) * x)
        with tf.GradientTape() as tape:
            predicted = self.network([noisy, t, labels], training=True)
            loss = tf.reduce_mean(tf.square(tf.cast(predicted, tf.float32) - target))
            # Under mixed_float16 compile() wraps the optimizer in a LossScaleOptimizer: the
            # loss must be scaled on the tape (apply_gradients unscales); float32: unchanged.
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.network.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.network.trainable_variables))
        # self.optimizer.iterations counts the step just applied.
        started = self.optimizer.iterations > self.recipe.ema_start
        update_ema(self.ema, self.network,
                   tf.where(started, self.recipe.ema_decay, 0.0))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def sample(self, labels: np.ndarray, steps: int, guidance: float, seed: int,
               batch_size: int = 256, guide: UncertaintyGuide | None = None) -> np.ndarray:
        """Images in [0, 1], one per label, by DDIM with classifier-free guidance, steered
        towards the classifier's uncertainty by `guide` if given."""
        size = self.ema.input_shape[0][1]
        return sample_in_batches(
            lambda chunk, start: self._as_images(
                self._sample(chunk, steps, float(guidance), seed + start, guide)).numpy(),
            labels, batch_size, (size, size, self.image_channels))

    def _as_images(self, x: tf.Tensor) -> tf.Tensor:
        """The networks' channels as the images': a grey model's one channel repeated."""
        return tf.repeat(x, self.image_channels // self.channels, axis=-1)

    def _sample(self, labels, steps: int, guidance: float, seed: int,
                guide: UncertaintyGuide | None) -> tf.Tensor:
        """DDIM (eta = 0) from pure noise: each step predicts the noise in the noisy images,
        the clean images it implies, and re-noises those to the next, lower level."""
        n = tf.shape(labels)[0]
        shape = tf.concat([[n], self.ema.input_shape[0][1:]], 0)
        noisy_images = tf.random.stateless_normal(shape, seed=[seed, 1])
        levels = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)
        unconditional = tf.fill([n], self.num_classes)
        for index, (t, t_next) in enumerate(zip(levels[:-1], levels[1:])):
            prediction = self._guided(noisy_images, tf.constant(t), labels, unconditional,
                                      tf.constant(guidance))
            signal, signal_next = alpha_bar(t), alpha_bar(tf.constant(t_next))
            predicted_noise, predicted_images = self._noise_and_images(noisy_images,
                                                                       prediction, signal)
            if guide is not None and guide.guides(index):
                predicted_images = guide.nudge(predicted_images, tf.sqrt(1 - signal))
            noisy_images = (tf.sqrt(signal_next) * predicted_images +
                            tf.sqrt(1 - signal_next) * predicted_noise)
        return (predicted_images + 1.0) / 2.0

    def _noise_and_images(self, noisy_images, prediction, signal):
        """(eps, x0 clipped to [-1, 1]) that the network's prediction implies at signal
        share alpha_bar(t)."""
        if self.recipe.prediction == "eps":
            predicted_noise = prediction
            predicted_images = (noisy_images - tf.sqrt(1 - signal) * prediction) / tf.sqrt(signal)
        else:
            predicted_noise = tf.sqrt(1 - signal) * noisy_images + tf.sqrt(signal) * prediction
            predicted_images = tf.sqrt(signal) * noisy_images - tf.sqrt(1 - signal) * prediction
        return predicted_noise, tf.clip_by_value(predicted_images, -1, 1)

    def _guided_noise(self, noisy_images, t, labels, unconditional, guidance):
        """The network's prediction (eps or v) with classifier-free guidance, which is
        linear in either: one call holds both halves."""
        n = tf.shape(noisy_images)[0]
        levels = tf.fill([2 * n], t)
        both = self.ema([tf.concat([noisy_images, noisy_images], 0), levels,
                         tf.concat([labels, unconditional], 0)], training=False)
        conditional, free = tf.split(tf.cast(both, tf.float32), 2)
        return (1.0 + guidance) * conditional - guidance * free


class UncertaintyGuide:
    """Moves DDIM's predicted clean images up the gradient of an MC-dropout classifier's
    uncertainty (the module docstring has the rule). Built once per classifier: its traced
    step is reused by every round."""

    def __init__(self, classifier: keras.Model, objective: str, scale: float, every: int,
                 num_samples: int, multilabel: bool = False):
        if objective not in uncertainty.OBJECTIVES:
            raise ValueError(f"Unknown objective {objective!r}; one of {uncertainty.OBJECTIVES}.")
        if scale < 0 or every < 1:
            raise ValueError(f"Uncertainty guidance needs scale >= 0 and every >= 1; got "
                             f"{scale} and {every}.")
        self.classifier, self.objective, self.scale, self.every = (classifier, objective,
                                                                   float(scale), int(every))
        self.num_samples, self.multilabel = num_samples, multilabel
        self.loss_scale = gradient_scale(classifier)
        self._nudge = tf.function(self._nudged, reduce_retracing=True)

    def guides(self, step_index: int) -> bool:
        """Whether DDIM step `step_index` (0 = the noisiest) is nudged; never at scale 0."""
        return self.scale > 0 and step_index % self.every == 0

    def nudge(self, x0: tf.Tensor, noise_share: tf.Tensor) -> tf.Tensor:
        """x0 in [-1, 1] moved up the uncertainty gradient by scale * noise_share."""
        return self._nudge(x0, tf.cast(noise_share, tf.float32))

    def _nudged(self, x0, noise_share):
        images = (x0 + 1.0) / 2.0  # what the classifier trains on: [0, 1]
        with tf.GradientTape() as tape:
            tape.watch(images)
            # A grey model's one channel, repeated as its samples will be (the gradient of
            # the repeat sums the channels' gradients).
            seen = tf.repeat(images, self.classifier.input_shape[-1] // images.shape[-1], -1)
            logits = uncertainty.mc_logits(self.classifier, seen, self.num_samples)
            score = uncertainty.objective_from_logits(logits, self.objective, self.multilabel)
            scaled = tf.reduce_sum(score) * self.loss_scale
        gradient = tf.cast(tape.gradient(scaled, images), tf.float32)
        rms = tf.sqrt(tf.reduce_mean(tf.square(gradient), axis=[1, 2, 3], keepdims=True))
        direction = gradient / (rms + 1e-12)
        moved = images + self.scale * noise_share * direction
        return tf.clip_by_value(moved * 2.0 - 1.0, -1.0, 1.0)
