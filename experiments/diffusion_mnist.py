"""Diffusion models on the embedded offline MNIST (4,000 train / 1,000 test digits, grayscale).

Variants:
  default  a class-conditional UNet (v prediction, cosine schedule), sized to train on a
           2-core CPU in minutes; sampled with the library's default sampler.
  dit      the same objective with a small DiT backbone (patch 4).
  edm      EDM preconditioning and loss (Karras et al. 2022), sampled with EDM Heun.
  smoke    a tiny model for a few steps, for tests of the CLI.
  tpu, gpu the default objective with a U-Net sized for an accelerator (64/128/256 channels,
           attention heads of 64 at 14x14 and 7x7), bfloat16 compute, batch 256.

  jaxgen train diffusion_mnist
  jaxgen sample --workdir workdirs/diffusion_mnist --num 100 --out s.png \\
      --set sample.sampler=dpmpp_2m --set sample.steps=20 --set sample.guidance=2 --set sample.label=3
  jaxgen eval --workdir workdirs/diffusion_mnist      # fd_lenet, KID, P/R, bits/dim
"""
import dataclasses

from jaxgen.config import ImageData, TrainConfig
from jaxgen.models.diffusion.settings import (
    DiffusionEval,
    DiffusionExperiment,
    DiffusionModel,
    DiffusionSample,
)
from jaxgen.train.optim import OptimConfig

VARIANTS = ("default", "dit", "edm", "smoke", "tpu", "gpu")

# What the default variant changes from the library's defaults (DiffusionExperiment()), and why.
WHY = {
    "data.batch_size": "64 digits per step fit the 2-core CPU's time budget",
    "model.block_channels": "a U-Net small enough to train on 2 CPU cores in minutes",
    "model.layers_per_block": "one resblock per level, for the same time budget",
    "model.attention_levels": "attention only at 7x7, where it is cheap",
    "model.head_dim": "16-wide heads at 64 channels",
    "model.norm_groups": "8 groups at widths of 16-64",
    "model.scale_shift": "ADM's scale-shift conditioning (Dhariwal & Nichol 2021)",
    "model.conditional": "class labels, for guidance and per-class sampling",
    "model.patch_size": "the dit variant's DiT: 28x28 digits in 4x4 patches",
    "model.hidden": "the dit variant's DiT width",
    "model.depth": "the dit variant's DiT depth",
    "model.dit_heads": "the dit variant's DiT heads",
    "optim.lr": "the rate this recipe was tuned with for 1,500 steps",
    "optim.warmup_steps": "a short warm-up",
    "optim.end_lr_factor": "decay to 5% of the peak",
    "optim.clip_norm": "clipped gradients, as DDPM",
    "train.steps": "~0.48 s/step on 2 cores: about 12 minutes of steps",
    "train.log_every": "a line every 100 steps",
    "train.eval_every": "no periodic evaluation: jaxgen eval at the end",
    "train.num_samples": "a 10x10 grid, one column per class",
    "train.ema_decay": "an EMA of the weights (Ho et al. 2020), used for sampling",
    "train.ema_warmup": "so the EMA is not dominated by the initialisation",
    "eval.sample_batch": "1,000 samples drawn 500 at a time",
}


def get_config(variant: str = "default") -> DiffusionExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown diffusion_mnist variant {variant!r}; variants: {', '.join(VARIANTS)}")
    c = DiffusionExperiment(
        data=ImageData(batch_size=64),
        model=DiffusionModel(block_channels=(16, 32, 64), layers_per_block=1,
                             attention_levels=(False, False, True), head_dim=16, norm_groups=8,
                             scale_shift=True, conditional=True,
                             patch_size=4, hidden=128, depth=6, dit_heads=4),
        optim=OptimConfig(lr=2e-3, warmup_steps=100, end_lr_factor=0.05, clip_norm=1.0),
        train=TrainConfig(steps=1500, log_every=100, eval_every=0, num_samples=100,
                          ema_decay=0.999, ema_warmup=True),
        eval=DiffusionEval(sample_batch=500),
    )
    if variant == "dit":
        c = dataclasses.replace(c, model=dataclasses.replace(c.model, backbone="dit"))
    elif variant == "edm":
        c = dataclasses.replace(
            c, diffusion=dataclasses.replace(c.diffusion, parameterization="edm"),
            sample=DiffusionSample(sampler="heun", steps=18))
    elif variant == "smoke":
        c = dataclasses.replace(
            c,
            data=ImageData(batch_size=16, eval_batch_size=200),
            model=dataclasses.replace(c.model, block_channels=(8, 16),
                                      attention_levels=(False, True), head_dim=8, norm_groups=4,
                                      hidden=32, depth=1, dit_heads=2),
            optim=dataclasses.replace(c.optim, warmup_steps=0),
            train=dataclasses.replace(c.train, steps=6, log_every=2, ckpt_every=3,
                                      num_samples=10),
            sample=DiffusionSample(steps=3),
            eval=DiffusionEval(num_samples=20, bpd_examples=10, bpd_timesteps=2))
    elif variant in ("tpu", "gpu"):
        c = dataclasses.replace(
            c, data=ImageData(batch_size=256),
            model=dataclasses.replace(c.model, block_channels=(64, 128, 256), layers_per_block=2,
                                      attention_levels=(False, True, True), head_dim=64,
                                      norm_groups=32, dtype="bfloat16"))
    return c
