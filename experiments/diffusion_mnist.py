"""Diffusion models on the embedded offline MNIST (4,000 train / 1,000 test digits, grayscale).

Variants:
  default  a class-conditional UNet (eps prediction, cosine schedule), sized to train on a
           2-core CPU in minutes; sampled with DDPM ancestral steps, 50 of them.
  dit      the same objective with a small DiT backbone (patch 4).
  edm      EDM preconditioning and loss (Karras et al. 2022), sampled with EDM Heun.
  smoke    a tiny model for a few steps, for tests of the CLI.

  jaxgen train diffusion_mnist
  jaxgen sample --workdir workdirs/diffusion_mnist --num 100 --out s.png \
      --set sample.sampler=dpmpp_2m --set sample.steps=20 --set sample.guidance=2 --set sample.label=3
  jaxgen eval --workdir workdirs/diffusion_mnist      # fd_lenet, KID, P/R, bits/dim
"""
from jaxgen.config import base_config

VARIANTS = ("default", "dit", "edm", "smoke")


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown diffusion_mnist variant {variant!r}; variants: {', '.join(VARIANTS)}")
    c = base_config()
    c.family = "diffusion"

    c.data.source = "mnist_embedded"
    c.data.name = "mnist"
    c.data.data_dir = ""
    c.data.path = ""
    c.data.binarize = "none"
    c.data.batch_size = 64
    c.data.eval_batch_size = 500

    m = c.model
    m.backbone = "unet"
    m.conditional = True
    m.block_channels = (16, 32, 64)
    m.layers_per_block = 1
    m.attention_levels = (False, False, True)
    m.mid_attention = True
    m.head_dim = 16
    m.num_heads = 0
    m.dropout = 0.0
    m.norm_groups = 8
    m.scale_shift = True
    m.resblock_updown = False
    m.attention_kernel = "auto"
    m.dtype = "float32"
    # DiT (model.backbone=dit)
    m.patch_size = 4
    m.hidden = 128
    m.depth = 6
    m.dit_heads = 4
    m.mlp_ratio = 4.0

    d = c.diffusion = type(c)()
    d.parameterization = "eps"
    d.schedule = "cosine"
    d.timesteps = 1000
    d.x0_weighting = "snr_trunc"
    d.cond_drop_prob = 0.1
    d.clip_x0 = True             # sampling and bits/dim clip x0_hat to the data range [-1, 1]
    d.sample_sigma_max = 80.0    # a discrete grid starts at sigma <= 80 (cosine's top is ~2e4)

    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.optim.end_lr_factor = 0.05
    c.optim.clip_norm = 1.0

    c.train.steps = 1500         # ~0.48 s/step on 2 cores: about 12 minutes of steps
    c.train.log_every = 100
    c.train.eval_every = 0
    c.train.ckpt_every = 500
    c.train.num_samples = 100
    c.train.ema_decay = 0.999
    c.train.ema_warmup = True

    c.sample.sampler = "ddpm"      # ancestral: fd_lenet 26.5 at 50 steps vs 92.9 for DPM-Solver++ 20
    c.sample.steps = 50
    c.sample.eta = 0.0
    c.sample.guidance = 1.0
    c.sample.label = -1
    c.sample.weights = "ema"

    c.eval.sample_metrics = False
    c.eval.num_samples = 1000
    c.eval.sample_batch = 500
    c.eval.bpd_examples = 200
    c.eval.bpd_timesteps = 50
    c.eval.seed = 0

    if variant == "dit":
        m.backbone = "dit"
    elif variant == "edm":
        d.parameterization = "edm"
        c.sample.sampler = "heun"
        c.sample.steps = 18
    elif variant == "smoke":
        m.block_channels = (8, 16)
        m.attention_levels = (False, True)
        m.head_dim = 8
        m.norm_groups = 4
        m.hidden = 32
        m.depth = 1
        m.dit_heads = 2
        c.data.batch_size = 16
        c.data.eval_batch_size = 200
        c.train.steps = 6
        c.train.log_every = 2
        c.train.ckpt_every = 3
        c.train.num_samples = 10
        c.optim.warmup_steps = 0
        c.sample.steps = 3
        c.eval.num_samples = 20
        c.eval.sample_batch = 0
        c.eval.bpd_examples = 10
        c.eval.bpd_timesteps = 2
    return c
