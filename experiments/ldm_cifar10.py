"""Latent diffusion on CIFAR-10 (prepared TFDS data, an accelerator; Rombach et al. 2022): a
class-conditional U-Net shaped like Stable Diffusion's (diffusers' ``UNet2DConditionModel``:
transformer blocks with cross-attention to a learned per-class context) on the 8x8x4 latents
of a trained ``autoencoder_cifar10`` workdir, whose decoder turns samples into images.

Not trained by the project: this machine has neither the data nor an accelerator. Its programs
compile for TPU here, with an untrained autoencoder of ``latent.recipe`` standing in when the
workdir is not on this host (``jaxgen compile ldm_cifar10:tpu --topology v5e:2x2``).

Variants:
  default, tpu, gpu  U-Net 192/384/384 on 8x8 -> 4x4 -> 2x2, cross-attention transformer
                     blocks (heads of 64, context 512 wide) at 4x4 and 2x2, bfloat16, every
                     block rematerialised, batch 256.
  smoke              a tiny U-Net on autoencoder_cifar10:smoke's latent (what tests compile).

  jaxgen train autoencoder_cifar10:tpu --workdir workdirs/autoencoder_cifar10 ...
  jaxgen eval --workdir workdirs/autoencoder_cifar10
  jaxgen train ldm_cifar10:tpu --set data.data_dir=~/tensorflow_datasets
"""
import dataclasses

from jaxgen.config import ImageData, TrainConfig
from jaxgen.models.diffusion.settings import (
    DiffusionEval,
    DiffusionExperiment,
    DiffusionModel,
    DiffusionSample,
    LatentSpace,
)
from jaxgen.train.optim import OptimConfig

VARIANTS = ("default", "tpu", "gpu", "smoke")

# What the default variant changes from the library's defaults (DiffusionExperiment()), and why.
WHY = {
    "data.source": "CIFAR-10 from prepared TFDS data",
    "data.name": "CIFAR-10 from prepared TFDS data",
    "data.batch_size": "256 images per step on an accelerator",
    "model.block_channels": "LDM-size widths on the 8x8 latent",
    "model.head_dim": "heads of 64, a TPU matrix unit's width",
    "model.cross_attention_dim": "labels condition through cross-attention (Rombach et al.)",
    "model.conditional": "class labels, for guidance and per-class sampling",
    "model.dtype": "bfloat16 compute on accelerators",
    "model.remat": "blocks rematerialised: activation memory for a third more compute",
    "latent.autoencoder": "the workdir `jaxgen train autoencoder_cifar10:tpu` writes",
    "latent.recipe": "what trains that workdir (and what jaxgen compile builds without it)",
    "optim.lr": "a rate for batch 256",
    "optim.warmup_steps": "a warm-up for the larger model",
    "train.steps": "400k steps of batch 256",
    "train.log_every": "a line every 500 steps",
    "train.eval_every": "an evaluation every 50k steps",
    "train.ckpt_every": "a checkpoint every 10k steps",
    "train.ema_decay": "an EMA of the weights, used for sampling",
    "train.ema_warmup": "so the EMA is not dominated by the initialisation",
    "eval.num_samples": "10k samples for the metrics",
    "eval.sample_batch": "500 samples per call",
}


def get_config(variant: str = "default") -> DiffusionExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ldm_cifar10 variant {variant!r}; variants: "
                         f"{', '.join(VARIANTS)}")
    c = DiffusionExperiment(
        data=ImageData(source="tfds", name="cifar10", batch_size=256),
        model=DiffusionModel(block_channels=(192, 384, 384), layers_per_block=2,
                             attention_levels=(False, True, True), head_dim=64,
                             cross_attention_dim=512, conditional=True, remat="full",
                             dtype="bfloat16"),
        latent=LatentSpace(autoencoder="workdirs/autoencoder_cifar10",
                           recipe="autoencoder_cifar10"),
        optim=OptimConfig(lr=2e-4, warmup_steps=5000),
        train=TrainConfig(steps=400_000, log_every=500, eval_every=50_000, ckpt_every=10_000,
                          ema_decay=0.9999, ema_warmup=True),
        eval=DiffusionEval(num_samples=10_000, sample_batch=500),
    )
    if variant == "smoke":
        c = dataclasses.replace(
            c, data=dataclasses.replace(c.data, batch_size=8),
            model=dataclasses.replace(c.model, block_channels=(32, 64), layers_per_block=1,
                                      attention_levels=(False, True), head_dim=32,
                                      cross_attention_dim=32, norm_groups=8),
            latent=dataclasses.replace(c.latent, autoencoder="workdirs/autoencoder_cifar10_smoke",
                                       recipe="autoencoder_cifar10:smoke"),
            train=dataclasses.replace(c.train, steps=4, log_every=2, num_samples=8),
            sample=DiffusionSample(steps=2), eval=DiffusionEval(num_samples=16))
    return c
