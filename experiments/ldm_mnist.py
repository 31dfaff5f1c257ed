"""Latent diffusion on the embedded offline MNIST (Rombach et al. 2022): a class-conditional DiT
(Peebles & Xie 2023) on the 7x7x4 latents of a trained ``autoencoder_mnist`` workdir, whose
decoder turns the samples into digits.

Variants:
  default  DiT with patch 1 (49 latent tokens), width 128, 6 blocks, v prediction on the cosine
           schedule, sampled with the library's default sampler; the autoencoder is read from
           workdirs/autoencoder_mnist (``--set latent.autoencoder=DIR`` for another).
  smoke    a tiny DiT for a few steps, for tests (give it an autoencoder workdir).

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

VARIANTS = ("default", "smoke")
_PIXEL = load_recipe("diffusion_mnist")  # the pixel-space recipe: its data, optimiser, EMA
_SHARED = ("data.batch_size", "model.conditional", "optim.warmup_steps",
           "optim.end_lr_factor", "optim.clip_norm", "train.log_every", "train.eval_every",
           "train.num_samples", "train.ema_decay", "train.ema_warmup", "eval.sample_batch")

# What the default variant changes from the library's defaults (DiffusionExperiment()), and why.
WHY = {
    **{k: _PIXEL.WHY[k] for k in _SHARED},
    "model.backbone": "a DiT on the latent's tokens (Peebles & Xie 2023 run DiT on latents)",
    "model.patch_size": "patch 1: each of the 7x7 latent positions is a token",
    "model.hidden": "a DiT small enough to train on 2 CPU cores in minutes",
    "model.depth": "6 blocks, for the same time budget",
    "model.dit_heads": "4 heads of 32",
    "latent.autoencoder": "the workdir `jaxgen train autoencoder_mnist` writes",
    "train.steps": "2,000 steps of the small DiT: a few minutes on 2 cores",
}


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown ldm_mnist variant {variant!r}; variants: {', '.join(VARIANTS)}")
    pixel = _PIXEL.get_config()
    c = dataclasses.replace(
        pixel,
        model=DiffusionModel(backbone="dit", conditional=True, patch_size=1, hidden=128,
                             depth=6, dit_heads=4),
        latent=LatentSpace(autoencoder="workdirs/autoencoder_mnist"),
        optim=dataclasses.replace(pixel.optim, lr=1e-3),  # the library's: half the U-Net's
        train=dataclasses.replace(pixel.train, steps=2000))
    if variant == "smoke":
        smoke = _PIXEL.get_config("smoke")
        c = dataclasses.replace(
            c, data=smoke.data, optim=smoke.optim,
            model=dataclasses.replace(c.model, hidden=32, depth=1, dit_heads=2),
            train=dataclasses.replace(smoke.train, steps=6), sample=DiffusionSample(steps=3),
            eval=DiffusionEval(num_samples=20, bpd_examples=0))
    return c
