"""The settings of the diffusion family: one definition each (see :mod:`jaxgen.settings`).

``model`` is :class:`DiffusionModel`: the U-Net's settings (it is a
:class:`~jaxgen.nn.unet.UNetConfig`), the DiT's, and which of the two to build. ``diffusion`` is
the objective (:class:`~jaxgen.models.diffusion.objectives.DiffusionConfig`), ``sample`` the
sampler (:class:`DiffusionSample`, a :class:`~jaxgen.models.diffusion.samplers.SamplerConfig`
with the label and the weights), ``eval`` adds bits per dimension. The defaults are those of
``experiments/diffusion_mnist.py`` wherever that recipe does not say why it differs, so
``DiffusionExperiment()`` in Python samples as ``jaxgen train diffusion_mnist`` does.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from jaxgen.config import EvalConfig, Experiment, ImageData, field
from jaxgen.models.diffusion.objectives import DiffusionConfig
from jaxgen.models.diffusion.samplers import SamplerConfig
from jaxgen.nn.dit import DiTConfig
from jaxgen.nn.unet import UNetConfig

_DIT = DiTConfig()


@dataclasses.dataclass(frozen=True)
class DiffusionModel(UNetConfig):
    """The denoiser: a U-Net (the fields of :class:`~jaxgen.nn.unet.UNetConfig`) or a DiT.

    Attributes:
      backbone: unet or dit (Peebles & Xie 2023).
      conditional: class-conditional (labels from the data; guidance needs it).
      patch_size: DiT: the patch side p (H and W multiples of p).
      hidden: DiT: the token width.
      depth: DiT: the number of blocks.
      dit_heads: DiT: attention heads.
      mlp_ratio: DiT: MLP width / hidden.
      scan_layers: DiT: stack the blocks and run them with ``nn.scan`` (compile time flat in
        depth).

    ``cross_attention_dim`` > 0 conditions either backbone on the class label through
    cross-attention to a learned context (Rombach et al. 2022) instead of an embedding added to
    the time's; it needs ``conditional``.
    """

    backbone: Literal["unet", "dit"] = "unet"
    conditional: bool = False
    patch_size: int = _DIT.patch_size
    hidden: int = _DIT.hidden
    depth: int = _DIT.depth
    dit_heads: int = _DIT.num_heads
    mlp_ratio: float = _DIT.mlp_ratio
    scan_layers: bool = _DIT.scan_layers

    def __post_init__(self):
        super().__post_init__()
        if self.backbone == "dit":
            self.dit(0, 1)  # validates the DiT fields
        if self.cross_attention_dim and not self.conditional:
            raise ValueError("model.cross_attention_dim conditions on class labels through "
                             "cross-attention; it needs model.conditional=True")

    def unet(self, num_classes: int, channels: int) -> UNetConfig:
        """The U-Net of these settings for data of ``channels`` channels and ``num_classes``."""
        names = {f.name for f in dataclasses.fields(UNetConfig)}
        values = {k: getattr(self, k) for k in names}
        return UNetConfig(**{**values, "num_classes": num_classes,
                             "out_channels": self.out_channels or channels})

    def dit(self, num_classes: int, channels: int) -> DiTConfig:
        """The DiT of these settings."""
        return DiTConfig(patch_size=self.patch_size, hidden=self.hidden, depth=self.depth,
                         num_heads=self.dit_heads, mlp_ratio=self.mlp_ratio,
                         num_classes=num_classes, out_channels=self.out_channels or channels,
                         attention_kernel=self.attention_kernel,
                         cross_attention_dim=self.cross_attention_dim,
                         context_tokens=self.context_tokens, scan_layers=self.scan_layers,
                         remat=self.remat, dtype=self.dtype,
                         param_dtype=self.param_dtype)

    def backbone_config(self, num_classes: int, channels: int) -> UNetConfig | DiTConfig:
        return (self.unet if self.backbone == "unet" else self.dit)(num_classes, channels)


@dataclasses.dataclass(frozen=True)
class DiffusionSample(SamplerConfig):
    """Sampling settings (hashable; static under jit): the sampler, and

    Attributes:
      label: -1 = classes cycled 0, 1, ..., C-1 over the samples (conditional models) or no
        label (unconditional); otherwise the class of every sample.
      weights: ema (the EMA of the weights, when the run keeps one) or raw.
      gather_fsdp: on a mesh with ``mesh.fsdp`` > 1, gather the parameters over that axis once,
        before the first denoising step, instead of re-gathering every weight at every step.
        False keeps them sharded, for a model whose gathered share does not fit a chip.
    """

    label: int = -1
    weights: Literal["ema", "raw"] = "ema"
    gather_fsdp: bool = True


@dataclasses.dataclass(frozen=True)
class DiffusionEval(EvalConfig):
    """Evaluation: sample metrics, and bits per dimension from the DDPM bound.

    Attributes:
      bpd_examples: test images the bits/dim estimate averages over (0: none).
      bpd_timesteps: Monte-Carlo timesteps per image of that estimate.
      seed: the randomness of the estimate and of the evaluation loss.
    """

    bpd_examples: int = 200
    bpd_timesteps: int = 50
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.bpd_examples < 0 or self.bpd_timesteps < 1:
            raise ValueError("eval.bpd_examples must be >= 0 and eval.bpd_timesteps >= 1")


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """Latent diffusion (Rombach et al. 2022): the model runs in a frozen autoencoder's latent.

    Attributes:
      autoencoder: the workdir of a trained ``autoencoder`` run ("": diffusion on pixels). Its
        encoder maps every training batch to latents (a posterior sample, as Rombach et al.),
        its decoder maps samples back to images; its weights never train here.
      normalize: how latents are brought to zero mean and unit variance: ``channel`` (each
        channel by its mean and standard deviation over the autoencoder's test split) or
        ``scalar`` (Rombach et al.'s one scaling factor, no shift); see
        :mod:`jaxgen.models.diffusion.latent`. The statistics are read from the autoencoder's
        eval.json, which ``jaxgen eval`` writes, or computed the same way.
      scaling_factor: the scalar normalisation's factor (0: 1 / the latent's pooled standard
        deviation; Stable Diffusion's autoencoder uses 0.18215).
      recipe: the recipe that trains ``autoencoder`` (named in errors). ``jaxgen compile``
        builds it untrained when the workdir does not exist, as ``autoencoder=recipe:NAME``
        does anywhere (shapes and cost only: an untrained autoencoder's latents mean nothing).
      cache: encode the training split once, when the run is built (the posterior's mean and
        standard deviation of every example, float32 [N, h, w, 2L] in host memory), and draw
        each step's posterior sample from those instead of running the encoder in every train
        step: the same latents in distribution, a cheaper step and a smaller program. Needs an
        image pipeline without random flips or crops (the cache holds one latent per image).
        ``jaxgen compile`` still compiles the encoding step (it reads no data). Off by
        default: on ``ldm_mnist`` (400 steps, AMD EPYC AVX2, 2 cores) the loop took 129.7 s
        cached against 130.7 s encoding, the train step compiled in 41.4 s against 46.3 s, and
        the one pass over 4,000 digits took 4.8 s: its small encoder is not what a step costs.
        The cache is for encoders that dominate the step (Stable Diffusion's at 512 pixels).
    """

    autoencoder: str = ""
    normalize: Literal["channel", "scalar"] = "channel"
    scaling_factor: float = 0.0
    recipe: str = ""
    cache: bool = False

    def __post_init__(self):
        if self.normalize not in ("channel", "scalar"):
            raise ValueError(f"latent.normalize must be channel or scalar, got "
                             f"{self.normalize!r}")
        if self.scaling_factor < 0:
            raise ValueError(f"latent.scaling_factor must be >= 0 (0: the autoencoder's), got "
                             f"{self.scaling_factor}")
        if self.cache and not self.autoencoder:
            raise ValueError("latent.cache=true caches an autoencoder's latents; set "
                             "latent.autoencoder too")
        if self.scaling_factor and self.normalize != "scalar":
            raise ValueError("latent.scaling_factor is the scalar normalisation's factor; set "
                             "latent.normalize=scalar with it")


@dataclasses.dataclass(frozen=True)
class DiffusionExperiment(Experiment):
    """A diffusion model on images, or on an autoencoder's latents.

    Attributes:
      diffusion: the objective: what the network predicts and the noise schedule.
      latent: the autoencoder whose latent space the model runs in (none: pixels).
    """

    family: str = "diffusion"
    data: ImageData = field(ImageData)
    model: DiffusionModel = field(DiffusionModel)
    eval: DiffusionEval = field(DiffusionEval)
    sample: DiffusionSample = field(DiffusionSample)
    diffusion: DiffusionConfig = field(DiffusionConfig)
    latent: LatentSpace = field(LatentSpace)
