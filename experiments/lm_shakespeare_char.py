"""Character-level Transformer LM on tiny Shakespeare (Karpathy 2015), after nanoGPT's
``shakespeare_char`` recipes.

Variants:
  cpu       nanoGPT's CPU recipe size (4 layers, 4 heads, 128 wide, context 64, batch 12,
            2,000 steps), with RoPE, RMSNorm, SwiGLU, no biases, untied embeddings.
  gpu       nanoGPT's GPU recipe size (6 layers, 6 heads, 384 wide, context 256, batch 64,
            5,000 steps, dropout 0.2), in bfloat16 compute with float32 parameters.
  tpu       the gpu recipe for a TPU: scanned layers, batch 256.
  speedrun  the cpu recipe's shape at half its width (4 layers, 4 heads, 64 wide: a quarter of
            the matmul FLOPs per token), 1,300 steps at lr 4e-3: val loss <= 1.88 in under half
            of nanoGPT's CPU wall time.
  smoke     tiny, a few steps (tests and CI).

Data: TFDS ``tiny_shakespeare`` by default; ``--set data.source=text_file --set data.path=FILE``
reads any local text file (the last ``val_fraction`` of it is the validation split).
"""
from __future__ import annotations

import dataclasses

from jaxgen.config import TextData, TrainConfig
from jaxgen.models.lm.model import LMConfig
from jaxgen.models.lm.settings import LMExperiment
from jaxgen.train.optim import OptimConfig

VARIANTS = ("cpu", "gpu", "tpu", "speedrun", "smoke")

# What the default variant (cpu) changes from the library's defaults (LMExperiment()), and why.
WHY = {
    "data.batch_size": "nanoGPT's CPU recipe: batch 12",
    "data.eval_batch_size": "64 windows per evaluation batch",
    "optim.lr": "2e-3, the rate this recipe was tuned with (nanoGPT uses 1e-3)",
    "optim.b2": "nanoGPT's 0.99 for small batches",
    "optim.weight_decay": "nanoGPT's 0.1",
    "optim.clip_norm": "nanoGPT's gradient clipping at 1.0",
    "optim.warmup_steps": "nanoGPT's 100 warm-up steps",
    "train.steps": "nanoGPT's CPU recipe: 2,000 steps",
    "train.log_every": "a line every 100 steps",
    "train.eval_every": "no periodic evaluation: the final one",
    "train.ckpt_every": "one checkpoint, at the end",
    "train.num_samples": "4 samples at the end",
}

OPTIM = OptimConfig(b2=0.99, weight_decay=0.1, clip_norm=1.0, warmup_steps=100)


def get_config(variant: str = "cpu") -> LMExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    data = TextData(batch_size=12, eval_batch_size=64)
    train = TrainConfig(log_every=100, num_samples=4)
    if variant == "cpu":
        return LMExperiment(data=data, optim=dataclasses.replace(OPTIM, lr=2e-3),
                            train=dataclasses.replace(train, steps=2000, eval_every=0,
                                                      ckpt_every=2000))
    if variant in ("gpu", "tpu"):
        tpu = variant == "tpu"
        return LMExperiment(
            data=dataclasses.replace(data, seq_len=256, batch_size=256 if tpu else 64,
                                     eval_batch_size=256 if tpu else 64, eval_batches=50),
            model=LMConfig(num_layers=6, num_heads=6, d_model=384, dropout=0.2,
                           dtype="bfloat16", scan_layers=tpu),
            optim=dataclasses.replace(OPTIM, lr=1e-3),
            train=dataclasses.replace(train, steps=5000, eval_every=500, ckpt_every=1000))
    if variant == "speedrun":
        # Measured on 2 CPU cores (whole val split, AdamW): 4x128 at 1,000 steps 1.858 in 40 s
        # of steps; 4x96 1.860 in 33 s; 4x64 1.876 in 21 s, and at 1,300 steps 1.823 in 28 s.
        # Muon (optim.name=muon) needs half the steps (1.846 at 500) but its Newton-Schulz
        # iterations double the step time of a model this small on a CPU.
        return LMExperiment(data=data, model=LMConfig(d_model=64),
                            optim=dataclasses.replace(OPTIM, lr=4e-3, warmup_steps=50),
                            train=dataclasses.replace(train, steps=1300, eval_every=0,
                                                      ckpt_every=1300))
    return LMExperiment(  # smoke
        data=dataclasses.replace(data, seq_len=32, batch_size=8, eval_batch_size=8,
                                 eval_batches=2),
        model=LMConfig(num_layers=2, num_heads=2, d_model=32),
        optim=dataclasses.replace(OPTIM, lr=1e-3, warmup_steps=2),
        train=dataclasses.replace(train, steps=4, log_every=2, eval_every=0, ckpt_every=4,
                                  num_samples=2))
