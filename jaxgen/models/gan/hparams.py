"""Typed, hashable GAN hyper-parameters, built from ``config.model``, ``config.gan``,
``config.optim`` and ``config.sample``; every invalid value is a one-line ``UsageError``.

Jitted code closes over these frozen dataclasses, never over a ConfigDict.

Config keys (the recipes in ``experiments/gan_*.py`` set all of them):
  model.z_dim, model.gen_width, model.disc_width   latent size and width multipliers
  model.gen_norm                                   batch | none: BatchNorm in the generator
  model.conditional                                class-conditional G and projection D
  model.spectral_norm, model.sn_steps              spectral normalisation of D (Miyato 2018)
  gan.loss       nonsaturating | hinge | lsgan | wgan
  gan.penalty    none | r1 | gp;  gan.penalty_weight (gamma or lambda);  gan.penalty_every (k)
  gan.n_disc     discriminator updates per generator update
  optim.*        the generator's optimizer;  optim.disc_lr: the discriminator's learning rate
  sample.weights ema | raw;  sample.label (-1: all classes cycled)
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxgen.errors import UsageError

LOSSES = ("nonsaturating", "hinge", "lsgan", "wgan")
PENALTIES = ("none", "r1", "gp")
IMAGE_SIZES = (28, 32)
WEIGHTS = ("ema", "raw")
GEN_NORMS = ("batch", "none")


def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def num_classes_of(data_info: dict) -> int:
    """The data's number of classes; 0 when it has none (num_classes missing or <= 1)."""
    n = int(data_info.get("num_classes", 0) or 0)
    return n if n > 1 else 0


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """Architecture of the DCGAN pair (Radford et al. 2016), see :mod:`modules`.

    Attributes:
      image_shape: (H, W, C) with H == W in {28, 32} and C in {1, 3}.
      z_dim: size of the generator's Gaussian latent z.
      gen_width, disc_width: width multipliers w (feature maps w, 2w, 4w).
      gen_norm: "batch" (BatchNorm in G, see modules.py) or "none".
      num_classes: > 1 for a class-conditional pair, 0 for an unconditional one.
      spectral_norm: spectral normalisation of every discriminator layer (Miyato et al. 2018).
      sn_steps: power iterations per forward pass of each spectrally normalised layer.
    """

    image_shape: tuple[int, int, int] = (28, 28, 1)
    z_dim: int = 64
    gen_width: int = 32
    disc_width: int = 32
    gen_norm: str = "batch"
    num_classes: int = 0
    spectral_norm: bool = False
    sn_steps: int = 1

    def __post_init__(self):
        h, w, c = self.image_shape
        if h != w or h not in IMAGE_SIZES or c not in (1, 3):
            raise UsageError(f"the GAN family supports 28x28 and 32x32 images with 1 or 3 "
                             f"channels, got {h}x{w}x{c}")
        if self.gen_norm not in GEN_NORMS:
            raise UsageError(f"unknown model.gen_norm {self.gen_norm!r}; choose one of "
                             f"{', '.join(GEN_NORMS)}")
        if min(self.z_dim, self.gen_width, self.disc_width, self.sn_steps) < 1:
            raise UsageError("model.z_dim, model.gen_width, model.disc_width and model.sn_steps "
                             "must be positive")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 1


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The two players' losses and the discriminator's regulariser.

    Attributes:
      loss: "nonsaturating" (Goodfellow et al. 2014), "hinge" (Lim & Ye 2017; Miyato et al.
        2018), "lsgan" (Mao et al. 2017) or "wgan" (Arjovsky et al. 2017; needs a Lipschitz
        constraint: penalty "gp" or spectral norm).
      penalty: "r1" (Mescheder et al. 2018), "gp" (Gulrajani et al. 2017) or "none".
      penalty_weight: gamma of R1 (the term is gamma/2 E||grad D(x_real)||^2) or lambda of GP.
      penalty_every: lazy regularisation (Karras et al. 2020): the penalty is computed every k-th
        discriminator update with its weight multiplied by k.
      n_disc: discriminator updates per generator update, each on its own 1/n_disc slice of
        the global batch.
    """

    loss: str = "nonsaturating"
    penalty: str = "r1"
    penalty_weight: float = 1.0
    penalty_every: int = 1
    n_disc: int = 1

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise UsageError(f"unknown gan.loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.penalty not in PENALTIES:
            raise UsageError(f"unknown gan.penalty {self.penalty!r}; choose one of "
                             f"{', '.join(PENALTIES)}")
        if self.penalty_weight < 0 or self.penalty_every < 1 or self.n_disc < 1:
            raise UsageError("gan.penalty_weight must be >= 0, gan.penalty_every and gan.n_disc "
                             "must be >= 1")


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    """Sampler settings (``Family.sample_options``).

    Attributes:
      weights: "ema" (the generator's exponential moving average) or "raw".
      label: the class every sample is drawn from; -1 cycles through all classes
        (sample i has class i mod num_classes). Unconditional models take only -1.
    """

    weights: str = "ema"
    label: int = -1


def make_configs(config: Any, data_info: dict) -> tuple[NetConfig, ObjectiveConfig]:
    """(NetConfig, ObjectiveConfig) of an experiment config and its data, validated together."""
    if data_info.get("kind", "image") != "image" or "shape" not in data_info:
        raise UsageError(f"the GAN family needs image data, got kind {data_info.get('kind')!r}")
    m, g = config.get("model"), config.get("gan")
    classes = num_classes_of(data_info)
    conditional = bool(_get(m, "conditional", False))
    if conditional and not classes:
        raise UsageError("model.conditional=True needs labelled data with more than one class, "
                         f"but data.source={config.data.get('source')!r} has none")
    net = NetConfig(image_shape=tuple(int(s) for s in data_info["shape"]),
                    z_dim=int(_get(m, "z_dim", 64)), gen_width=int(_get(m, "gen_width", 32)),
                    disc_width=int(_get(m, "disc_width", 32)),
                    gen_norm=str(_get(m, "gen_norm", "batch")),
                    num_classes=classes if conditional else 0,
                    spectral_norm=bool(_get(m, "spectral_norm", False)),
                    sn_steps=int(_get(m, "sn_steps", 1)))
    obj = ObjectiveConfig(loss=str(_get(g, "loss", "nonsaturating")),
                          penalty=str(_get(g, "penalty", "r1")),
                          penalty_weight=float(_get(g, "penalty_weight", 1.0)),
                          penalty_every=int(_get(g, "penalty_every", 1)),
                          n_disc=int(_get(g, "n_disc", 1)))
    if obj.loss == "wgan" and obj.penalty != "gp" and not net.spectral_norm:
        raise UsageError("gan.loss='wgan' needs a Lipschitz constraint on the critic: set "
                         "gan.penalty='gp' or model.spectral_norm=True")
    batch = int(config.data.batch_size)
    if batch % obj.n_disc:
        raise UsageError(f"data.batch_size={batch} does not split into gan.n_disc={obj.n_disc} "
                         "discriminator batches")
    return net, obj


def make_sample_options(net: NetConfig, has_ema: bool, sample_cfg: Any,
                        **overrides: Any) -> SampleOptions:
    """``config.sample`` with ``overrides`` applied, validated against the model."""
    known = {f.name for f in dataclasses.fields(SampleOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown GAN sample option(s) {', '.join(unknown)}; "
                         f"options: {', '.join(sorted(known))}")
    values = {"weights": str(_get(sample_cfg, "weights", "ema")),
              "label": int(_get(sample_cfg, "label", -1))}
    if values["weights"] == "ema" and not has_ema:
        values["weights"] = "raw"  # the configured default falls back; an explicit ask does not
    values.update(overrides)
    opts = SampleOptions(weights=str(values["weights"]), label=int(values["label"]))
    if opts.weights not in WEIGHTS:
        raise UsageError(f"unknown sample.weights {opts.weights!r}; choose 'ema' or 'raw'")
    if opts.weights == "ema" and not has_ema:
        raise UsageError("sample.weights='ema' but this run keeps no EMA (train.ema_decay=0); "
                         "use sample.weights=raw")
    if opts.label != -1 and not (net.conditional and 0 <= opts.label < net.num_classes):
        limit = f"0..{net.num_classes - 1} or -1" if net.conditional else "-1 (unconditional)"
        raise UsageError(f"sample.label={opts.label} is not a class of this model; use {limit}")
    return opts
