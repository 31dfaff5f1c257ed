"""DCGAN on the embedded offline MNIST (4,000 train digits, grayscale in [0, 1], not binarized).

fd_lenet below: of the EMA generator, 1,000 samples (the VAE's default recipe: 307).

Variants:
  default       non-saturating loss + lazy R1 (gamma 5 every 4th D update), Adam(0.0, 0.99) at
                2e-3 with cosine decay for both players, BatchNorm in G, EMA of G (0.999 with
                warm-up); 1,200 steps of 64 (19 epochs), about 2 minutes on an idle 2-core CPU.
                Measured: fd_lenet 51 after 1,500 steps, 62 after 1,000, 99 after 500.
                Adam's b1 mattered most: at 500 steps 195 with b1=0 and lr 1e-3, 407 with
                b1=0.5; lr 4e-3 collapsed onto one digit.
  hinge_sn      hinge loss with a spectrally normalised discriminator (Miyato et al. 2018), no
                gradient penalty (fd_lenet 195 after 500 steps: slower to converge than R1).
  conditional   class-conditional: label embedding in G, projection discriminator (fd_lenet 93
                after 500 steps, classifier score 8.8, every class 9-11%).
  smoke         a tiny pair for a few dozen steps, for tests.
  tpu, gpu      the default recipe for an accelerator: native convolutions in D, bfloat16
                compute (float32 parameters), batch 256.

  jaxgen train gan_mnist            # then: jaxgen eval --workdir workdirs/gan_mnist
"""
import dataclasses

from jaxgen.config import EvalConfig, ImageData, TrainConfig
from jaxgen.models.gan.settings import GANExperiment, NetConfig, ObjectiveConfig
from jaxgen.train.mesh import MeshConfig

VARIANTS = ("default", "hinge_sn", "conditional", "smoke", "tpu", "gpu")
DESCRIPTIONS = {
    "default": "DCGAN, non-saturating loss + lazy R1, EMA generator; ~2 min on 2 CPU cores",
    "hinge_sn": "DCGAN, hinge loss, spectrally normalised discriminator, no penalty",
    "conditional": "class-conditional DCGAN: label embedding in G, projection discriminator",
    "smoke": "a tiny GAN for a few dozen steps, for tests",
    "tpu": "the default recipe for a TPU: native convolutions, bfloat16 compute, batch 256",
    "gpu": "the default recipe for a GPU: native convolutions, bfloat16 compute, batch 256",
}

# What the default variant changes from the library's defaults (GANExperiment()), and why.
WHY = {
    "data.batch_size": "64 digits per step",
    "model.disc_conv": "XLA:CPU differentiates im2col convolutions twice (R1) about 8x faster "
                       "(python -m benchmarks.gan_parts); same parameters and values",
    "train.steps": "1,200 steps of 64 (19 epochs), about 2 minutes on 2 CPU cores",
    "train.log_every": "a line every 100 steps",
    "train.eval_every": "sample metrics every 400 steps",
    "train.ckpt_every": "a checkpoint every 400 steps",
    "train.ema_decay": "sample the EMA of the generator",
    "train.ema_warmup": "so the EMA is not dominated by the initialisation",
    "train.num_samples": "a 10x10 grid",
    "eval.sample_metrics": "fd_lenet and friends at every periodic evaluation",
    # One CPU device, not one per core: measured on the 2-core host, the GAN step took 92 ms
    # on one device (multi-threaded) and 177 ms split over two (twice the CPU time: the step's
    # several cross-device reductions cost more than they save), and the gap doubled under load.
    "mesh.cpu_devices": "one multi-threaded CPU device: 92 ms per step against 177 ms on two",
}


def get_config(variant: str = "default") -> GANExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown gan_mnist variant {variant!r}; variants: {', '.join(VARIANTS)}")
    c = GANExperiment(
        data=ImageData(batch_size=64),
        model=NetConfig(disc_conv="patch"),
        train=TrainConfig(steps=1200, log_every=100, eval_every=400, ckpt_every=400,
                          ema_decay=0.999, ema_warmup=True, num_samples=100),
        eval=EvalConfig(sample_metrics=True),
        mesh=MeshConfig(cpu_devices=1),
    )
    if variant == "hinge_sn":
        c = dataclasses.replace(c, model=dataclasses.replace(c.model, spectral_norm=True),
                                gan=ObjectiveConfig(loss="hinge", penalty="none"))
    elif variant == "conditional":
        c = dataclasses.replace(c, model=dataclasses.replace(c.model, conditional=True))
    elif variant == "smoke":
        c = dataclasses.replace(
            c, data=ImageData(batch_size=16, eval_batch_size=64),
            model=dataclasses.replace(c.model, z_dim=8, gen_width=4, disc_width=4),
            train=dataclasses.replace(c.train, steps=30, log_every=10, eval_every=0,
                                      ckpt_every=15, num_samples=16),
            eval=EvalConfig(sample_metrics=False, num_samples=100))
    elif variant in ("tpu", "gpu"):
        c = dataclasses.replace(
            c, data=ImageData(batch_size=256),
            model=dataclasses.replace(c.model, disc_conv="native", dtype="bfloat16"),
            mesh=MeshConfig())
    return c
