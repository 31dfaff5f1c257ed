"""Latent diffusion on the embedded offline MNIST (Rombach et al. 2022): a class-conditional
U-Net shaped like Stable Diffusion's (cross-attention to a learned per-class context, diffusers'
``UNet2DConditionModel``) on the 7x7x4 latents of a trained ``autoencoder_mnist`` workdir,
standardised per channel, whose decoder turns the samples into digits.

Variants:
  default  a two-level U-Net (32/64 channels, 7x7 -> 4x4, a cross-attention transformer block
           at 4x4 and in the middle), v prediction on the cosine schedule, sampled with the
           library's default sampler; the autoencoder is read from workdirs/autoencoder_mnist
           (``--set latent.autoencoder=DIR`` for another). One network evaluation costs about
           a sixth of diffusion_mnist's U-Net (``jaxgen bench denoise``, latent rows).
  dit      the same latent with a DiT (patch 1: 49 tokens, width 128, 6 blocks), which measured
           worse and slower here (benchmarks/README.md).
  smoke    a tiny U-Net for a few steps, for tests (give it an autoencoder workdir).

  jaxgen train autoencoder_mnist && jaxgen eval --workdir workdirs/autoencoder_mnist
  jaxgen train ldm_mnist
  jaxgen sample --workdir workdirs/ldm_mnist --num 100 --out digits.png
"""
import dataclasses

from jaxgen.experiments import load_recipe
from jaxgen.models.diffusion.settings import (
    DiffusionEval,
    DiffusionModel,
    DiffusionSample,
    LatentSpace,
)

VARIANTS = ("default", "dit", "smoke")
_PIXEL = load_recipe("diffusion_mnist")  # the pixel-space recipe: its data, optimiser, EMA
_SHARED = ("data.batch_size", "model.conditional", "model.norm_groups", "optim.lr",
           "optim.warmup_steps", "optim.end_lr_factor", "optim.clip_norm", "train.log_every",
           "train.eval_every", "train.num_samples", "train.ema_decay", "train.ema_warmup",
           "eval.sample_batch")

# What the default variant changes from the library's defaults (DiffusionExperiment()), and why.
WHY = {
    **{k: _PIXEL.WHY[k] for k in _SHARED},
    "model.block_channels": "two levels on the 7x7 latent (7 -> 4), small enough for minutes",
    "model.layers_per_block": "one resblock per level, for the same time budget",
    "model.attention_levels": "a cross-attention transformer block at 4x4 only",
    "model.head_dim": "16-wide heads at 64 channels",
    "model.cross_attention_dim": "labels condition through cross-attention (Rombach et al.)",
    "model.patch_size": "the dit variant's DiT: each of the 7x7 latent positions is a token",
    "model.hidden": "the dit variant's DiT width",
    "model.depth": "the dit variant's DiT depth",
    "model.dit_heads": "the dit variant's DiT heads",
    "latent.autoencoder": "the workdir `jaxgen train autoencoder_mnist` writes",
    "latent.recipe": "what trains that workdir",
    "train.steps": "3,000 steps of the small latent U-Net: a few minutes on 2 cores",
}


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown ldm_mnist variant {variant!r}; variants: {', '.join(VARIANTS)}")
    pixel = _PIXEL.get_config()
    c = dataclasses.replace(
        pixel,
        model=DiffusionModel(block_channels=(32, 64), layers_per_block=1,
                             attention_levels=(False, True), head_dim=16, norm_groups=8,
                             cross_attention_dim=64, conditional=True,
                             patch_size=1, hidden=128, depth=6, dit_heads=4),
        latent=LatentSpace(autoencoder="workdirs/autoencoder_mnist", recipe="autoencoder_mnist"),
        train=dataclasses.replace(pixel.train, steps=3000))
    if variant == "dit":
        c = dataclasses.replace(c, model=dataclasses.replace(
            c.model, backbone="dit", cross_attention_dim=0),
            optim=dataclasses.replace(c.optim, lr=1e-3), train=dataclasses.replace(
                c.train, steps=2000))
    elif variant == "smoke":
        smoke = _PIXEL.get_config("smoke")
        c = dataclasses.replace(
            c, data=smoke.data, optim=smoke.optim,
            model=dataclasses.replace(c.model, block_channels=(8, 16), head_dim=8,
                                      norm_groups=4, cross_attention_dim=16),
            train=dataclasses.replace(smoke.train, steps=6), sample=DiffusionSample(steps=3),
            eval=DiffusionEval(num_samples=20, bpd_examples=0))
    return c
