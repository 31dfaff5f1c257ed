"""Variational autoencoders (Kingma & Welling 2014) with ELBO/IWAE objectives."""
from jaxgen.models.vae.family import make_family
from jaxgen.models.vae.hparams import EvalConfig, VAEConfig
from jaxgen.models.vae.modules import VAE

__all__ = ["EvalConfig", "VAE", "VAEConfig", "make_family"]
