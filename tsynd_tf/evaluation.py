"""Evaluation of MC-dropout classifiers: accuracy/AUC with MedMNIST's semantics, calibration,
and robustness to Gaussian noise, FGSM/PGD attacks and MedMNIST-C-style corruptions
(`tsynd_tf.corruptions`). `python -m tsynd_tf.evaluate` runs it on a training run.

Every condition (clean, noisy, attacked, corrupted) is predicted with the SAME dropout masks:
T masks, one per pass, drawn from `seed` and shared by every image (`mc_logits`'
shared_masks), as the SavedModel serves them ("common random numbers"). Differences between
conditions then come from the inputs, not from MC noise, sigma = 0 reproduces the clean
numbers exactly, and an image's prediction does not depend on the rest of its batch. The
predictions are `uncertainty.mc_predict`'s, the one batched MC-dropout predictor that
training, serving and the report use too. Attacks keep fresh masks at every step (EOT).
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

from tsynd_tf.corruptions import (CORRUPTIONS, SEVERITIES, corrupt,  # noqa: F401 - API
                                  corruptions_for, to_uint8)
from tsynd_tf.data import DatasetInfo, convert_channels
from tsynd_tf.models import seed_generator_states
from tsynd_tf.uncertainty import (images_per_call, mc_logits, mc_predict,
                                  uncertainty_from_logits)

with contextlib.redirect_stdout(io.StringIO()):  # medmnist prints a torch notice on import
    from medmnist.evaluator import getACC, getAUC

ECE_BINS = 15
# Scalar metrics kept for every shifted condition; per-class metrics only for clean data.
SUMMARY_METRICS = ("acc", "auc", "balanced_acc", "f1_macro", "nll", "ece",
                   "predictive_entropy", "mutual_information")


# ----------------------------------------------------------------------------- metrics


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray,
                               num_bins: int = ECE_BINS) -> float:
    """sum_b |B_b|/N * |accuracy(B_b) - mean confidence(B_b)| over equal-width bins."""
    confidences = np.asarray(confidences, np.float64).ravel()
    correct = np.asarray(correct, np.float64).ravel()
    # Bin b holds (b/num_bins, (b+1)/num_bins]; confidence 0 goes to the first bin.
    bins = np.clip(np.ceil(confidences * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins)
    gap = np.abs(np.bincount(bins, correct, num_bins) - np.bincount(bins, confidences, num_bins))
    return float(gap.sum() / max(count.sum(), 1))


def _metric_name(class_name: str) -> str:
    """'smooth muscle' -> 'smooth_muscle': class names become TensorBoard-friendly keys."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", class_name).strip("_").lower()


def _auc(y_true: np.ndarray, probs: np.ndarray, task: str) -> float:
    try:
        return float(getAUC(y_true, probs, task))
    except ValueError:  # a class absent from targets (tiny subsets): AUC is undefined
        return float("nan")


def classification_metrics(targets: np.ndarray, probs: np.ndarray, info: DatasetInfo) -> dict:
    """Metrics of MC-averaged probabilities (N, K) against one-hot/multi-hot targets (N, K).

    acc/auc are medmnist.evaluator's getACC/getAUC, so numbers compare with MedMNIST's tables
    (binary tasks threshold p(class 1) at 0.5; multi-label tasks average over labels).
    balanced_acc is MedMNIST-C's (mean per-label balanced accuracy at 0.5 for multi-label).
    nll is per image (summed over labels for multi-label). ece is top-label ECE with
    ECE_BINS bins for softmax tasks, and over all (image, label) decisions for multi-label.
    """
    targets = np.asarray(targets)
    probs = np.asarray(probs, np.float64)
    if targets.shape != probs.shape:
        raise ValueError(f"targets {targets.shape} and probs {probs.shape} must match.")
    clipped = np.clip(probs, 1e-12, 1.0)  # probs may underflow to 0: keep the NLL finite
    if info.multilabel:
        y_true = targets.astype(np.int64)
        predictions = (probs > 0.5).astype(np.int64)
        balanced_acc = np.mean([balanced_accuracy_score(y_true[:, k], predictions[:, k])
                                for k in range(y_true.shape[1])])
        nll = -np.mean(np.sum(y_true * np.log(clipped) +
                              (1 - y_true) * np.log(np.clip(1 - probs, 1e-12, 1.0)), axis=1))
        confidences = np.where(predictions == 1, probs, 1.0 - probs)
        correct = predictions == y_true
        sklearn_true, sklearn_labels = y_true, None  # multi-label indicator format
    else:
        labels = targets.argmax(axis=1)
        y_true = labels[:, None]  # MedMNIST's label layout: (N, 1) class indices
        predictions = probs.argmax(axis=1)
        balanced_acc = balanced_accuracy_score(labels, predictions)
        nll = -np.mean(np.log(clipped[np.arange(len(labels)), labels]))
        confidences, correct = probs.max(axis=1), predictions == labels
        sklearn_true, sklearn_labels = labels, np.arange(info.num_classes)
    precision, recall, f1, _ = precision_recall_fscore_support(
        sklearn_true, predictions, labels=sklearn_labels, average=None, zero_division=0)
    metrics = {
        "acc": float(getACC(y_true, probs, info.evaluator_task)),
        "auc": _auc(y_true, probs, info.evaluator_task),
        "balanced_acc": float(balanced_acc),
        "f1_macro": float(np.mean(f1)),
        "nll": float(nll),
        "ece": expected_calibration_error(confidences, correct),
    }
    for k, class_name in enumerate(info.class_names):
        name = _metric_name(class_name) or str(k)
        metrics[f"precision/{name}"] = float(precision[k])
        metrics[f"recall/{name}"] = float(recall[k])
        metrics[f"f1/{name}"] = float(f1[k])
    return metrics


# ------------------------------------------------------------------- prediction and attacks


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1] (the same scaling as data.make_pipeline)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return np.asarray(images, np.float32)


@contextlib.contextmanager
def seeded_dropout(model: keras.Model, seed: int):
    """Within the block, the MC-dropout masks of `model` are a function of `seed`.

    Every SeedGenerator state of the model is set from `seed` on entry and put back on exit,
    so that evaluating mid-training does not make later training masks repeat.
    """
    states = seed_generator_states(model)
    if not states:
        logging.warning("%s has no SeedGenerator state: MC predictions are not reproducible.",
                        model.name)
    saved = [state.numpy() for state in states]
    keys = np.random.SeedSequence(seed).generate_state(len(states))
    for state, key in zip(states, keys):
        state.assign(np.array([key, 0]).astype(state.dtype))
    try:
        yield
    finally:
        for state, value in zip(states, saved):
            state.assign(value)


def _safe_log(p: tf.Tensor) -> tf.Tensor:
    return tf.math.log(tf.maximum(p, np.finfo(np.float32).tiny))


class MCPredictor:
    """MC-dropout predictions with seeded masks, and attacks on the MC-averaged predictor.

    Images are float32 in [0, 1] with the dataset's channels; they are converted to the
    classifier's channels before the classifier sees them, inside the attack graph, so
    attacks perturb the dataset's pixels.
    """

    def __init__(self, classifier: keras.Model, num_samples: int, multilabel: bool,
                 batch_size: int = 128, seed: int = 0):
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples ({num_samples}) and batch_size ({batch_size}) "
                             "must be >= 1.")
        self.classifier, self.num_samples, self.multilabel = classifier, num_samples, multilabel
        self.batch_size, self.seed = batch_size, seed
        self._channels = classifier.input_shape[-1]
        self._attack_fn = None  # traced on first use (needs H, W, C)

    def _loss(self, images, targets):
        """Cross-entropy of the MC-mean probabilities: the loss of the predictor we deploy.

        Each call draws fresh dropout masks, so the gradient is an MC estimate of the
        gradient of the expected prediction (EOT), not of one fixed sub-network. Keras'
        cross-entropies clip p to [1e-7, 1 - 1e-7], which zeroes the gradient of confidently
        right images; only p -> 0 is guarded here (a zero gradient where p underflowed)."""
        logits = mc_logits(self.classifier, convert_channels(images, self._channels),
                           self.num_samples)
        probs = uncertainty_from_logits(logits, self.multilabel)["probs"]
        if self.multilabel:
            log_likelihood = targets * _safe_log(probs) + (1.0 - targets) * _safe_log(1.0 - probs)
        else:
            log_likelihood = targets * _safe_log(probs)
        return -tf.reduce_sum(log_likelihood)

    def _build_attack(self, shape):
        image_spec = tf.TensorSpec([None, *shape[1:]], tf.float32)
        scalar = tf.TensorSpec([], tf.float32)

        @tf.function(input_signature=[image_spec, tf.TensorSpec([None, None], tf.float32),
                                      scalar, scalar, tf.TensorSpec([], tf.int32), image_spec])
        def attack(images, targets, epsilon, step_size, steps, start):
            adversarial = tf.clip_by_value(images + start, 0.0, 1.0)
            for _ in tf.range(steps):
                with tf.GradientTape() as tape:
                    tape.watch(adversarial)
                    loss = self._loss(adversarial, targets)
                step = step_size * tf.sign(tape.gradient(loss, adversarial))
                adversarial = tf.clip_by_value(adversarial + step, images - epsilon,
                                               images + epsilon)  # project on the L-inf ball
                adversarial = tf.clip_by_value(adversarial, 0.0, 1.0)  # valid image
            return adversarial

        self._attack_fn = attack

    def _batches(self, images):
        """Slices of `images`, each at most batch_size and within the MC memory cap."""
        n, call_shape = len(images), (*images.shape[1:-1], self._channels)
        size = images_per_call(self.batch_size, call_shape, self.num_samples)
        return (slice(i, min(i + size, n)) for i in range(0, n, size))

    def predict(self, images: np.ndarray) -> dict:
        """{'probs' (N, K), 'predictive_entropy', 'expected_entropy', 'mutual_information'}:
        `uncertainty.mc_predict` over batches of `images`, with the T shared masks of
        `seed`: each image's answer is the one the SavedModel exported with that mask seed
        (serving.MASK_SEED) gives it."""
        images = to_unit_float(images)
        # One call per batch: a batch is already within images_per_call's cap.
        batches = (convert_channels(tf.constant(images[batch]), self._channels)
                   for batch in self._batches(images))
        with seeded_dropout(self.classifier, self.seed):
            return mc_predict(self.classifier, batches, self.num_samples, self.multilabel,
                              image_shape=(*images.shape[1:-1], self._channels),
                              shared_masks=True)

    def pgd(self, images: np.ndarray, targets: np.ndarray, epsilon: float, steps: int = 10,
            step_size: float | None = None, random_start: bool = True) -> np.ndarray:
        """L-inf PGD (Madry et al., 2018) on [0, 1] images; returns float32 adversarials.

        Start: x + U(-eps, eps) when random_start. Each of `steps` steps moves by
        step_size * sign(grad) (default step_size = 2.5 * eps / steps, Madry et al.'s ratio,
        so the boundary of the ball is reachable from any start), then projects onto the
        eps-ball around x and onto [0, 1]."""
        images, targets = to_unit_float(images), np.asarray(targets, np.float32)
        if self._attack_fn is None:
            self._build_attack(images.shape)
        step_size = 2.5 * epsilon / steps if step_size is None else step_size
        rng = np.random.default_rng(self.seed)
        # Masks for the attack come from another stream than the evaluation's (seed + 1):
        # the attacker does not get to optimise against the exact masks it is scored with.
        adversarial = np.empty_like(images)
        with seeded_dropout(self.classifier, self.seed + 1):
            for batch in self._batches(images):
                x = images[batch]
                start = (rng.uniform(-epsilon, epsilon, x.shape).astype(np.float32)
                         if random_start else np.zeros_like(x))
                adversarial[batch] = self._attack_fn(x, targets[batch], epsilon, step_size,
                                                     steps, start).numpy()
        return adversarial

    def fgsm(self, images: np.ndarray, targets: np.ndarray, epsilon: float) -> np.ndarray:
        """FGSM (Goodfellow et al., 2015): x + eps * sign(grad), clipped to [0, 1]."""
        return self.pgd(images, targets, epsilon, steps=1, step_size=epsilon,
                        random_start=False)


def gaussian_noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """x + N(0, sigma^2) on [0, 1] images (uint8 is scaled first), clipped to [0, 1]."""
    images = to_unit_float(images)
    noise = np.random.default_rng(seed).normal(0.0, sigma, images.shape).astype(np.float32)
    return np.clip(images + noise, 0.0, 1.0)


# -------------------------------------------------------------------------------- driver


def evaluate_classifier(classifier: keras.Model, images: np.ndarray, targets: np.ndarray,
                        info: DatasetInfo, *, num_samples: int = 10, batch_size: int = 128,
                        gaussian_sigmas: Sequence[float] = (),
                        fgsm_epsilons: Sequence[float] = (),
                        pgd_epsilons: Sequence[float] = (), pgd_steps: int = 10,
                        corruptions: bool | Sequence[str] = False, seed: int = 0,
                        split_name: str = "test") -> dict:
    """Flat metrics: '<split_name>/<metric>' on clean images, then 'gaussian_<sigma>/...',
    'fgsm_<eps>/...', 'pgd_<eps>/...' and 'corruption/<name>_<severity>/...' (SUMMARY_METRICS
    each), with the MedMNIST-C-style summary:
      corruption/<name>/balanced_error          mean over severities of 1 - balanced_acc
      corruption/mean_balanced_error            its mean over corruptions
      corruption/mean_balanced_error_minus_clean  that minus the clean balanced error
    (MedMNIST-C's BE and rBE further divide by an AlexNet baseline at 224 px; none is
    comparable here, so the unnormalised errors are reported). `corruptions` is True for the
    dataset's whole set (see corruptions_for) or a list of names.
    """
    table = corruptions_for(info.name)
    names = list(table) if corruptions is True else list(corruptions or ())
    unknown = sorted(set(names) - set(table))
    if unknown:  # before minutes of attacks, not after
        raise ValueError(f"Unknown corruptions {unknown} for {info.name}; choose from "
                         f"{sorted(table)}.")
    predictor = MCPredictor(classifier, num_samples, info.multilabel, batch_size, seed)
    clean = to_unit_float(images)
    targets = np.asarray(targets, np.float32)
    results = {}

    def record(condition, condition_images, keep=SUMMARY_METRICS):
        outputs = predictor.predict(condition_images)
        metrics = classification_metrics(targets, outputs["probs"], info)
        metrics["predictive_entropy"] = float(outputs["predictive_entropy"].mean())
        metrics["mutual_information"] = float(outputs["mutual_information"].mean())
        results.update({f"{condition}/{k}": v for k, v in metrics.items()
                        if keep is None or k in keep})
        logging.info("%-28s acc %.4f  balanced_acc %.4f", condition, metrics["acc"],
                     metrics["balanced_acc"])
        return metrics

    clean_metrics = record(split_name, clean, keep=None)
    for sigma in gaussian_sigmas:
        record(f"gaussian_{sigma:g}", gaussian_noise(clean, sigma, seed))
    for epsilon in fgsm_epsilons:
        record(f"fgsm_{epsilon:g}", predictor.fgsm(clean, targets, epsilon))
    for epsilon in pgd_epsilons:
        record(f"pgd_{epsilon:g}", predictor.pgd(clean, targets, epsilon, steps=pgd_steps))

    if names:
        uint8_images = images if images.dtype == np.uint8 else to_uint8(clean)
        _record_corruptions(record, results, uint8_images, names, seed, info.name,
                            clean_balanced_error=1.0 - clean_metrics["balanced_acc"])
    return results


def _record_corruptions(record, results: dict, images: np.ndarray, names: Sequence[str],
                        seed: int, dataset_name: str, clean_balanced_error: float) -> None:
    """Every corruption at every severity through `record`, then the summary in `results`."""
    errors = {}
    for name in names:
        for severity in SEVERITIES:
            corrupted = corrupt(images, name, severity, seed, dataset_name)
            metrics = record(f"corruption/{name}_{severity}", corrupted)
            errors.setdefault(name, []).append(1.0 - metrics["balanced_acc"])
        results[f"corruption/{name}/balanced_error"] = float(np.mean(errors[name]))
    mean_error = float(np.mean([np.mean(e) for e in errors.values()]))
    results["corruption/mean_balanced_error"] = mean_error
    results["corruption/mean_balanced_error_minus_clean"] = mean_error - clean_balanced_error
