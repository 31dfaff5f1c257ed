"""DDPM++-size diffusion on CIFAR-10, for users with prepared TFDS data and an accelerator.

The backbone follows the DDPM++ (VP) CIFAR-10 model of Song et al. (2021, "Score-Based
Generative Modeling through SDEs", Table 3): 128 base channels with multipliers (1, 2, 2, 2),
BigGAN-style residual up/down-sampling, scale-shift conditioning, attention at 16x16, dropout
0.1, 4 residual blocks per resolution; trained with eps prediction on the linear schedule
(Ho et al. 2020), batch 128, Adam 2e-4 with warm-up, EMA 0.9999, bfloat16 compute.

Variants:
  default      unconditional, as in the paper.
  conditional  class-conditional with label dropout 0.1, for classifier-free guidance.

This machine has neither the data nor the network to prepare it:

  tfds build cifar10 --data_dir ~/tensorflow_datasets      # needs pip install jaxgen[prepare]
  jaxgen train diffusion_cifar10 --set data.data_dir=~/tensorflow_datasets
"""
from jaxgen.config import base_config

VARIANTS = ("default", "conditional")


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown diffusion_cifar10 variant {variant!r}; variants: {', '.join(VARIANTS)}")
    c = base_config()
    c.family = "diffusion"

    c.data.source = "tfds"
    c.data.name = "cifar10"
    c.data.data_dir = ""
    c.data.path = ""
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.binarize = "none"
    c.data.batch_size = 128
    c.data.eval_batch_size = 500

    m = c.model
    m.backbone = "unet"
    m.conditional = variant == "conditional"
    m.block_channels = (128, 256, 256, 256)
    m.layers_per_block = 4
    m.attention_levels = (False, True, False, False)
    m.mid_attention = True
    m.head_dim = 0
    m.num_heads = 1
    m.dropout = 0.1
    m.norm_groups = 32
    m.scale_shift = True
    m.resblock_updown = True
    m.attention_kernel = "auto"
    m.dtype = "bfloat16"
    m.patch_size = 2
    m.hidden = 384
    m.depth = 12
    m.dit_heads = 6
    m.mlp_ratio = 4.0

    d = c.diffusion = type(c)()
    d.parameterization = "eps"
    d.schedule = "linear"
    d.timesteps = 1000
    d.x0_weighting = "snr_trunc"
    d.cond_drop_prob = 0.1
    d.clip_x0 = True             # sampling and bits/dim clip x0_hat to the data range [-1, 1]
    d.sample_sigma_max = 80.0    # a discrete grid starts at sigma <= 80 (cosine's top is ~2e4)

    c.optim.name = "adam"
    c.optim.lr = 2e-4
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 5000
    c.optim.clip_norm = 1.0

    c.train.steps = 800_000
    c.train.log_every = 500
    c.train.eval_every = 50_000
    c.train.ckpt_every = 10_000
    c.train.num_samples = 64
    c.train.ema_decay = 0.9999
    c.train.ema_warmup = True

    c.sample.sampler = "dpmpp_2m"
    c.sample.steps = 50
    c.sample.eta = 0.0
    c.sample.guidance = 1.0
    c.sample.label = -1
    c.sample.weights = "ema"

    c.eval.num_samples = 10_000
    c.eval.sample_batch = 500
    c.eval.bpd_examples = 10_000
    c.eval.bpd_timesteps = 100
    c.eval.seed = 0
    return c
