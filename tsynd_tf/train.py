r"""Trains a classifier with TSynD or one of its baselines.

  python -m tsynd_tf.train                                # TSynD-MI, PneumoniaMNIST, 10%
  python -m tsynd_tf.train --flagfile=flags/pneumonia_1pct.cfg --method=baseline --seed=3
  tensorboard --logdir runs/

Outputs in --output_dir: config.json, subset.json (the labelled indices), checkpoints/,
synthetic/round_XX.npz, tensorboard/, best.weights.h5, classifier.keras, results.json and,
unless --export_dir is empty, a SavedModel under <export_dir>/<run name>/1.
"""

import os
import sys
from pathlib import Path

from absl import app, flags

from tsynd_tf import distribute, generation, models
from tsynd_tf.data import MEDMNIST_SIZES

# Data.
flags.DEFINE_string("dataset", "pneumoniamnist",
                    "MedMNIST 2D dataset name, or 'folder' for an image folder at --data_dir.")
flags.DEFINE_integer("size", 28, f"Image size in pixels: {MEDMNIST_SIZES} for MedMNIST, "
                     "any even size >= 14 for an image folder.")
flags.DEFINE_string("data_dir", None, "MedMNIST root (default $TSYND_DATA_DIR, else "
                    "~/.medmnist), or the image folder for --dataset=folder.")
flags.DEFINE_integer("channels", 1, "Channels (1 or 3) of --dataset=folder images; "
                     "MedMNIST datasets keep their own.")
flags.DEFINE_float("val_fraction", 0.1, "Validation share carved from train for an image "
                   "folder without a val/ folder.")
flags.DEFINE_float("train_fraction", 0.1, "Labelled share of the training split (0, 1].")
flags.DEFINE_integer("train_count", 0, "Labelled training images; overrides "
                     "--train_fraction when > 0.")
flags.DEFINE_bool("augment", False, "Light random translation of training images.")
# Method.
flags.DEFINE_enum("method", "tsynd_mi", generation.METHODS, "What synthetic data to add.")
flags.DEFINE_integer("rounds", 5, "Generation rounds after the initial training.")
flags.DEFINE_float("pool_fraction", 1.0, "Synthetic images per round, as a share of the "
                   "labelled images.")
flags.DEFINE_float("synthetic_ratio", 0.5, "Share of each training batch that is synthetic.")
flags.DEFINE_float("epsilon", 0.3, "Latent ball radius, relative to ||z0||_2.")
flags.DEFINE_float("step_size", 0.25, "Ascent step length, relative to the ball radius.")
flags.DEFINE_integer("ascent_steps", 10, "Gradient ascent steps per synthetic image.")
flags.DEFINE_enum("synthesis", "decode", generation.SYNTHESES, "Synthetic image from the "
                  "moved latent z*: 'decode' = dec(z*) (the paper); 'residual' = x + dec(z*) - "
                  "dec(z0), the real image plus the change the latent move makes.")
# Models.
flags.DEFINE_enum("classifier", "small_cnn", models.CLASSIFIERS, "Classifier architecture.")
flags.DEFINE_float("dropout_rate", 0.3, "MC dropout rate (head; half of it after each stage).")
flags.DEFINE_integer("num_samples", 10, "MC dropout samples T per image.")
flags.DEFINE_integer("latent_channels", 8, "Channels of the autoencoder's latent maps.")
flags.DEFINE_integer("ae_width", 16, "Filters of the autoencoder's first layer (doubling per "
                     "level up to 8x).")
# Optimisation.
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", 256, "Batch size of evaluation and generation.")
flags.DEFINE_integer("steps_per_epoch", 0, "Classifier and autoencoder steps per epoch; 0 = "
                     "one pass over their training images.")
flags.DEFINE_float("learning_rate", 1e-3, "Classifier Adam learning rate.")
flags.DEFINE_integer("initial_epochs", 20, "Classifier epochs on real data before round 1.")
flags.DEFINE_integer("epochs_per_round", 10, "Classifier epochs after each round.")
flags.DEFINE_float("ae_learning_rate", 1e-3, "Autoencoder Adam learning rate.")
flags.DEFINE_integer("ae_epochs", 30, "Autoencoder epochs.")
flags.DEFINE_bool("ae_use_unlabelled", False, "Train the autoencoder on the whole training "
                  "split's images (no labels used); default: the labelled subset only.")
# Run.
flags.DEFINE_integer("seed", 0, "Seed of the subset, initialisation, shuffling and dropout.")
flags.DEFINE_string("output_dir", None, "Run directory (default runs/<dataset>_<size>_"
                    "<fraction>_<method>_s<seed>). An existing run there is resumed.")
flags.DEFINE_string("export_dir", "saved_models", "Where the SavedModel goes; '' to skip.")
flags.DEFINE_enum("mixed_precision", "auto", ["auto", "float32", "mixed_float16",
                  "mixed_bfloat16"], "'auto': mixed_float16 on a GPU, float32 on a CPU.")
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES,
                  "tf.distribute strategy: 'mirrored' = this machine's GPUs, 'multi_worker' = "
                  "several machines configured by TF_CONFIG (BUILD.md), 'tpu'.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile train and ascent steps (GPU; on CPU it "
                  "is 10-30x slower).")
flags.DEFINE_integer("verbose", -1, "Keras verbosity; -1: progress bars on a terminal, one "
                     "line per epoch otherwise.")

FLAGS = flags.FLAGS


def run_name() -> str:
    amount = f"n{FLAGS.train_count}" if FLAGS.train_count else f"f{FLAGS.train_fraction:g}"
    dataset = Path(FLAGS.data_dir).name if FLAGS.dataset == "folder" else FLAGS.dataset
    return f"{dataset}_{FLAGS.size}_{amount}_{FLAGS.method}_s{FLAGS.seed}"


def validate_flags() -> None:
    """Impossible values fail before any data is read."""
    checks = [
        (0.0 < FLAGS.train_fraction <= 1.0, "--train_fraction must be in (0, 1]"),
        (FLAGS.train_count >= 0, "--train_count must be >= 0"),
        (FLAGS.dataset == "folder" or FLAGS.size in MEDMNIST_SIZES,
         f"--size must be one of {MEDMNIST_SIZES} for MedMNIST"),
        (FLAGS.channels in (1, 3), "--channels must be 1 or 3"),
        (0.0 < FLAGS.dropout_rate < 1.0, "--dropout_rate must be in (0, 1)"),
        (0.0 < FLAGS.synthetic_ratio < 1.0, "--synthetic_ratio must be in (0, 1)"),
        (FLAGS.pool_fraction > 0.0, "--pool_fraction must be > 0"),
        (FLAGS.epsilon > 0.0, "--epsilon must be > 0"),
        (FLAGS.step_size > 0.0, "--step_size must be > 0"),
        (FLAGS.ascent_steps >= 1, "--ascent_steps must be >= 1"),
        (FLAGS.num_samples >= 2, "--num_samples must be >= 2 (MI needs several MC samples)"),
        (FLAGS.rounds >= 0 and FLAGS.epochs_per_round >= 0 and FLAGS.initial_epochs >= 1,
         "--rounds and --epochs_per_round must be >= 0, --initial_epochs >= 1"),
        (FLAGS.ae_epochs >= 1, "--ae_epochs must be >= 1"),
        (FLAGS.batch_size >= 2 and FLAGS.eval_batch_size >= 1, "--batch_size must be >= 2"),
    ]
    for ok, message in checks:
        if not ok:
            raise app.UsageError(message)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    validate_flags()
    if FLAGS.data_dir:  # recorded absolute: evaluate and report then work from any folder
        FLAGS.data_dir = os.path.abspath(os.path.expanduser(FLAGS.data_dir))
    FLAGS.output_dir = FLAGS.output_dir or os.path.join("runs", run_name())
    from tsynd_tf import training  # Deferred: imports TensorFlow after flags are validated.

    names = [f.name for f in FLAGS.get_key_flags_for_module(__name__)]
    flag_values = {name: FLAGS[name].value for name in names}
    from tsynd_tf.data import DataError
    from tsynd_tf.runs import RunDirError

    try:
        trainer = training.Trainer(FLAGS, flag_values,
                                   {name: FLAGS[name].default for name in names})
    except (DataError, RunDirError) as e:  # bad input: the message says what to fix
        sys.exit(f"train: {e}")
    results = trainer.run()
    # In multi-worker training only the chief exports (the others hold the same weights).
    export_path = (trainer.export(FLAGS.export_dir, run_name())
                   if FLAGS.export_dir and trainer.is_chief else None)
    print(f"\n{run_name()}: test ACC {results['test/acc']:.4f}, AUC {results['test/auc']:.4f} "
          f"(best val AUC {results['val/auc']:.4f}); {results['num_synthetic']} synthetic "
          f"images.\nRun directory: {trainer.run_dir}\nTensorBoard:   tensorboard --logdir "
          f"{trainer.run_dir}/tensorboard" + (f"\nSavedModel:    {export_path}"
                                                if export_path else ""))


if __name__ == "__main__":
    app.run(main)
