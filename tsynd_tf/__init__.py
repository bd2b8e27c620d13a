"""tsynd-tf: TSynD (targeted synthetic data generation) for medical image classification.

Modules, one per concept:
  data         MedMNIST and image-folder loading, low-data subsets, tf.data pipelines.
  models       autoencoder (spatial latents) and MC-dropout Bayesian classifiers.
  uncertainty  predictive entropy, expected entropy and mutual information (BALD).
  generation   latent ascent of the uncertainty objective (and the latent-noise baseline).
  training     the TSynD schedule, checkpoints and summaries; `train` is its CLI.
"""

__version__ = "0.1.0"
