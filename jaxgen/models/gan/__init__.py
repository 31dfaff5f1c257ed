"""Generative adversarial networks (Goodfellow et al. 2014): DCGAN pairs, conditional variants
with a projection discriminator, four losses, R1/WGAN-GP penalties and spectral norm."""
from jaxgen.models.gan import losses
from jaxgen.models.gan.family import GANFamily
from jaxgen.models.gan.modules import Discriminator, Generator
from jaxgen.models.gan.settings import GANExperiment, GANOptim, GANSample, NetConfig, ObjectiveConfig
from jaxgen.models.gan.step import GANModel, GANStep

__all__ = ["Discriminator", "GANExperiment", "GANFamily", "GANModel", "GANOptim", "GANSample",
           "GANStep", "Generator", "NetConfig", "ObjectiveConfig", "losses"]
