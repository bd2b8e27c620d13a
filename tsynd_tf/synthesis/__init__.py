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

A new method is one module with a `SynthesisMethod` subclass and one entry in METHODS.
"""

from tsynd_tf.synthesis.augment import Augment
from tsynd_tf.synthesis.base import Context, NoSynthesis, Pool, SynthesisMethod
from tsynd_tf.synthesis.diffusion import Diffusion
from tsynd_tf.synthesis.gan import GAN
from tsynd_tf.synthesis.latent import LatentNoise, TSynD, TSynDEntropy
from tsynd_tf.synthesis.latent_ascent import RENDERINGS
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
}

__all__ = ["Context", "Pool", "SynthesisMethod", "TSynD", "METHODS", "RENDERINGS", "create"]


def create(name: str, context: Context) -> SynthesisMethod:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; one of {list(METHODS)}.")
    return METHODS[name](context)
