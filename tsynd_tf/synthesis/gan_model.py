"""A small class-conditional GAN for limited data in Keras 3: generator, projection
discriminator, differentiable augmentation and the training step.

  generator      z ~ N(0, I) (NOISE_DIM) joined with a class embedding -> Dense to a base map
                 of size / 2^L (L = models.num_downsamplings: 7 px at 28, 8 px at 64 and 128)
                 -> a 3x3 conv there -> L x [nearest 2x upsampling, 3x3 conv] -> 3x3 conv,
                 tanh; GroupNorm and ReLU after every conv. Widths halve per level down to
                 G_WIDTH at full size (64/32/16 at 28 px). GroupNorm rather than BatchNorm: a
                 sample does not depend on its batch, and the EMA copy samples exactly as the
                 generator trained (no moving statistics).
  discriminator  a 3x3 conv, then L x [3x3 stride-2 conv, LeakyReLU(0.2)] doubling widths from
                 D_WIDTH (32/64/128 at 28 px), a minibatch-stddev channel (Karras et al. 2018)
                 before the last one, global sum pooling to features h, and the projection
                 output of Miyato & Koyama 2018: D(x, y) = w.h + embed(y).h. Every conv and
                 w are spectrally normalised (keras.layers.SpectralNormalization), not embed.
                 The minibatch channel lets D see a batch of near-identical fakes, the first
                 defence against mode collapse (the second is synthesis/gan.py's check).
  augmentation   DiffAugment (Zhao et al. 2020): per image, brightness + U(-0.5, 0.5), contrast
                 x U(0.5, 1.5), translation by up to 1/8 of the side (zero fill) and a cutout of
                 half the side, applied to real and generated images alike before every D call.
                 D never sees an unaugmented image, so it cannot memorise the few real ones;
                 because the same augmentation reaches the fakes and is differentiable, G is
                 not pushed to generate augmented images. No flips: anatomy has a side.
  loss           non-saturating: D minimises softplus(-D(real)) + softplus(D(fake)), G
                 softplus(-D(fake)). One Adam per network (beta_1 = 0.5, DCGAN's); D learns at
                 D_LEARNING_RATE_RATIO x G's rate (two time-scale update rule, Heusel et al.
                 2017). Per batch one D step, then one G step on the same fakes (with the
                 batch's real labels) against the updated D.
  EMA            an exponential moving average of G's weights (decay EMA_DECAY) is the
                 generator that samples and is cached.

Chosen on PneumoniaMNIST 10% (471 images, 28 px, 500-1,000 steps): with mean pooling D
stayed at chance and G ignored its noise; without the minibatch channel the pneumonia class's
samples were near-copies of one image (pixel diversity 0.33 of the real images', 0.58 with
it); hinge and non-saturating losses looked alike.

Images are scaled to [-1, 1] inside the model; `sample` returns [0, 1]. Every initial weight
is drawn from a SeedGenerator seeded by `seed`, and training noise from another, so one seed
gives the same initial weights whatever the process built before, and on CPU the same trained
weights.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from tsynd_tf.models import num_downsamplings
from tsynd_tf.synthesis.generators import sample_in_batches, update_ema

NOISE_DIM, EMBEDDING_DIM = 64, 32
G_WIDTH, D_WIDTH, MAX_WIDTH = 16, 32, 256  # full-size widths; x2 per halving, capped
EMA_DECAY = 0.995
D_LEARNING_RATE_RATIO = 2.0
TRANSLATION, CUTOUT = 1 / 8, 1 / 2  # of the image side (DiffAugment's defaults)
ADAM_BETAS = (0.5, 0.999)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What bench/gan_recipes.py varies; the defaults are the constants above (the method's
    GAN). mode_seeking > 0 adds MSGAN's term (Mao et al. 2019) to G's loss: a second batch of
    fakes with the same labels and new noise, and G is rewarded for the mean image distance
    between the two batches per unit of noise distance (weight mode_seeking), against
    samples that ignore their noise."""
    g_width: int = G_WIDTH
    ema_decay: float = EMA_DECAY
    d_learning_rate_ratio: float = D_LEARNING_RATE_RATIO
    mode_seeking: float = 0.0

    def settings(self) -> dict:
        """The fields that differ from the default: a cache key's extra settings (none for
        the default, whose cached generators keep their key)."""
        default = Recipe()
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v != getattr(default, k)}


def _widths(size: int, full_size_width: int) -> list[int]:
    """Feature widths from the base map (smallest) to the full-size map."""
    levels = num_downsamplings(size)
    return [min(MAX_WIDTH, full_size_width * 2 ** (levels - level))
            for level in range(levels + 1)]


def build_generator(size: int, channels: int, num_classes: int,
                    seeds: keras.random.SeedGenerator, width: int = G_WIDTH) -> keras.Model:
    """image in [-1, 1] = generator([noise (N, NOISE_DIM), label (N,)])."""
    widths = _widths(size, width)
    base = size // 2 ** (len(widths) - 1)
    init = lambda: {"kernel_initializer": keras.initializers.GlorotUniform(seeds)}  # noqa: E731
    noise = keras.Input((NOISE_DIM,), name="noise")
    label = keras.Input((), dtype="int32", name="label")
    embedded = layers.Embedding(num_classes, EMBEDDING_DIM, name="class_embedding",
                                embeddings_initializer=keras.initializers.RandomNormal(
                                    seed=seeds))(label)
    x = layers.Dense(base * base * widths[0], name="base_map", **init())(
        layers.Concatenate()([noise, embedded]))
    x = layers.Reshape((base, base, widths[0]))(x)
    x = _normalised_relu(x)
    for level, width in enumerate(widths):
        if level > 0:
            x = layers.UpSampling2D(2, interpolation="nearest")(x)
        x = _normalised_relu(layers.Conv2D(width, 3, padding="same", **init())(x))
    image = layers.Conv2D(channels, 3, padding="same", activation="tanh", dtype="float32",
                          name="image", **init())(x)
    return keras.Model([noise, label], image, name="gan_generator")


def _normalised_relu(x):
    groups = 8 if x.shape[-1] % 8 == 0 else 1
    return layers.Activation("relu")(layers.GroupNormalization(groups)(x))


def build_discriminator(size: int, channels: int, num_classes: int,
                        seeds: keras.random.SeedGenerator) -> keras.Model:
    """Unnormalised score (N, 1) = discriminator([image in [-1, 1], label (N,)])."""
    widths = _widths(size, D_WIDTH)[::-1]
    normalised = layers.SpectralNormalization
    init = lambda: {"kernel_initializer": keras.initializers.GlorotUniform(seeds)}  # noqa: E731
    image = keras.Input((size, size, channels), name="image")
    label = keras.Input((), dtype="int32", name="label")
    x = normalised(layers.Conv2D(widths[0], 3, padding="same", **init()))(image)
    x = layers.LeakyReLU(0.2)(x)
    for level, width in enumerate(widths[1:], start=1):
        if level == len(widths) - 1:
            x = MinibatchStddev()(x)
        x = normalised(layers.Conv2D(width, 3, strides=2, padding="same", **init()))(x)
        x = layers.LeakyReLU(0.2)(x)
    # Sum, not mean, pooling (as SNGAN): with normalised kernels a mean keeps the scores too
    # small for D to separate anything early on.
    features = layers.Rescaling(float(x.shape[1] * x.shape[2]), dtype="float32")(
        layers.GlobalAveragePooling2D(dtype="float32")(x))
    score = normalised(layers.Dense(1, dtype="float32", **init()))(features)
    # Not wrapped: SpectralNormalization casts its output to its input's dtype, int32 here.
    embedded = layers.Embedding(num_classes, widths[-1], dtype="float32",
                                embeddings_initializer=keras.initializers.RandomNormal(
                                    seed=seeds))(label)
    projection = layers.Dot(axes=-1, dtype="float32")([embedded, features])
    return keras.Model([image, label], layers.Add(dtype="float32")([score, projection]),
                       name="gan_discriminator")


class MinibatchStddev(layers.Layer):
    """Appends the batch's mean feature standard deviation as one constant channel: a
    batch of near-identical images is then visibly different from a batch of real ones."""

    def call(self, x):
        x32 = tf.cast(x, tf.float32)
        spread = tf.reduce_mean(tf.sqrt(tf.math.reduce_variance(x32, axis=0) + 1e-8))
        channel = tf.fill(tf.concat([tf.shape(x)[:3], [1]], 0), spread)
        return tf.concat([x, tf.cast(channel, x.dtype)], -1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], input_shape[3] + 1)


def diff_augment(images: tf.Tensor, seeds: keras.random.SeedGenerator) -> tf.Tensor:
    """DiffAugment's colour, translation and cutout policy on images in [-1, 1]."""
    n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    per_image = (n, 1, 1, 1)
    x = images + keras.random.uniform(per_image, -0.5, 0.5, seed=seeds)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * keras.random.uniform(per_image, 0.5, 1.5, seed=seeds) + mean
    x = _translate(x, height, width, seeds)
    return x * _cutout_mask(n, height, width, seeds)


def _translate(x: tf.Tensor, height: int, width: int,
               seeds: keras.random.SeedGenerator) -> tf.Tensor:
    """Each image shifted by its own integer offset, the uncovered border zero."""
    n = tf.shape(x)[0]
    pad_h, pad_w = max(1, int(height * TRANSLATION)), max(1, int(width * TRANSLATION))
    padded = tf.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    dy = keras.random.randint((n, 1), -pad_h, pad_h + 1, seed=seeds)
    dx = keras.random.randint((n, 1), -pad_w, pad_w + 1, seed=seeds)
    rows = tf.range(height)[None, :] + pad_h - dy
    x = tf.gather(padded, rows, axis=1, batch_dims=1)
    columns = tf.range(width)[None, :] + pad_w - dx
    return tf.gather(x, columns, axis=2, batch_dims=1)


def _cutout_mask(n, height: int, width: int, seeds: keras.random.SeedGenerator) -> tf.Tensor:
    """(N, H, W, 1): 0 inside one random square per image of CUTOUT x the side, else 1."""
    cut_h, cut_w = int(height * CUTOUT), int(width * CUTOUT)
    top = keras.random.randint((n, 1), -(cut_h // 2), height - cut_h // 2, seed=seeds)
    left = keras.random.randint((n, 1), -(cut_w // 2), width - cut_w // 2, seed=seeds)
    rows, columns = tf.range(height)[None, :], tf.range(width)[None, :]
    inside_rows = (rows >= top) & (rows < top + cut_h)  # (N, H)
    inside_columns = (columns >= left) & (columns < left + cut_w)  # (N, W)
    inside = inside_rows[:, :, None] & inside_columns[:, None, :]
    return tf.cast(~inside, tf.float32)[..., None]


def build_gan(size: int, channels: int, num_classes: int, seed: int = 0,
              recipe: Recipe = Recipe()) -> ConditionalGAN:
    """G, D and G's EMA copy for size x size images, every initial weight drawn from one
    SeedGenerator(seed) in this order; the training noise from SeedGenerator(seed + 1)."""
    initial = keras.random.SeedGenerator(seed)
    generator = build_generator(size, channels, num_classes, initial, recipe.g_width)
    discriminator = build_discriminator(size, channels, num_classes, initial)
    ema = build_generator(size, channels, num_classes, initial, recipe.g_width)
    for layer in discriminator.layers:  # power iteration's start vector, seeded too
        if isinstance(layer, layers.SpectralNormalization):
            layer.vector_u.assign(keras.random.truncated_normal(
                layer.vector_u.shape, stddev=0.02, seed=initial))
    return ConditionalGAN(generator, discriminator, ema, seed=seed + 1, recipe=recipe)


def gan_optimizers(learning_rate: float, recipe: Recipe = Recipe()
                   ) -> tuple[keras.optimizers.Optimizer, ...]:
    """(G's, D's) Adam, DCGAN's betas; D at the recipe's ratio x G's rate (TTUR)."""
    return (keras.optimizers.Adam(learning_rate, *ADAM_BETAS),
            keras.optimizers.Adam(learning_rate * recipe.d_learning_rate_ratio, *ADAM_BETAS))


class ConditionalGAN(keras.Model):
    """Trains `generator` against `discriminator`; `ema` (G's architecture) samples and
    starts as a copy of G. `seed` seeds the training noise (latents and DiffAugment)."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, ema: keras.Model,
                 seed: int = 1, recipe: Recipe = Recipe(), **kwargs):
        super().__init__(**kwargs)
        self.generator, self.discriminator, self.ema = generator, discriminator, ema
        self.recipe = recipe
        self.ema.set_weights(generator.get_weights())
        self.training_noise = keras.random.SeedGenerator(seed)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self._generate = tf.function(lambda z, y: self.ema([z, y], training=False),
                                     reduce_retracing=True)
        # All state exists now; `fit` must not try to build this call-less model.
        self.built = True

    def compile(self, g_optimizer: keras.optimizers.Optimizer,
                d_optimizer: keras.optimizers.Optimizer, jit_compile: bool = False):
        """One optimizer per network; under mixed_float16 each is wrapped to scale its loss
        (scale_loss), as Keras' compile does for a model's single optimizer."""
        def scaled(optimizer):
            if (keras.config.dtype_policy().name == "mixed_float16" and
                    not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
                return keras.optimizers.LossScaleOptimizer(optimizer)
            return optimizer

        self.g_optimizer, self.d_optimizer = scaled(g_optimizer), scaled(d_optimizer)
        super().compile(jit_compile=jit_compile)
        # The slots now, not in the first traced step, which would then be traced twice.
        self.g_optimizer.build(self.generator.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def _noise(self, n) -> tf.Tensor:
        return keras.random.normal((n, NOISE_DIM), seed=self.training_noise)

    def _scores(self, images, labels) -> tf.Tensor:
        augmented = diff_augment(images, self.training_noise)
        return tf.cast(self.discriminator([augmented, labels], training=True), tf.float32)

    def train_step(self, batch):
        images, targets = batch
        real = tf.cast(images, tf.float32) * 2.0 - 1.0
        labels = tf.argmax(targets, -1, output_type=tf.int32)
        # One batch of fakes serves both steps: D's with G held fixed, then G's against the
        # updated D (one generator forward pass per batch instead of two).
        with tf.GradientTape() as g_tape:
            noise = self._noise(tf.shape(real)[0])
            fake = self.generator([noise, labels], training=True)
            with g_tape.stop_recording():
                d_loss = self._discriminator_step(real, tf.stop_gradient(fake), labels)
            g_loss = tf.reduce_mean(tf.nn.softplus(-self._scores(fake, labels)))
            if self.recipe.mode_seeking:  # a Python branch: the default traces without it
                g_loss += self.recipe.mode_seeking * self._mode_seeking(fake, noise, labels)
            scaled = self.g_optimizer.scale_loss(g_loss)  # on the tape (mixed_float16)
        self._apply(self.g_optimizer, g_tape, scaled, self.generator)
        update_ema(self.ema, self.generator, self.recipe.ema_decay)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}

    def _mode_seeking(self, fake, noise, labels) -> tf.Tensor:
        """MSGAN's loss, 1 / (image distance / noise distance), per pair of same-label
        fakes, averaged: small when new noise gives a visibly new image."""
        other_noise = self._noise(tf.shape(noise)[0])
        other = self.generator([other_noise, labels], training=True)
        images = tf.reduce_mean(tf.abs(tf.cast(fake - other, tf.float32)), axis=[1, 2, 3])
        noises = tf.reduce_mean(tf.abs(noise - other_noise), axis=1)
        return tf.reduce_mean(1.0 / (images / noises + 1e-5))

    def _discriminator_step(self, real, fake, labels) -> tf.Tensor:
        with tf.GradientTape() as tape:
            # Two calls: a batch statistic of D (MinibatchStddev) must see one kind only.
            real_scores, fake_scores = self._scores(real, labels), self._scores(fake, labels)
            d_loss = (tf.reduce_mean(tf.nn.softplus(-real_scores)) +
                      tf.reduce_mean(tf.nn.softplus(fake_scores)))
            scaled = self.d_optimizer.scale_loss(d_loss)
        self._apply(self.d_optimizer, tape, scaled, self.discriminator)
        return d_loss

    @staticmethod
    def _apply(optimizer, tape, scaled_loss, network: keras.Model) -> None:
        variables = network.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        optimizer.apply(gradients, variables)

    def sample(self, labels: np.ndarray, seed: int, batch_size: int = 256) -> np.ndarray:
        """Images in [0, 1], one per label, from the EMA generator; noise seeded by (seed,
        position of the batch)."""
        def batch(chunk, start):
            noise = tf.random.stateless_normal((len(chunk), NOISE_DIM),
                                               seed=tf.constant([seed, start], tf.int64))
            return (self._generate(noise, chunk).numpy() + 1.0) / 2.0

        return sample_in_batches(batch, labels, batch_size, self.ema.output_shape[1:])
