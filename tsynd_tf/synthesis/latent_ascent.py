"""Latent-space geometry and the latent ascent of TSynD: gradient ascent of classifier
uncertainty on the autoencoder's latent maps (used by synthesis.latent).

Geometry (our choice; the paper's is not published): each source image x_i has latent map
z0_i = enc(x_i) and a ball of L2 radius r_i = epsilon * ||z0_i||_2 around it. Making the
radius relative to the latent's own norm makes `epsilon` mean the same across datasets and
autoencoders. TSynD takes normalised gradient steps of length step_size * r_i and projects
back onto the ball after every step; the latent-noise baseline jumps to a uniformly random
point on the sphere of the same radius, so both spend the same latent norm budget.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tsynd_tf import uncertainty
from tsynd_tf.config import RENDERINGS
from tsynd_tf.synthesis.generators import gradient_scale

_NORM_EPS = 1e-12


def _flat_norm(x: tf.Tensor) -> tf.Tensor:
    """Per-example L2 norm over all non-batch axes, shape (B,)."""
    return tf.norm(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def _per_example(v: tf.Tensor) -> tf.Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting over latent maps."""
    return tf.reshape(v, [-1, 1, 1, 1])


def ball_radii(anchors: tf.Tensor, epsilon: float) -> tf.Tensor:
    return epsilon * _flat_norm(anchors)


def project_to_ball(latents: tf.Tensor, anchors: tf.Tensor, radii: tf.Tensor) -> tf.Tensor:
    """Projects each latent onto the L2 ball of radius radii[i] around anchors[i]."""
    delta = latents - anchors
    scale = tf.minimum(1.0, radii / (_flat_norm(delta) + _NORM_EPS))
    return anchors + delta * _per_example(scale)


def latent_noise(anchors: tf.Tensor, epsilon: float, seed: int) -> tf.Tensor:
    """Baseline: a uniformly random direction at exactly the TSynD budget radius."""
    direction = tf.random.stateless_normal(tf.shape(anchors), seed=[seed, 0])
    direction /= _per_example(_flat_norm(direction) + _NORM_EPS)
    return anchors + direction * _per_example(ball_radii(anchors, epsilon))


def render(sources: np.ndarray, reconstructions: np.ndarray, decodes: np.ndarray,
           rendering: str) -> np.ndarray:
    """The synthetic images, in [0, 1], from x, dec(z0) and dec(z*).

    'decode': dec(z*), the paper's image. 'residual': x + dec(z*) - dec(z0), the real image
    plus the change the latent move makes in decoder space; it keeps the detail that a
    small autoencoder trained on few images blurs away (docs/TUNING.md).
    """
    if rendering == "decode":
        return decodes
    if rendering == "residual":
        return np.clip(sources + (decodes - reconstructions), 0.0, 1.0)
    raise ValueError(f"Unknown rendering {rendering!r}; expected one of {RENDERINGS}.")


class LatentAscent(keras.Model):
    """Ascends an uncertainty objective of `classifier(decoder(z))` on a pool of latents.

    The pool's latent maps are this model's only trainable state: `fit` on a dataset of pool
    indices runs the ascent, one projected, normalised gradient step per latent per epoch,
    so `epochs` is the number of ascent steps and Keras callbacks/progress bars apply as
    usual. The decoder and classifier are only read (no optimizer is attached).
    """

    def __init__(self, decoder: keras.Model, classifier: keras.Model, pool_size: int, *,
                 objective: str, epsilon: float, step_size: float, num_samples: int,
                 multilabel: bool, **kwargs):
        super().__init__(**kwargs)
        if objective not in uncertainty.OBJECTIVES:
            raise ValueError(f"Unknown objective {objective!r}; one of {uncertainty.OBJECTIVES}.")
        self.decoder, self.classifier = decoder, classifier
        self.objective, self.epsilon, self.step_size = objective, epsilon, step_size
        self.num_samples, self.multilabel = num_samples, multilabel
        latent_shape = (pool_size, *decoder.input_shape[1:])
        # Under a tf.distribute strategy every replica steps its share of each batch, then
        # all replicas apply the same gathered update (train_step): ONLY_FIRST_REPLICA lets
        # a replica write the mirrored variable and makes a cross-replica read return one
        # copy (SUM would return the sum of the copies).
        self.latents = self.add_weight(shape=latent_shape, initializer="zeros", name="latents",
                                       autocast=False, aggregation="only_first_replica")
        self.anchors = self.add_weight(shape=latent_shape, initializer="zeros", name="anchors",
                                       trainable=False, autocast=False)
        self.radii = self.add_weight(shape=(pool_size,), initializer="zeros", name="radii",
                                     trainable=False, autocast=False)
        self.objective_tracker = keras.metrics.Mean(name="objective")
        self.distance_tracker = keras.metrics.Mean(name="relative_distance")
        # All state exists now; without this, `fit` under a distribution strategy tries to
        # build the model by calling it, and this model has no `call`.
        self.built = True

    @property
    def metrics(self):
        return [self.objective_tracker, self.distance_tracker]

    def start_from(self, anchors: np.ndarray | tf.Tensor) -> None:
        """Sets z0 (the encoded source images) as start points and ball centres."""
        anchors = tf.convert_to_tensor(anchors, tf.float32)
        self.anchors.assign(anchors)
        self.latents.assign(anchors)
        self.radii.assign(ball_radii(anchors, self.epsilon))

    def objective_of(self, latents: tf.Tensor) -> tf.Tensor:
        """Per-latent objective of the decoded images, (B,) float32."""
        images = self.decoder(latents, training=False)
        logits = uncertainty.mc_logits(self.classifier, images, self.num_samples)
        return uncertainty.objective_from_logits(logits, self.objective, self.multilabel)

    def train_step(self, indices):
        indices = tf.reshape(tf.cast(indices, tf.int32), [-1])
        latents = tf.gather(self.latents, indices)
        anchors = tf.gather(self.anchors, indices)
        radii = tf.gather(self.radii, indices)
        with tf.GradientTape() as tape:
            tape.watch(latents)
            objective = self.objective_of(latents)
            scaled = tf.reduce_sum(objective) * gradient_scale(self.decoder)
        gradient = tf.cast(tape.gradient(scaled, latents), tf.float32)
        direction = gradient / _per_example(_flat_norm(gradient) + _NORM_EPS)
        stepped = latents + direction * _per_example(self.step_size * radii)
        projected = project_to_ball(stepped, anchors, radii)
        self._write_latents(indices, projected)
        self.objective_tracker.update_state(objective)
        self.distance_tracker.update_state(_flat_norm(projected - anchors) /
                                           (radii / self.epsilon + _NORM_EPS))
        return {m.name: m.result() for m in self.metrics}

    def _write_latents(self, indices: tf.Tensor, projected: tf.Tensor) -> None:
        """Writes the stepped latents of this batch into the pool, in place.

        With several replicas each holds a different part of the batch: all-gather the
        parts (their sizes may differ, e.g. in a last partial batch), so that every replica
        applies the same update of the whole batch to its copy of the pool.
        """
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            indices = context.all_gather(indices, axis=0)
            projected = context.all_gather(projected, axis=0)
        # A sparse in-place update: touches the batch's rows only, not the whole pool.
        self.latents.value.scatter_update(tf.IndexedSlices(projected, indices))
