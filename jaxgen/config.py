"""Experiment configs: ml_collections ConfigDicts with a fixed common skeleton.

Every recipe in ``experiments/`` starts from :func:`base_config` and fills in ``family``,
``data``, ``model`` and the rest. Configs are locked after the recipe builds them, so a mistyped
``--set`` key is an error rather than a silently ignored value, and ConfigDict's type safety
rejects a value of the wrong type. Jitted code never sees a ConfigDict: families turn the parts
they need into frozen dataclasses.
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The keys every experiment has; recipes add family-specific ``model`` and ``eval`` keys."""
    c = ml_collections.ConfigDict()
    c.experiment = ""            # filled in by the CLI: "<name>[:<variant>]"
    c.family = ""                # vae | gan | lm | diffusion
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = ""           # see jaxgen.data.make_datasets
    c.data.batch_size = 128      # global batch, split over processes and devices
    c.data.eval_batch_size = 500
    c.data.seed = 0              # shuffling seed (data order)

    c.model = ml_collections.ConfigDict()

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 0
    c.optim.end_lr_factor = 0.1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 0.0
    c.optim.grad_accum = 1
    c.optim.adam_lr = 1e-3       # muon only: the AdamW part's peak rate
    c.optim.muon_exclude = "embedding,head"  # muon only: matrices (by key name) left to AdamW
    c.optim.muon_ns_steps = 5    # muon only: Newton-Schulz iterations per update

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.log_every = 50
    c.train.eval_every = 500     # 0 disables periodic evaluation
    c.train.ckpt_every = 500
    c.train.keep_ckpts = 3
    c.train.sample_every = 0     # 0: samples only at the end
    c.train.num_samples = 64
    c.train.ema_decay = 0.0      # 0 disables the EMA of parameters
    c.train.ema_warmup = False   # decay min(ema_decay, (1+t)/(10+t)) at update t
    c.train.nonfinite = "stop"   # NaN/Inf loss or gradients: "stop" (save, exit) or "skip"
    c.train.async_ckpt = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1             # -1: all devices not used by the other axes
    c.mesh.fsdp = 1              # >1 shards parameters and optimizer state (ZeRO-3 style)
    c.mesh.tensor = 1
    c.mesh.cpu_devices = 0       # CPU-only hosts: 0 = one device per core (jaxgen.train.host)

    c.eval = ml_collections.ConfigDict()
    c.eval.sample_metrics = False  # also score samples (jaxgen.eval) at every periodic eval
    c.eval.num_samples = 1000      # samples that jaxgen eval and sample_metrics score
    c.eval.sample_seed = 0
    c.eval.sample_batch = 0        # draw the eval samples in chunks of this many (0: at once)

    c.sample = ml_collections.ConfigDict()  # the family's sampler settings (sample_options)
    return c
