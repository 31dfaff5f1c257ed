"""The settings of the autoencoder family: one definition each (see :mod:`jaxgen.settings`).

``model`` is :class:`AutoencoderModel`: the network's shape (it is a
:class:`~jaxgen.nn.autoencoder.AutoencoderConfig`) and the objective's weights.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from jaxgen.config import EvalConfig, Experiment, ImageData, NoSampleOptions, field
from jaxgen.nn.autoencoder import AutoencoderConfig


@dataclasses.dataclass(frozen=True)
class AutoencoderModel(AutoencoderConfig):
    """The autoencoder (the fields of :class:`~jaxgen.nn.autoencoder.AutoencoderConfig`; the
    image's channels come from the data) and its objective, per image:

        loss = sum_pixels rec(x_hat - x) + kl_weight * KL(q(z|x) || N(0, I))

    on images scaled to [-1, 1], z drawn from the posterior (Rombach et al. 2022, Sec. 3.1 and
    App. G: a small KL weight keeps the latent close to a unit Gaussian without forcing it to
    carry less; they use 1e-6 with a perceptual loss at 256x256, here no perceptual loss).

    Attributes:
      kl_weight: the KL term's weight.
      reconstruction: l2 (squared error) or l1 (absolute error) per pixel, summed.
    """

    block_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    in_channels: int = 0
    norm_groups: int = 8
    kl_weight: float = 1e-3
    reconstruction: Literal["l2", "l1"] = "l2"

    def __post_init__(self):
        super().__post_init__()
        if self.kl_weight < 0:
            raise ValueError(f"model.kl_weight must be >= 0, got {self.kl_weight}")
        if self.reconstruction not in ("l2", "l1"):
            raise ValueError(f"model.reconstruction must be l2 or l1, got "
                             f"{self.reconstruction!r}")

    def network(self, channels: int) -> AutoencoderConfig:
        """The network of these settings for images of ``channels`` channels."""
        names = {f.name for f in dataclasses.fields(AutoencoderConfig)}
        values = {k: getattr(self, k) for k in names}
        return AutoencoderConfig(**{**values, "in_channels": channels,
                                    "out_channels": self.out_channels or channels})


@dataclasses.dataclass(frozen=True)
class AutoencoderEval(EvalConfig):
    """Evaluation: reconstruction error and rate on the test split, and the latent's scale.

    Attributes:
      seed: the posterior samples of the evaluation loss.
    """

    seed: int = 0


@dataclasses.dataclass(frozen=True)
class AutoencoderExperiment(Experiment):
    """A KL-regularised autoencoder on images (the first stage of latent diffusion)."""

    family: str = "autoencoder"
    data: ImageData = field(ImageData)
    model: AutoencoderModel = field(AutoencoderModel)
    eval: AutoencoderEval = field(AutoencoderEval)
    sample: NoSampleOptions = field(NoSampleOptions)
