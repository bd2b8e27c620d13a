r"""Why small Gaussian noise collapses our classifiers: a measurement, not a benchmark.

  python -m bench.noise_collapse --run_dir=runs/pneumoniamnist_28_f0.1_tsynd_mi_s0

For each sigma, on the run's test split (noise seeded, MC dropout seeded as in evaluate):
test accuracy, balanced accuracy and mean predicted p(class 1) of the run's classifier as
trained, and of a copy whose BatchNorm statistics are recomputed on the noisy images
themselves (test-time BatchNorm adaptation). If adaptation restores the predictions, the
collapse is the shift of the activations' statistics away from the clean images that
BatchNorm normalises with, i.e. a property of the trained models (clean-only training data and
inference-mode BatchNorm), not of the noise or of our evaluation. docs/ROBUSTNESS.md gives
the numbers.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from tsynd_tf import cli

flags.DEFINE_string("run_dir", None, "A finished training run.")
flags.DEFINE_list("sigmas", ["0", "0.01", "0.02", "0.05", "0.1"], "Gaussian noise stds.")
flags.mark_flag_as_required("run_dir")
FLAGS = flags.FLAGS


def measure(classifier, images, targets, info, seed: int = 0) -> dict:
    from tsynd_tf import evaluation

    metrics = evaluation.evaluate_classifier(classifier, images, targets, info, seed=seed)
    predictor = evaluation.MCPredictor(classifier, 10, info.multilabel, seed=seed)
    probs = predictor.predict(images)["probs"]
    return {"acc": metrics["test/acc"], "balanced_acc": metrics["test/balanced_acc"],
            "mean_p1": float(probs[:, 1].mean())}


def main(argv):
    del argv  # cli.run rejects positional arguments
    import keras
    import tensorflow as tf

    from tsynd_tf import evaluation, models, runs

    run = runs.load_run(FLAGS.run_dir)
    test = run.load_dataset().test
    clean = test.images.astype(np.float32) / 255.0
    print("| sigma | acc | balanced acc | mean p(class 1) | acc, BN adapted | balanced acc, "
          "BN adapted | mean p(class 1), BN adapted |\n|---|---|---|---|---|---|---|")
    for sigma in (float(s) for s in FLAGS.sigmas):
        noisy = evaluation.gaussian_noise(clean, sigma, seed=0)
        adapted = keras.models.clone_model(run.classifier)
        adapted.set_weights(run.classifier.get_weights())
        models.recompute_batch_norm_statistics(
            adapted, tf.data.Dataset.from_tensor_slices(noisy).batch(256))
        rows = [measure(m, noisy, test.targets, run.info) for m in (run.classifier, adapted)]
        print(f"| {sigma:g} | " + " | ".join(f"{r[k]:.3f}" for r in rows
                                             for k in ("acc", "balanced_acc", "mean_p1")) + " |")


if __name__ == "__main__":
    cli.run(main)
