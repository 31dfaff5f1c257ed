"""DDPM++-size diffusion on CIFAR-10, for users with prepared TFDS data and an accelerator.

The backbone follows the DDPM++ (VP) CIFAR-10 model of Song et al. (2021, "Score-Based
Generative Modeling through SDEs", Table 3): 128 base channels with multipliers (1, 2, 2, 2),
BigGAN-style residual up/down-sampling, scale-shift conditioning, attention at 16x16, dropout
0.1, 4 residual blocks per resolution; trained with eps prediction on the linear schedule
(Ho et al. 2020), batch 128, Adam 2e-4 with warm-up, EMA 0.9999, bfloat16 compute.

Variants:
  default      unconditional, as in the paper.
  conditional  class-conditional with label dropout 0.1, for classifier-free guidance.
  tpu, gpu     the default recipe with batch 512 (bfloat16 compute, as the default) and every
               residual and attention block rematerialised (``model.remat=full``), so the
               activations of the larger batch need not all be held for the backward pass.

This machine has neither the data nor the network to prepare it:

  tfds build cifar10 --data_dir ~/tensorflow_datasets      # needs pip install jaxgen[prepare]
  jaxgen train diffusion_cifar10 --set data.data_dir=~/tensorflow_datasets
"""
from jaxgen.config import ImageData, TrainConfig
from jaxgen.models.diffusion.settings import (
    DiffusionConfig,
    DiffusionEval,
    DiffusionExperiment,
    DiffusionModel,
    DiffusionSample,
)
from jaxgen.train.optim import OptimConfig

VARIANTS = ("default", "conditional", "tpu", "gpu")


def get_config(variant: str = "default") -> DiffusionExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown diffusion_cifar10 variant {variant!r}; variants: {', '.join(VARIANTS)}")
    return DiffusionExperiment(
        data=ImageData(source="tfds", name="cifar10",
                       batch_size=512 if variant in ("tpu", "gpu") else 128),
        model=DiffusionModel(block_channels=(128, 256, 256, 256), layers_per_block=4,
                             attention_levels=(False, True, False, False), head_dim=0,
                             num_heads=1, dropout=0.1, norm_groups=32, scale_shift=True,
                             resblock_updown=True, dtype="bfloat16",
                             conditional=variant == "conditional",
                             remat="full" if variant in ("tpu", "gpu") else "none"),
        diffusion=DiffusionConfig(parameterization="eps", schedule="linear"),
        optim=OptimConfig(name="adam", lr=2e-4, schedule="constant", warmup_steps=5000,
                          clip_norm=1.0),
        train=TrainConfig(steps=800_000, log_every=500, eval_every=50_000, ckpt_every=10_000,
                          num_samples=64, ema_decay=0.9999, ema_warmup=True),
        sample=DiffusionSample(sampler="dpmpp_2m", steps=50),
        eval=DiffusionEval(num_samples=10_000, sample_batch=500, bpd_examples=10_000,
                           bpd_timesteps=100),
    )
