"""Keras 3 models: a convolutional autoencoder with spatial latent maps and MC-dropout
classifiers (a small CNN, the default, and ResNet-18 for comparison with MedMNIST)."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf
from keras import layers

from tsynd_tf.config import CLASSIFIERS

MIN_LATENT_SIZE = 7  # 28 -> 7, 64 -> 8, 128 -> 8, 224 -> 7
# Low-data runs take few steps (1% of PneumoniaMNIST: 1 step per epoch): Keras' default
# momentum 0.99 leaves the moving statistics near their initial values for hundreds of
# steps, and inference-mode BatchNorm then predicts the majority class.
BN_MOMENTUM = 0.9


def _batch_norm():
    return layers.BatchNormalization(momentum=BN_MOMENTUM)


@keras.saving.register_keras_serializable(package="tsynd_tf")
class MCDropout(layers.Dropout):
    """Dropout that is on whatever `training` says: every forward pass is one MC sample.

    Training uses it as ordinary dropout; prediction and the latent ascent average T passes.

    Under a strategy with several replicas in sync (MirroredStrategy, or
    MultiWorkerMirroredStrategy across workers) the layer's one SeedGenerator state is the
    same on every replica, so Keras' dropout would draw the same masks on all of them and
    their MC samples would not be independent. There the replica's index is folded into the
    drawn seed: each replica gets its own masks, and the state advances as before (one draw
    per call), so checkpoints and resumes are unchanged. One replica (no strategy, or one
    device) takes Keras' own path, bitwise as before.

    Inside `shared_masks(model, T)` the layer takes a batch of T passes tiled pass-major
    (`uncertainty.mc_logits`) and draws ONE mask per pass, shared by every image of the
    call, from its seed state as it is (not advanced): an image then gets the same answer
    whatever else is in the batch and in whichever call (predict, the SavedModel and
    evaluate; saved_models/README.md).
    """

    _passes = None  # T inside shared_masks(); None: one mask per row (Keras' dropout)

    def call(self, inputs, training=None):
        if self._passes is not None and self.rate > 0:
            return self._shared_dropout(inputs)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1 or self.rate == 0:
            return super().call(inputs, training=True)
        seed = tf.random.experimental.stateless_fold_in(
            self.seed_generator.next(), context.replica_id_in_sync_group)
        # int32, as Keras' TensorFlow backend gives its stateless ops (XLA needs it).
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        noise_shape = None if self.noise_shape is None else [
            tf.shape(inputs)[i] if size is None else size
            for i, size in enumerate(self.noise_shape)]
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed,
                                                    noise_shape=noise_shape)

    def _shared_dropout(self, inputs):
        """Dropout with one mask per pass: (T*B, ...) seen as (T, B, ...), noise (T, 1, ...).
        The seed is the state's value, read without advancing it: the masks are a function
        of the state alone (evaluation.seeded_dropout sets it; an export saves it)."""
        shape = tf.shape(inputs)
        per_pass = tf.reshape(inputs, tf.concat([[self._passes, -1], shape[1:]], 0))
        seed = tf.cast(tf.math.floormod(tf.convert_to_tensor(self.seed_generator.state.value),
                                        tf.int32.max - 1), tf.int32)
        dropped = tf.nn.experimental.stateless_dropout(
            per_pass, self.rate, seed, noise_shape=tf.concat([[self._passes, 1], shape[1:]], 0))
        return tf.reshape(dropped, shape)


@contextlib.contextmanager
def shared_masks(model: keras.Model, num_passes: int | None):
    """Within the block (a call, or the trace of a call, of `model` on T tiled passes) every
    MCDropout layer of `model` draws one mask per pass, shared across the batch. With
    num_passes None the block changes nothing: one mask per row, as Keras draws them."""
    dropouts = [layer for layer in model._flatten_layers() if isinstance(layer, MCDropout)]
    for layer in dropouts:
        object.__setattr__(layer, "_passes", num_passes)  # untracked: a mode, not state
    try:
        yield
    finally:
        for layer in dropouts:
            object.__setattr__(layer, "_passes", None)


def num_downsamplings(size: int) -> int:
    """Halvings of the input until the map would drop below MIN_LATENT_SIZE or turn odd."""
    n = 0
    while size % 2 == 0 and size // 2 >= MIN_LATENT_SIZE:
        size //= 2
        n += 1
    return n


def _conv(x, filters, strides=1, activation="relu"):
    return layers.Conv2D(filters, 3, strides=strides, padding="same", activation=activation)(x)


def build_autoencoder(size: int, channels: int, latent_channels: int = 8, width: int = 16):
    """Returns (encoder, decoder, autoencoder). z = encoder(x) has shape (s, s, latent_channels)
    with s = size / 2**num_downsamplings(size); the decoder's sigmoid output is in [0, 1]."""
    levels = num_downsamplings(size)
    if levels == 0:
        raise ValueError(f"Image size {size} is too small or odd for the autoencoder; use "
                         "a size divisible by 2 and at least 14 (e.g. 28, 64, 128, 224).")
    inputs = keras.Input((size, size, channels), name="image")
    x = _conv(inputs, width)
    for level in range(levels):
        filters = width * 2 ** min(level + 1, 3)
        x = _conv(x, filters, strides=2)
        x = _conv(x, filters)
    latents = layers.Conv2D(latent_channels, 1, name="latent", dtype="float32")(x)
    encoder = keras.Model(inputs, latents, name="encoder")

    z = keras.Input(latents.shape[1:], name="latent")
    x = _conv(z, width * 2 ** min(levels, 3))
    for level in reversed(range(levels)):
        filters = width * 2 ** min(level, 3)
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", activation="relu")(x)
        x = _conv(x, filters)
    outputs = layers.Conv2D(channels, 3, padding="same", activation="sigmoid",
                            dtype="float32", name="reconstruction")(x)
    decoder = keras.Model(z, outputs, name="decoder")
    autoencoder = keras.Model(inputs, decoder(encoder(inputs)), name="autoencoder")
    return encoder, decoder, autoencoder


def seed_generator_states(model: keras.Model) -> list:
    """The state variables of the model's SeedGenerators: where MC dropout's next masks come
    from. Keras keeps them out of the model's tf.train checkpoint graph."""
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def recompute_batch_norm_statistics(model: keras.Model, batches) -> None:
    """'Precise BN': sets every BatchNorm's moving mean/variance to the average of its batch
    statistics over `batches` (images only), with the weights unchanged.

    With few training steps the exponential moving averages lag far behind the weights, and
    inference-mode BatchNorm then skews predictions towards one class. One pass over the
    labelled images before each validation removes that lag; it costs a forward pass.
    """
    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    if not norms:
        return
    momenta = [layer.momentum for layer in norms]
    for index, images in enumerate(batches):
        for layer in norms:  # a cumulative mean: new = old * i/(i+1) + batch / (i+1)
            layer.momentum = index / (index + 1)
        model(images, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


def psnr(y_true, y_pred):
    return tf.image.psnr(y_true, y_pred, max_val=1.0)


def ssim(y_true, y_pred):
    return tf.image.ssim(y_true, y_pred, max_val=1.0)


def _head(x, num_classes, dropout_rate):
    x = layers.GlobalAveragePooling2D()(x)
    x = MCDropout(dropout_rate)(x)
    # float32 logits under mixed precision: softmax/entropies need the range.
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _small_cnn(inputs, num_classes, dropout_rate, width=16):
    """One conv per stage, max-pool between stages, MC dropout after every stage.

    23k parameters at 28 px: ~900 img/s for T=10 MC passes on 2 CPU cores, 2.5x faster than
    two convs per stage (measured in the issue #3 note), which is what makes multi-seed sweeps fit.
    """
    x = inputs
    stages = max(2, num_downsamplings(inputs.shape[1]))
    for stage in range(stages):
        x = layers.Conv2D(width * 2 ** min(stage, 3), 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(_batch_norm()(x))
        x = layers.MaxPooling2D()(x)
        x = MCDropout(dropout_rate / 2)(x)
    x = layers.Conv2D(width * 2 ** min(stages, 3), 3, padding="same", activation="relu")(x)
    return _head(x, num_classes, dropout_rate)


def _basic_block(x, filters, strides):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    y = _batch_norm()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = _batch_norm()(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(shortcut)
        shortcut = _batch_norm()(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _resnet18(inputs, num_classes, dropout_rate):
    """ResNet-18 as in MedMNIST v2: 3x3 stride-1 stem for small inputs, 7x7/2 + max-pool for
    inputs of 128 px and more; MC dropout after each stage and before the classifier."""
    if inputs.shape[1] >= 128:
        x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False)(inputs)
        x = _batch_norm()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(layers.ReLU()(x))
    else:
        x = layers.Conv2D(64, 3, padding="same", use_bias=False)(inputs)
        x = layers.ReLU()(_batch_norm()(x))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            x = _basic_block(x, filters, strides=2 if stage > 0 and block == 0 else 1)
        x = MCDropout(dropout_rate / 2)(x)
    return _head(x, num_classes, dropout_rate)


def build_classifier(name: str, size: int, channels: int, num_classes: int,
                     dropout_rate: float = 0.3) -> keras.Model:
    """An MC-dropout classifier returning logits (B, num_classes), float32."""
    builders = {"small_cnn": _small_cnn, "resnet18": _resnet18}
    if name not in builders:
        raise ValueError(f"Unknown classifier {name!r}; choose one of {CLASSIFIERS}.")
    if not 0.0 < dropout_rate < 1.0:
        raise ValueError(f"--dropout_rate must be in (0, 1) for MC dropout; got {dropout_rate}.")
    inputs = keras.Input((size, size, channels), name="image")
    return keras.Model(inputs, builders[name](inputs, num_classes, dropout_rate), name=name)
