"""Ways of making synthetic training images, behind one seam (synthesis.base).

  baseline       none: real images only (NoSynthesis)
  latent_noise   dec(z0 + u), u random at TSynD's latent budget (latent.LatentNoise)
  tsynd_mi       latent ascent of the classifier's mutual information (latent.TSynD)
  tsynd_entropy  the same ascent of the predictive entropy (latent.TSynDEntropy)
  augment        augmented copies of labelled images, a fixed policy (augment.Augment)
  diffusion      samples of a class-conditional diffusion model (diffusion.Diffusion)
  gan            samples of a class-conditional GAN (gan.GAN)
  tsynd_diffusion          those samples guided up the classifier's mutual information
                           (targeted_diffusion.TSynDDiffusion)
  tsynd_diffusion_entropy  the same guidance up the predictive entropy
                           (targeted_diffusion.TSynDDiffusionEntropy)
  external       the user's own synthetic images from --external_pool (external.External)

A new method is one module with a `SynthesisMethod` subclass, one entry in METHODS and its
name in config.METHODS.
"""

from tsynd_tf.errors import ConfigError
from tsynd_tf.synthesis.augment import Augment
from tsynd_tf.synthesis.base import Context, NoSynthesis, Pool, Services, SynthesisMethod
from tsynd_tf.synthesis import external
from tsynd_tf.synthesis.diffusion import Diffusion
from tsynd_tf.synthesis.external import External
from tsynd_tf.synthesis.gan import GAN
from tsynd_tf.synthesis.latent import LatentNoise, TSynD, TSynDEntropy
from tsynd_tf.synthesis.targeted_diffusion import TSynDDiffusion, TSynDDiffusionEntropy

METHODS = {
    "baseline": NoSynthesis,
    "latent_noise": LatentNoise,
    "tsynd_mi": TSynD,
    "tsynd_entropy": TSynDEntropy,
    "augment": Augment,
    "diffusion": Diffusion,
    "gan": GAN,
    "tsynd_diffusion": TSynDDiffusion,
    "tsynd_diffusion_entropy": TSynDDiffusionEntropy,
    "external": External,
}

__all__ = ["Context", "Pool", "Services", "SynthesisMethod", "TSynD", "METHODS", "create",
           "check_config"]


def check_config(config) -> None:
    """What a TrainConfig asks of its method, checked before any work (ConfigError names
    the flag): --external_pool must exist (its content is checked against the dataset when
    the run is built); --train_on=synthetic makes every pool before the classifier trains,
    so it needs an untargeted method that makes images, and rounds to make them in."""
    if config.method == "external":
        external.resolve(config.external_pool, config.seed)
    if config.train_on != "synthetic":
        return
    method = METHODS[config.method]
    if not method.makes_images or method.reads_classifier:
        untargeted = [name for name, m in METHODS.items()
                      if m.makes_images and not m.reads_classifier]
        why = "makes none" if not method.makes_images else "reads the classifier it trains"
        raise ConfigError(f"--train_on=synthetic makes every synthetic image before the "
                          f"classifier trains; --method={config.method} {why}: use one of "
                          f"{untargeted}.")
    if config.rounds < 1:
        raise ConfigError("--train_on=synthetic needs --rounds >= 1 (the pools it trains on).")


def create(name: str, context: Context, autoencoder: tuple) -> SynthesisMethod:
    """The method `name` of a run; `autoencoder` (encoder, decoder, autoencoder) reaches
    only the methods that use it."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; one of {list(METHODS)}.")
    method = METHODS[name]
    return method(context, autoencoder) if method.uses_autoencoder else method(context)
