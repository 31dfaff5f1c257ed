"""Llama-shaped Transformer LMs at real sizes, for accelerators (and ``jaxgen compile``).

Variants:
  llama1b  Llama-3.2-1B's shape (Meta 2024): 16 layers, d 2048, 32 heads of 64 with 8 key/value
           heads (GQA), SwiGLU 8192, RMSNorm, RoPE base 500,000, vocabulary 128,256, tied
           embeddings, context 2048; global batch 256 x 2048 tokens, parameters FSDP-sharded
           over every chip, scanned layers rematerialised but for their matmul outputs (remat
           "dots": est. MFU 56.8% on v5e:16x16 against 49.8% with "full"), bfloat16 compute with float32
           parameters and Adam moments.
  llama7b  Llama-2-7B's shape (Touvron et al. 2023): 32 layers, d 4096, 32 heads (MHA), SwiGLU
           11008, vocabulary 32,000, untied, context 4096; 256 x 4096 = 1M tokens per step.
  smoke    the llama1b architecture at a tiny size, for tests.

The data is a text corpus tokenised by a BPE of the model's vocabulary (``data.tokenizer=bpe``);
the size is what matters for ``jaxgen compile``, which needs no data:

  jaxgen compile lm_llama:llama1b --topology v5e:16x16
  jaxgen compile lm_llama:llama7b --topology v5p:4x4x4
"""
from __future__ import annotations

import dataclasses

from jaxgen.config import TextData, TrainConfig
from jaxgen.models.lm.model import LMConfig
from jaxgen.models.lm.settings import LMExperiment
from jaxgen.train.mesh import MeshConfig
from jaxgen.train.optim import OptimConfig

VARIANTS = ("llama1b", "llama7b", "smoke")

LLAMA_1B = LMConfig(vocab_size=128_256, max_len=2048, num_layers=16, num_heads=32,
                    num_kv_heads=8, d_model=2048, mlp="swiglu", mlp_hidden=8192, norm="rmsnorm",
                    positions="rope", rope_base=500_000.0, tie_embeddings=True,
                    scan_layers=True, remat="dots", dtype="bfloat16", param_dtype="float32")
LLAMA_7B = dataclasses.replace(LLAMA_1B, vocab_size=32_000, max_len=4096, num_layers=32,
                               num_heads=32, num_kv_heads=0, d_model=4096, mlp_hidden=11008,
                               rope_base=10_000.0, tie_embeddings=False)
# Llama's AdamW (Touvron et al. 2023, Sec. 2.2): b2 0.95, weight decay 0.1, clipping at 1.0
OPTIM = OptimConfig(lr=3e-4, b2=0.95, weight_decay=0.1, clip_norm=1.0, warmup_steps=2000)


def get_config(variant: str = "llama1b") -> LMExperiment:
    if variant not in VARIANTS:
        raise ValueError(f"unknown lm_llama variant {variant!r}; variants: {', '.join(VARIANTS)}")
    model = {"llama1b": LLAMA_1B, "llama7b": LLAMA_7B}.get(variant)
    if model is None:  # smoke
        model = dataclasses.replace(LLAMA_1B, vocab_size=300, max_len=32, num_layers=2,
                                    num_heads=4, num_kv_heads=2, d_model=64, mlp_hidden=128,
                                    dtype="float32")
    data = TextData(source="stdlib", tokenizer="bpe", vocab_size=model.vocab_size,
                    seq_len=model.max_len, batch_size=8 if variant == "smoke" else 256,
                    eval_batch_size=8 if variant == "smoke" else 256, eval_batches=4)
    return LMExperiment(
        data=data, model=model, optim=OPTIM,
        train=TrainConfig(steps=20 if variant == "smoke" else 100_000, log_every=10,
                          eval_every=0, ckpt_every=1000, num_samples=8),
        mesh=MeshConfig(data=1, fsdp=-1) if variant != "smoke" else MeshConfig())
