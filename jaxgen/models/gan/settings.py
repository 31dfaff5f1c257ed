"""The settings of the GAN family: one definition each (see :mod:`jaxgen.settings`).

``model`` is the DCGAN pair (:class:`NetConfig`), ``gan`` the two players' losses and the
discriminator's regulariser (:class:`ObjectiveConfig`), ``optim`` the generator's optimizer
with the discriminator's learning rate beside it (:class:`GANOptim`), ``sample`` which weights
and which class to sample (:class:`GANSample`). Every invalid value is a one-line error.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from jaxgen.config import EvalConfig, Experiment, ImageData, field
from jaxgen.nn.layers import DType
from jaxgen.train.optim import OptimConfig

IMAGE_SIZES = (28, 32)


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """The DCGAN pair (Radford et al. 2016), see :mod:`modules`.

    Attributes:
      image_shape: (H, W, C) with H == W in {28, 32} and C in {1, 3} (empty: the data's; a
        family sets it).
      z_dim: size of the generator's Gaussian latent z.
      gen_width, disc_width: width multipliers w (feature maps w, 2w, 4w).
      gen_norm: batch (BatchNorm in G, see modules.py) or none.
      conditional: class-conditional G (label embedding) and projection D (Miyato & Koyama
        2018); labels from the data.
      num_classes: the classes of a conditional pair (0: the data's; a family sets it).
      spectral_norm: spectral normalisation of every discriminator layer (Miyato et al. 2018).
      sn_steps: power iterations per forward pass of each spectrally normalised layer.
      disc_conv: how D computes its stride-2 4x4 convolutions: native (``nn.Conv``, what
        accelerators run best) or patch (im2col slices and one matmul: the same parameters and
        values; XLA:CPU differentiates it twice, for R1 and WGAN-GP, about 8x faster,
        ``python -m benchmarks.gan_parts``).
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    image_shape: tuple[int, ...] = ()
    z_dim: int = 64
    gen_width: int = 32
    disc_width: int = 32
    gen_norm: Literal["batch", "none"] = "batch"
    conditional: bool = False
    num_classes: int = 0
    spectral_norm: bool = False
    sn_steps: int = 1
    disc_conv: Literal["native", "patch"] = "native"
    dtype: DType = "float32"
    param_dtype: DType = "float32"

    def __post_init__(self):
        if self.image_shape:
            h, w, c = (tuple(self.image_shape) + (0, 0, 0))[:3]
            if len(self.image_shape) != 3 or h != w or h not in IMAGE_SIZES or c not in (1, 3):
                raise ValueError(f"the GAN family supports 28x28 and 32x32 images with 1 or 3 "
                                 f"channels, got {'x'.join(map(str, self.image_shape))}")
        if min(self.z_dim, self.gen_width, self.disc_width, self.sn_steps) < 1:
            raise ValueError("model.z_dim, model.gen_width, model.disc_width and model.sn_steps "
                             "must be positive")
        if self.num_classes < 0 or (self.conditional and self.num_classes == 1):
            raise ValueError(f"model.num_classes must be 0 (the data's) or > 1, got "
                             f"{self.num_classes}")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The two players' losses and the discriminator's regulariser.

    Attributes:
      loss: nonsaturating (Goodfellow et al. 2014), hinge (Lim & Ye 2017; Miyato et al. 2018),
        lsgan (Mao et al. 2017) or wgan (Arjovsky et al. 2017; needs a Lipschitz constraint:
        penalty gp or spectral norm).
      penalty: r1 (Mescheder et al. 2018), gp (Gulrajani et al. 2017) or none.
      penalty_weight: gamma of R1 (the term is gamma/2 E||grad D(x_real)||^2) or lambda of GP.
      penalty_every: lazy regularisation (Karras et al. 2020): the penalty is computed every
        k-th discriminator update with its weight multiplied by k.
      n_disc: discriminator updates per generator update, each on its own 1/n_disc slice of
        the global batch.
    """

    loss: Literal["nonsaturating", "hinge", "lsgan", "wgan"] = "nonsaturating"
    penalty: Literal["none", "r1", "gp"] = "r1"
    penalty_weight: float = 5.0
    penalty_every: int = 4
    n_disc: int = 1

    def __post_init__(self):
        if self.penalty_weight < 0 or self.penalty_every < 1 or self.n_disc < 1:
            raise ValueError("gan.penalty_weight must be >= 0, gan.penalty_every and gan.n_disc "
                             "must be >= 1")


@dataclasses.dataclass(frozen=True)
class GANOptim(OptimConfig):
    """The generator's optimizer; the discriminator's is the same with its own rate (two
    time-scale update rule, Heusel et al. 2017).

    Attributes:
      disc_lr: the discriminator's peak learning rate (0: the same as lr).
    """

    name: Literal["adamw", "adam", "muon"] = "adam"
    lr: float = 2e-3
    b1: float = 0.0
    b2: float = 0.99
    disc_lr: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.disc_lr < 0:
            raise ValueError(f"optim.disc_lr must be >= 0 (0: optim.lr), got {self.disc_lr}")


@dataclasses.dataclass(frozen=True)
class GANSample:
    """Sampler settings.

    Attributes:
      weights: ema (the generator's exponential moving average) or raw.
      label: the class every sample is drawn from; -1 cycles through all classes (sample i has
        class i mod num_classes). Unconditional models take only -1.
    """

    weights: Literal["ema", "raw"] = "ema"
    label: int = -1


@dataclasses.dataclass(frozen=True)
class GANExperiment(Experiment):
    """A GAN on images.

    Attributes:
      gan: the adversarial losses and the discriminator's regulariser.
    """

    family: str = "gan"
    data: ImageData = field(ImageData)
    model: NetConfig = field(NetConfig)
    optim: GANOptim = field(GANOptim)
    eval: EvalConfig = field(EvalConfig)
    sample: GANSample = field(GANSample)
    gan: ObjectiveConfig = field(ObjectiveConfig)
