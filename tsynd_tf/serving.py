"""A trained MC-dropout classifier as a self-contained SavedModel for TF Serving.

`export_classifier` (called through `export_trained` at the end of training, and by
`python -m tsynd_tf.export`) writes `<export_dir>/<name>/<version>/` (TF Serving's layout,
published atomically by `fileio.atomic_directory`) with two signatures:

  serving_default  images: uint8 (None, size, size, channels), pixel values 0-255
                   -> probabilities (B, K) float32, mean of T MC-dropout passes
                      predicted_class (B,) int64, argmax of probabilities
                      predictive_entropy (B,) float32, nats
                      mutual_information (B,) float32, nats (epistemic part, BALD)
                      ood_score (B,) float32, how unlike the labelled training images
                      the input is (tsynd_tf.ood; ~1 or less on in-distribution images)
                      refer (B,) bool, mutual_information > the embedded mi_threshold
                      or ood_score > the embedded ood_threshold
  metadata         no inputs -> class_names (K,) string, dataset_name, task string,
                   size, channels, num_samples int64, mi_threshold and ood_threshold
                   float32 and metadata_json (string: everything, including how the
                   thresholds were chosen and what the OOD score is)

The same JSON is also written to `assets.extra/tsynd_metadata.json`, TF Serving's folder for
files that travel with a version, so a client can read it without TensorFlow. Reading either
needs no project code: `tf.saved_model.load(path).signatures["metadata"]()`.

The uncertainty is computed by `tsynd_tf.uncertainty` (traced into the graph), the single
implementation that training and the latent ascent use; the OOD score by `tsynd_tf.ood`, its
statistics baked in as constants. Both default thresholds are upper quantiles of the
validation images' values (MI at the served T, 1 - refer_fraction; the OOD score,
1 - ood_refer_fraction): see `choose_mi_threshold`, `choose_ood_threshold` and
saved_models/README.md; `export_trained` fits the OOD score and chooses both.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from pathlib import Path

import numpy as np

from tsynd_tf.fileio import atomic_directory, read_json, remove_abandoned_directories

log = logging.getLogger(__name__)

FORMAT = "tsynd-tf-classifier"
# 2: the ood_score output and ood_threshold; 3: MC masks shared across the batch (MASK_SEED)
FORMAT_VERSION = 3
FORMAT_CHANGES = {2: "the ood_score output", 3: "one answer per image whatever the batch"}
METADATA_FILE = "tsynd_metadata.json"  # in <version>/assets.extra/
SERVING_SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"
DEFAULT_REFER_FRACTION = 0.05
# 1%: an input is out of distribution when it is farther out than 99% of validation images.
# On PneumoniaMNIST it refers 1.1-1.4% of the test images, and every solid-colour, noise
# and colour-gradient image (tsynd_tf/ood.py).
DEFAULT_OOD_REFER_FRACTION = 0.01
# The served MC-dropout masks: T masks, one per pass, shared by every image of every call
# (uncertainty.mc_logits' shared_masks), drawn from this seed as evaluation.seeded_dropout
# draws them. `evaluate --seed=0` (its default) therefore scores each image exactly as the
# export answers for it; the MI threshold is chosen with these masks too.
MASK_SEED = 0


class ExportError(ValueError):
    """A run folder or export target that cannot be used; the message says why."""


# --------------------------------------------------------------------------- threshold


def choose_mi_threshold(classifier, val_images: np.ndarray, info, num_samples: int, *,
                        val_targets: np.ndarray | None = None,
                        refer_fraction: float = DEFAULT_REFER_FRACTION,
                        batch_size: int = 256) -> tuple[float, dict]:
    """Referral threshold: the (1 - refer_fraction) quantile of validation MI at T passes.

    An image is referred when its MI (epistemic uncertainty) is higher than that of
    (1 - refer_fraction) of in-distribution validation images: on data like the validation
    set about `refer_fraction` of cases go to a human, and images the classifier has not
    learnt to handle (shifted, unusual) go more often. A quantile fixes the referral
    workload and does not depend on the handful of validation errors a small model makes.
    T must be the T that is served: the MC estimate of MI grows with T.

    `val_images`: uint8 (N, H, W, C). With `val_targets` (one-hot) the stats also give the
    accuracy on the retained and referred validation images.
    Returns (threshold, stats): how the rule fared on the validation images.
    """
    from tsynd_tf.data import make_pipeline
    from tsynd_tf.evaluation import seeded_dropout
    from tsynd_tf.uncertainty import mc_predict

    _check_validation(val_images, refer_fraction, "refer_fraction", "mi_threshold")
    dataset = make_pipeline(val_images, None, batch_size, channels=info.channels)
    with seeded_dropout(classifier, MASK_SEED):  # the masks that are served
        measures = mc_predict(classifier, dataset, num_samples, info.multilabel,
                              shared_masks=True)
    mi = measures["mutual_information"]
    threshold = upper_quantile(mi, refer_fraction)
    referred = mi > threshold
    stats = {
        "rule": "quantile of validation mutual information",
        "quantile": 1.0 - refer_fraction,
        "refer_fraction_target": refer_fraction,
        "refer_fraction_validation": float(referred.mean()),
        "num_validation_images": int(len(mi)),
        "num_samples": int(num_samples),
        "validation_mi_median": float(np.median(mi)),
        "validation_mi_max": float(mi.max()),
    }
    if val_targets is not None and not info.multilabel:
        correct = measures["probs"].argmax(-1) == np.asarray(val_targets).argmax(-1)
        stats["validation_accuracy"] = float(correct.mean())
        stats["validation_accuracy_retained"] = (
            float(correct[~referred].mean()) if (~referred).any() else None)
        stats["validation_accuracy_referred"] = (
            float(correct[referred].mean()) if referred.any() else None)
    return threshold, stats


def upper_quantile(values: np.ndarray, refer_fraction: float) -> float:
    """The (1 - refer_fraction) quantile, method "higher": a value observed on validation,
    with at most refer_fraction of them above it."""
    return float(np.quantile(values, 1.0 - refer_fraction, method="higher"))


def _check_validation(val_images, refer_fraction: float, fraction_name: str,
                      threshold_name: str) -> None:
    if not 0.0 < refer_fraction < 1.0:
        raise ValueError(f"{fraction_name} must be in (0, 1); got {refer_fraction}.")
    if len(val_images) == 0:
        raise ValueError(f"No validation images to choose the {threshold_name} from; pass "
                         f"{threshold_name} explicitly.")


def choose_ood_threshold(ood_score, val_images: np.ndarray, *,
                         refer_fraction: float = DEFAULT_OOD_REFER_FRACTION,
                         batch_size: int = 256) -> tuple[float, dict]:
    """Referral threshold on `ood_score` (an ood.OODScore): the (1 - refer_fraction)
    quantile of the validation images' scores, as for MI. The fraction is smaller than MI's:
    the score is for inputs that are not what the model was built for at all, and each
    validation image above it is a false alarm. Returns (threshold, stats)."""
    _check_validation(val_images, refer_fraction, "ood_refer_fraction", "ood_threshold")
    scores = ood_score.scores(val_images, batch_size)
    threshold = upper_quantile(scores, refer_fraction)
    return threshold, {
        "rule": "quantile of validation ood_score",
        "quantile": 1.0 - refer_fraction,
        "refer_fraction_target": refer_fraction,
        "refer_fraction_validation": float((scores > threshold).mean()),
        "num_validation_images": int(len(scores)),
        "validation_ood_median": float(np.median(scores)),
        "validation_ood_max": float(scores.max()),
    }


# --------------------------------------------------------------------------- export


def _versions(model_dir: Path) -> list[Path]:
    """The version folders in model_dir, highest first."""
    versions = [p for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return sorted(versions, key=lambda p: int(p.name), reverse=True)


def _next_version(model_dir: Path) -> int:
    versions = _versions(model_dir)
    return int(versions[0].name) + 1 if versions else 1


def read_metadata(version: Path) -> dict | None:
    """The metadata of an exported version (assets.extra), or None where it has none."""
    return read_json(Path(version) / "assets.extra" / METADATA_FILE)


def find_export(model_dir: str | Path, run_dir: str | Path) -> Path | None:
    """The highest complete version in model_dir exported from the run at run_dir (its
    metadata's run_dir), or None."""
    run = str(Path(run_dir).resolve())
    for version in _versions(Path(model_dir).expanduser()):
        metadata = read_metadata(version) or {}
        if metadata.get("run_dir") == run and (version / "saved_model.pb").is_file():
            return version
    return None


def build_metadata(classifier, info, num_samples: int, mi_threshold: float,
                   threshold_rule: dict | None = None, extra: dict | None = None, *,
                   ood_score, ood_threshold: float, ood_threshold_rule: dict | None = None
                   ) -> dict:
    import keras
    import tensorflow as tf

    import tsynd_tf

    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset_name": info.name,
        "task": info.task,
        "multilabel": info.multilabel,
        "class_names": list(info.class_names),
        "size": int(info.size),
        "channels": int(info.channels),
        "num_samples": int(num_samples),
        "mc_masks": {"seed": MASK_SEED, "rule": "one dropout mask per pass, shared by every "
                     "image of every call: an image gets one answer whatever the batch"},
        "mi_threshold": float(mi_threshold),
        "threshold_rule": threshold_rule or {"rule": "given explicitly"},
        "ood_threshold": float(ood_threshold),
        "ood_threshold_rule": ood_threshold_rule or {"rule": "given explicitly"},
        "ood_score": ood_score.describe(),
        "classifier": classifier.name,
        "input": {"name": "images", "dtype": "uint8",
                  "shape": [None, int(info.size), int(info.size), int(info.channels)],
                  "range": [0, 255]},
        "outputs": {
            "probabilities": "float32 (B, K): mean over num_samples MC-dropout passes "
                             "(softmax; independent sigmoids for multi-label tasks)",
            "predicted_class": "int64 (B,): argmax of probabilities",
            "predictive_entropy": "float32 (B,): entropy of the mean prediction, nats",
            "mutual_information": "float32 (B,): predictive minus expected entropy, nats",
            "ood_score": "float32 (B,): distance to the labelled training images (see "
                         "ood_score), ~1 or less in distribution",
            "refer": "bool (B,): mutual_information > mi_threshold or "
                     "ood_score > ood_threshold",
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tsynd_tf": tsynd_tf.__version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__},
    }
    if extra:
        metadata.update(extra)
    return metadata


def _check_classifier(classifier, info, num_samples: int, mi_threshold: float,
                      ood_threshold: float) -> None:
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 (MC dropout); got {num_samples}: with one "
                         "pass the mutual information is always 0.")
    for name, value, unit in (("mi_threshold", mi_threshold, " (nats)"),
                              ("ood_threshold", ood_threshold, "")):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0{unit}; got {value}.")
    expected = (info.size, info.size, info.channels)
    if tuple(classifier.input_shape[1:]) != expected:
        raise ValueError(f"The classifier takes {tuple(classifier.input_shape[1:])} images but "
                         f"the dataset info says {expected}.")
    if classifier.output_shape[-1] != info.num_classes:
        raise ValueError(f"The classifier has {classifier.output_shape[-1]} outputs but the "
                         f"dataset has {info.num_classes} classes.")


def _archive(classifier, info, num_samples: int, mi_threshold: float, ood_score,
             ood_threshold: float, metadata_json: str):
    """The Keras ExportArchive with the serving and metadata signatures."""
    import keras
    import tensorflow as tf

    from tsynd_tf.uncertainty import mc_logits, uncertainty_from_logits

    def serve(images):
        x = tf.cast(images, tf.float32) / 255.0
        measures = uncertainty_from_logits(
            mc_logits(classifier, x, num_samples, shared_masks=True), info.multilabel)
        probs = measures["probs"]
        mi = measures["mutual_information"]
        ood = ood_score(x)
        return {
            "probabilities": probs,
            "predicted_class": tf.argmax(probs, axis=-1, output_type=tf.int64),
            "predictive_entropy": measures["predictive_entropy"],
            "mutual_information": mi,
            "ood_score": ood,
            "refer": tf.logical_or(mi > mi_threshold, ood > ood_threshold),
        }

    def describe():
        return {
            "class_names": tf.constant(list(info.class_names), tf.string),
            "dataset_name": tf.constant(info.name, tf.string),
            "task": tf.constant(info.task, tf.string),
            "size": tf.constant(info.size, tf.int64),
            "channels": tf.constant(info.channels, tf.int64),
            "num_samples": tf.constant(num_samples, tf.int64),
            "mi_threshold": tf.constant(mi_threshold, tf.float32),
            "ood_threshold": tf.constant(ood_threshold, tf.float32),
            "metadata_json": tf.constant(metadata_json, tf.string),
        }

    archive = keras.export.ExportArchive()
    archive.track(classifier)  # exposes .variables on the loaded object
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[
        tf.TensorSpec((None, info.size, info.size, info.channels), tf.uint8, name="images")])
    archive.add_endpoint(METADATA_SIGNATURE, describe, input_signature=[])
    return archive


def export_classifier(classifier, info, num_samples: int, mi_threshold: float,
                      export_dir, *, ood_score, ood_threshold: float, name: str | None = None,
                      version: int | None = None, threshold_rule: dict | None = None,
                      ood_threshold_rule: dict | None = None,
                      extra_metadata: dict | None = None) -> Path:
    """Writes <export_dir>/<name>/<version>/ atomically and returns its path.

    `classifier`: a Keras MC-dropout classifier taking float32 images in [0, 1] and returning
    logits. `info`: its DatasetInfo. `ood_score`: the classifier's ood.OODScore. The
    SavedModel is written by fileio.atomic_directory (a hidden temporary folder beside the
    target, flushed to disk and renamed into place): a version folder either is complete or
    does not exist, and is never overwritten.
    """
    num_samples, mi_threshold = int(num_samples), float(mi_threshold)
    ood_threshold = float(ood_threshold)
    _check_classifier(classifier, info, num_samples, mi_threshold, ood_threshold)
    model_dir = Path(export_dir).expanduser() / (name or info.name)
    model_dir.mkdir(parents=True, exist_ok=True)
    for abandoned in remove_abandoned_directories(model_dir):
        log.warning("Removed %s, left by an export that was interrupted.", abandoned)
    version = _next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be >= 1; got {version}.")
    target = model_dir / str(version)
    if target.exists():
        raise ExportError(f"{target} already exists; exported versions are never "
                          "overwritten. Pass another --version or leave it out.")

    metadata = build_metadata(classifier, info, num_samples, mi_threshold, threshold_rule,
                              extra_metadata, ood_score=ood_score, ood_threshold=ood_threshold,
                              ood_threshold_rule=ood_threshold_rule)
    metadata_json = json.dumps(metadata, indent=2)
    archive = _archive(classifier, info, num_samples, mi_threshold, ood_score, ood_threshold,
                       metadata_json)
    from tsynd_tf.evaluation import seeded_dropout

    try:  # the dropout state saved with the model, which the served masks are drawn from
        with atomic_directory(target) as tmp, seeded_dropout(classifier, MASK_SEED):
            archive.write_out(str(tmp), verbose=False)
            (tmp / "assets.extra").mkdir(exist_ok=True)
            (tmp / "assets.extra" / METADATA_FILE).write_text(metadata_json + "\n")
    except FileExistsError as e:  # another export took this version meanwhile
        raise ExportError(f"{e} Exported versions are never overwritten.") from e
    return target


def export_trained(classifier, dataset, labelled, num_samples: int, export_dir, *,
                   name: str, version: int | None = None, mi_threshold: float | None = None,
                   refer_fraction: float = DEFAULT_REFER_FRACTION,
                   ood_threshold: float | None = None,
                   ood_refer_fraction: float = DEFAULT_OOD_REFER_FRACTION,
                   batch_size: int = 256, extra_metadata: dict | None = None) -> Path:
    """What training and the export command do: the OOD score fitted on the `labelled`
    training images (a data.Split), each threshold given or chosen on `dataset.val`, then
    export_classifier."""
    from tsynd_tf.ood import OODScore

    info, val = dataset.info, dataset.val
    mi_rule = {"rule": "given explicitly (--mi_threshold)"}
    if mi_threshold is None:
        mi_threshold, mi_rule = choose_mi_threshold(
            classifier, val.images, info, num_samples, val_targets=val.targets,
            refer_fraction=refer_fraction, batch_size=batch_size)
    ood_score = OODScore.fit(classifier, labelled.images, labelled.targets, val.images,
                             info.multilabel, batch_size)
    ood_rule = {"rule": "given explicitly (--ood_threshold)"}
    if ood_threshold is None:
        ood_threshold, ood_rule = choose_ood_threshold(
            ood_score, val.images, refer_fraction=ood_refer_fraction, batch_size=batch_size)
    return export_classifier(
        classifier, info, num_samples, mi_threshold, export_dir, ood_score=ood_score,
        ood_threshold=ood_threshold, name=name, version=version, threshold_rule=mi_rule,
        ood_threshold_rule=ood_rule, extra_metadata=extra_metadata)
