"""Variational autoencoders (Kingma & Welling 2014) with ELBO/IWAE objectives."""
from jaxgen.models.vae.family import VAEFamily
from jaxgen.models.vae.modules import VAE
from jaxgen.models.vae.settings import VAEConfig, VAEEval, VAEExperiment

__all__ = ["VAE", "VAEConfig", "VAEEval", "VAEExperiment", "VAEFamily"]
