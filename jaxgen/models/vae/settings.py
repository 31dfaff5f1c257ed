"""The settings of the VAE family: one definition each (see :mod:`jaxgen.settings`)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from jaxgen.config import EvalConfig, Experiment, ImageData, NoSampleOptions, field
from jaxgen.nn.layers import DType


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Model and training objective of a VAE (Kingma & Welling 2014).

    Attributes:
      image_shape: (H, W, C) of the data (empty: the data's; a family sets it).
      latent_dim: size D of the diagonal-Gaussian latent z.
      encoder, decoder: mlp or conv.
      hidden: widths of the MLP hidden layers (the decoder uses them reversed).
      channels: conv feature maps per stride-2 stage (the decoder uses them reversed).
      dense: width of the dense layer between the conv stack and the latent (0: none).
      dropout: dropout rate on hidden activations during training.
      likelihood: bernoulli (binarized data), gaussian or logistic (the discretized logistic
        of PixelCNN++, Salimans et al. 2017); see likelihoods.py.
      objective: elbo (analytic KL, Kingma & Welling 2014) or iwae (Burda et al. 2016).
      train_samples: latent samples per example in the training objective (k of the IWAE).
      beta: weight of the KL term (beta-VAE, Higgins et al. 2017).
      kl_warmup_steps: the KL weight rises linearly from 0 to beta over this many steps
        (Sonderby et al. 2016); 0 disables warm-up.
      shift: training-time data augmentation: random translations by up to this many pixels.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    image_shape: tuple[int, ...] = ()
    latent_dim: int = 32
    encoder: Literal["mlp", "conv"] = "mlp"
    decoder: Literal["mlp", "conv"] = "mlp"
    hidden: tuple[int, ...] = (512, 256)
    channels: tuple[int, ...] = (32, 64)
    dense: int = 256
    dropout: float = 0.0
    likelihood: Literal["bernoulli", "gaussian", "logistic"] = "bernoulli"
    objective: Literal["elbo", "iwae"] = "elbo"
    train_samples: int = 1
    beta: float = 1.0
    kl_warmup_steps: int = 0
    shift: int = 1
    dtype: DType = "float32"
    param_dtype: DType = "float32"

    def __post_init__(self):
        if self.latent_dim < 1 or self.train_samples < 1:
            raise ValueError("model.latent_dim and model.train_samples must be positive")
        if self.image_shape and (len(self.image_shape) != 3 or min(self.image_shape) < 1):
            raise ValueError(f"model.image_shape must be (H, W, C), got {self.image_shape}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.beta < 0 or self.kl_warmup_steps < 0 or self.shift < 0:
            raise ValueError("model.beta, model.kl_warmup_steps and model.shift must be >= 0")
        if not self.hidden or min(self.hidden) < 1 or not self.channels or \
                min(self.channels) < 1 or self.dense < 0:
            raise ValueError("model.hidden and model.channels need positive widths; model.dense "
                             "must be >= 0")


@dataclasses.dataclass(frozen=True)
class VAEEval(EvalConfig):
    """Evaluation: sample metrics, and the IWAE bound of Burda et al. (2016).

    Attributes:
      iwae_k: importance samples per test image of the IWAE bound.
      iwae_chunk: computed this many samples at a time.
      seed: the randomness of the bound and of the single-sample ELBO.
    """

    iwae_k: int = 5000
    iwae_chunk: int = 100
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.iwae_k < 1 or self.iwae_chunk < 1:
            raise ValueError(f"eval.iwae_k and eval.iwae_chunk must be positive, got "
                             f"{self.iwae_k} and {self.iwae_chunk}")


def _binary_digits() -> ImageData:
    return ImageData(binarize="threshold")


@dataclasses.dataclass(frozen=True)
class VAEExperiment(Experiment):
    """A VAE on images (the data binarized at 0.5 by default, for the Bernoulli decoder)."""

    family: str = "vae"
    data: ImageData = field(_binary_digits)
    model: VAEConfig = field(VAEConfig)
    eval: VAEEval = field(VAEEval)
    sample: NoSampleOptions = field(NoSampleOptions)
