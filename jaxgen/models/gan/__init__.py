"""Generative adversarial networks (Goodfellow et al. 2014): DCGAN pairs, conditional variants
with a projection discriminator, four losses, R1/WGAN-GP penalties and spectral norm."""
from jaxgen.models.gan import losses
from jaxgen.models.gan.family import make_family
from jaxgen.models.gan.hparams import NetConfig, ObjectiveConfig, SampleOptions
from jaxgen.models.gan.modules import Discriminator, Generator
from jaxgen.models.gan.step import GANModel, GANStep

__all__ = ["Discriminator", "GANModel", "GANStep", "Generator", "NetConfig", "ObjectiveConfig",
           "SampleOptions", "losses", "make_family"]
