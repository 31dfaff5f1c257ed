"""DCGAN on CIFAR-10 (32x32x3) from prepared TFDS data: the "standard CNN" setting of Miyato et
al. (2018) with jaxgen's DCGAN pair (width 64: feature maps 64, 128, 256 in D; 512 -> 64 in G).

Needs ``cifar10`` prepared by TFDS (``tfds build cifar10``, with network and TensorFlow) in
``data.data_dir`` (default: TFDS's own ``~/tensorflow_datasets``); it cannot run on a host without
the data. Sample-quality metrics here are LeNet-on-MNIST based, so they are off: score samples
with your own FID tooling from ``jaxgen sample``.

Variants:
  default       hinge loss, spectrally normalised D, Adam(0.0, 0.9) at 2e-4, EMA of G.
  r1            non-saturating loss + lazy R1 (gamma 0.1), no spectral norm.
  conditional   class-conditional G and projection discriminator (Miyato & Koyama 2018), SN.
  tpu, gpu      the default recipe in bfloat16 compute (float32 parameters), batch 256.

  jaxgen train gan_cifar10 --set data.data_dir=/path/to/tensorflow_datasets
"""
import dataclasses

from jaxgen.config import ImageData, TrainConfig
from jaxgen.models.gan.settings import GANExperiment, GANOptim, NetConfig, ObjectiveConfig

VARIANTS = ("default", "r1", "conditional", "tpu", "gpu")


def get_config(variant: str = "default") -> GANExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown gan_cifar10 variant {variant!r}; variants: {', '.join(VARIANTS)}")
    c = GANExperiment(
        data=ImageData(source="tfds", name="cifar10", batch_size=64),
        model=NetConfig(z_dim=128, gen_width=64, disc_width=64, spectral_norm=True,
                        conditional=variant == "conditional"),
        gan=ObjectiveConfig(loss="hinge", penalty="none", penalty_weight=0.1, penalty_every=16),
        optim=GANOptim(name="adam", lr=2e-4, disc_lr=2e-4, schedule="constant", b1=0.0, b2=0.9),
        train=TrainConfig(steps=100_000, log_every=200, eval_every=0, ckpt_every=5000,
                          sample_every=5000, ema_decay=0.9999, ema_warmup=True, num_samples=100),
    )
    if variant == "r1":
        c = dataclasses.replace(c, model=dataclasses.replace(c.model, spectral_norm=False),
                                gan=dataclasses.replace(c.gan, loss="nonsaturating",
                                                        penalty="r1"))
    elif variant in ("tpu", "gpu"):
        c = dataclasses.replace(c, data=dataclasses.replace(c.data, batch_size=256),
                                model=dataclasses.replace(c.model, dtype="bfloat16"))
    return c
