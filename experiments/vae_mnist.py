"""VAE on the embedded offline MNIST (4,000 train / 1,000 test digits, binarized at 0.5).

Variants:
  default   the tuned recipe: MLP 512-256, 32 latents, Bernoulli, EMA, 7,000 steps.
  baseline  the Flax example's VAE: 784-500-20 MLP, Bernoulli, Adam 1e-3, batch 128.
  smoke     a tiny model for a few dozen steps, for tests of the CLI.
  tpu, gpu  the default recipe for an accelerator: bfloat16 compute (float32 parameters),
            batch 512.

  jaxgen train vae_mnist            # then: jaxgen eval --workdir workdirs/vae_mnist
"""
import dataclasses

from jaxgen.config import TrainConfig
from jaxgen.models.vae.settings import VAEConfig, VAEEval, VAEExperiment
from jaxgen.train.mesh import MeshConfig
from jaxgen.train.optim import OptimConfig

VARIANTS = ("default", "baseline", "smoke", "tpu", "gpu")

# What the default variant changes from the library's defaults (VAEExperiment()), and why.
WHY = {
    "train.steps": "7,000 steps of 128: 224 epochs of the 4,000 digits, about a minute",
    "train.log_every": "a line every 100 steps",
    "train.eval_every": "an evaluation every 2,500 steps",
    "train.ckpt_every": "a checkpoint every 2,500 steps",
    "train.ema_decay": "evaluate and sample the EMA of the weights",
    # One CPU device, not one per core: measured on the 2-core host (quiet), `jaxgen train
    # vae_mnist` took 65 s on one device (multi-threaded) and 138 s split over two, and
    # `jaxgen eval` 73 s against 129 s, with identical figures: the MLP's step is too small for
    # a cross-device reduction to pay. Ignored on hosts with an accelerator.
    "mesh.cpu_devices": "one multi-threaded CPU device: 65 s against 138 s split over two",
}


def get_config(variant: str = "default") -> VAEExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown vae_mnist variant {variant!r}; variants: {', '.join(VARIANTS)}")
    c = VAEExperiment(
        train=TrainConfig(steps=7000, log_every=100, eval_every=2500, ckpt_every=2500,
                          ema_decay=0.999),
        mesh=MeshConfig(cpu_devices=1),
    )
    if variant == "baseline":
        c = dataclasses.replace(
            c, model=VAEConfig(latent_dim=20, hidden=(500,), shift=0),
            optim=OptimConfig(name="adam", schedule="constant"),
            train=dataclasses.replace(c.train, ema_decay=0.0, steps=1000))
    elif variant == "smoke":
        c = dataclasses.replace(
            c, data=dataclasses.replace(c.data, batch_size=32, eval_batch_size=64),
            model=VAEConfig(latent_dim=4, hidden=(32,), channels=(4, 8), dense=16, shift=0),
            train=TrainConfig(steps=30, log_every=10, eval_every=0, ckpt_every=15,
                              num_samples=16),
            eval=VAEEval(iwae_k=16, iwae_chunk=8))
    elif variant in ("tpu", "gpu"):
        c = dataclasses.replace(
            c, data=dataclasses.replace(c.data, batch_size=512, eval_batch_size=1000),
            model=dataclasses.replace(c.model, dtype="bfloat16"), mesh=MeshConfig())
    return c
