"""Typed, hashable VAE hyper-parameters, built from ``config.model`` and ``config.eval``.

Jitted code closes over these frozen dataclasses, never over a ConfigDict.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxgen.models.vae.likelihoods import check_likelihood

ARCHS = ("mlp", "conv")
OBJECTIVES = ("elbo", "iwae")


def _items(cfg: Any) -> dict:
    if cfg is None:
        return {}
    return dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)


def _tuples(d: dict) -> dict:
    """Lists become tuples, so the dataclass stays hashable."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Model and training-objective hyper-parameters of a VAE (Kingma & Welling 2014).

    Attributes:
      image_shape: (H, W, C) of the data.
      latent_dim: size D of the diagonal-Gaussian latent z.
      encoder, decoder: "mlp" or "conv".
      hidden: widths of the MLP hidden layers (the decoder uses them reversed).
      channels: conv feature maps per stride-2 stage (the decoder uses them reversed).
      dense: width of the dense layer between the conv stack and the latent (0: none).
      dropout: dropout rate on hidden activations during training.
      likelihood: "bernoulli", "gaussian" or "logistic" (see likelihoods.py).
      objective: "elbo" (analytic KL, Kingma & Welling 2014) or "iwae" (Burda et al. 2016).
      train_samples: latent samples per example in the training objective (k of the IWAE).
      beta: weight of the KL term (beta-VAE, Higgins et al. 2017).
      kl_warmup_steps: the KL weight rises linearly from 0 to beta over this many steps
        (Sonderby et al. 2016); 0 disables warm-up.
      shift: training-time data augmentation: random translations by up to this many pixels.
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    latent_dim: int = 32
    encoder: str = "mlp"
    decoder: str = "mlp"
    hidden: tuple[int, ...] = (512, 256)
    channels: tuple[int, ...] = (32, 64)
    dense: int = 256
    dropout: float = 0.0
    likelihood: str = "bernoulli"
    objective: str = "elbo"
    train_samples: int = 1
    beta: float = 1.0
    kl_warmup_steps: int = 0
    shift: int = 0

    def __post_init__(self):
        for name in ("encoder", "decoder"):
            if getattr(self, name) not in ARCHS:
                raise ValueError(f"unknown model.{name} {getattr(self, name)!r}; "
                                 f"choose one of {', '.join(ARCHS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown model.objective {self.objective!r}; "
                             f"choose one of {', '.join(OBJECTIVES)}")
        check_likelihood(self.likelihood)
        if self.latent_dim < 1 or self.train_samples < 1:
            raise ValueError("model.latent_dim and model.train_samples must be positive")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image shape must be (H, W, C), got {self.image_shape}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.beta < 0 or self.kl_warmup_steps < 0 or self.shift < 0:
            raise ValueError("model.beta, model.kl_warmup_steps and model.shift must be >= 0")

    @classmethod
    def from_config(cls, model_cfg: Any, image_shape: tuple[int, ...]) -> "VAEConfig":
        """From ``config.model`` (unknown keys are an error) and the data's (H, W, C)."""
        d = _tuples(_items(model_cfg))
        names = {f.name for f in dataclasses.fields(cls)} - {"image_shape"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown VAE model keys {unknown}; known: {', '.join(sorted(names))}")
        return cls(image_shape=tuple(int(s) for s in image_shape), **d)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings: the IWAE bound of Burda et al. (2016) with ``iwae_k`` samples,
    computed ``iwae_chunk`` samples at a time."""

    iwae_k: int = 5000
    iwae_chunk: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.iwae_k < 1 or self.iwae_chunk < 1:
            raise ValueError(f"eval.iwae_k and eval.iwae_chunk must be positive, got "
                             f"{self.iwae_k} and {self.iwae_chunk}")

    @classmethod
    def from_config(cls, eval_cfg: Any) -> "EvalConfig":
        d = _items(eval_cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
