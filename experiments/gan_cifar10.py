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

  jaxgen train gan_cifar10 --set data.data_dir=/path/to/tensorflow_datasets
"""
import ml_collections

from jaxgen.config import base_config

VARIANTS = ("default", "r1", "conditional")


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown gan_cifar10 variant {variant!r}; variants: {', '.join(VARIANTS)}")
    c = base_config()
    c.family = "gan"

    c.data.source = "tfds"
    c.data.name = "cifar10"
    c.data.data_dir = ""
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.batch_size = 64
    c.data.eval_batch_size = 500

    m = c.model
    m.z_dim = 128
    m.gen_width = 64
    m.disc_width = 64
    m.gen_norm = "batch"
    m.conditional = False
    m.spectral_norm = True
    m.sn_steps = 1

    c.gan = ml_collections.ConfigDict()
    c.gan.loss = "hinge"
    c.gan.penalty = "none"
    c.gan.penalty_weight = 0.1
    c.gan.penalty_every = 16
    c.gan.n_disc = 1

    c.optim.name = "adam"
    c.optim.lr = 2e-4
    c.optim.disc_lr = 2e-4
    c.optim.schedule = "constant"
    c.optim.b1 = 0.0
    c.optim.b2 = 0.9

    c.train.steps = 100_000
    c.train.log_every = 200
    c.train.eval_every = 0        # no likelihood and no reference set for CIFAR-10 here
    c.train.ckpt_every = 5000
    c.train.sample_every = 5000
    c.train.ema_decay = 0.9999
    c.train.ema_warmup = True
    c.train.num_samples = 100

    c.eval.sample_metrics = False

    c.sample.weights = "ema"
    c.sample.label = -1

    if variant == "r1":
        m.spectral_norm = False
        c.gan.loss = "nonsaturating"
        c.gan.penalty = "r1"
    elif variant == "conditional":
        m.conditional = True
    return c
