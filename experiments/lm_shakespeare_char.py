"""Character-level Transformer LM on tiny Shakespeare (Karpathy 2015), after nanoGPT's
``shakespeare_char`` recipes.

Variants:
  cpu       nanoGPT's CPU recipe size (4 layers, 4 heads, 128 wide, context 64, batch 12,
            2,000 steps), with RoPE, RMSNorm, SwiGLU, no biases, untied embeddings.
  gpu       nanoGPT's GPU recipe size (6 layers, 6 heads, 384 wide, context 256, batch 64,
            5,000 steps, dropout 0.2).
  speedrun  the cpu recipe's shape at half its width (4 layers, 4 heads, 64 wide: a quarter of
            the matmul FLOPs per token), 1,300 steps at lr 4e-3: val loss <= 1.88 in under half
            of nanoGPT's CPU wall time.
  smoke     tiny, a few steps (tests and CI).

Data: TFDS ``tiny_shakespeare`` by default; ``--set data.source=text_file --set data.path=FILE``
reads any local text file (the last ``val_fraction`` of it is the validation split).
"""
from __future__ import annotations

import ml_collections

from jaxgen.config import base_config

VARIANTS = ("cpu", "gpu", "speedrun", "smoke")


def _model(**kw) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.num_layers = 4
    m.num_heads = 4
    m.num_kv_heads = 0           # 0: as many as num_heads
    m.d_model = 128
    m.max_len = 0                # 0: data.seq_len
    m.mlp = "swiglu"
    m.mlp_hidden = 0             # 0: 8/3 d_model (swiglu) or 4 d_model (gelu)
    m.norm = "rmsnorm"
    m.positions = "rope"
    m.tie_embeddings = False
    m.use_bias = False
    m.dropout = 0.0
    m.scan_layers = False
    m.remat = "none"
    m.dtype = "float32"
    m.param_dtype = "float32"
    m.attention_kernel = "auto"
    m.init_std = 0.02
    m.update(kw)
    return m


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    c = base_config()
    c.family = "lm"

    c.data.source = "tfds_text"  # --set data.source=text_file --set data.path=FILE: a local file
    c.data.path = ""
    c.data.name = "tiny_shakespeare"
    c.data.tokenizer = "char"    # char | byte | bpe (trained on the training text)
    c.data.vocab_size = 512      # bpe only: the vocabulary size (> 256)
    c.data.tokenizer_path = ""   # "" : the CLI keeps it in the workdir (tokenizer.json)
    c.data.seq_len = 64
    c.data.val_fraction = 0.1
    c.data.eval_batches = 0      # 0: the whole validation split
    c.data.batch_size = 12
    c.data.eval_batch_size = 64

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = "\n"
    c.sample.max_new_tokens = 0  # 0: fill the context
    c.sample.greedy = False
    c.sample.temperature = 0.8
    c.sample.top_k = 0
    c.sample.top_p = 1.0
    c.sample.stop_token = ""

    c.optim.name = "adamw"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.optim.schedule = "cosine"
    c.optim.end_lr_factor = 0.1
    c.train.log_every = 100
    c.train.num_samples = 4

    if variant == "cpu":
        c.model = _model()
        c.optim.lr = 2e-3
        c.optim.warmup_steps = 100
        c.train.steps = 2000
        c.train.eval_every = 0
        c.train.ckpt_every = 2000
    elif variant == "gpu":
        c.model = _model(num_layers=6, num_heads=6, d_model=384, dropout=0.2)
        c.data.seq_len = 256
        c.data.batch_size = 64
        c.data.eval_batch_size = 64
        c.data.eval_batches = 50
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 100
        c.train.steps = 5000
        c.train.eval_every = 500
        c.train.ckpt_every = 1000
    elif variant == "speedrun":
        # Measured on 2 CPU cores (whole val split, AdamW): 4x128 at 1,000 steps 1.858 in 40 s
        # of steps; 4x96 1.860 in 33 s; 4x64 1.876 in 21 s, and at 1,300 steps 1.823 in 28 s.
        # Muon (optim.name=muon) needs half the steps (1.846 at 500) but its Newton-Schulz
        # iterations double the step time of a model this small on a CPU.
        c.model = _model(d_model=64)
        c.optim.lr = 4e-3
        c.optim.warmup_steps = 50
        c.train.steps = 1300
        c.train.eval_every = 0
        c.train.ckpt_every = 1300
    else:  # smoke
        c.model = _model(num_layers=2, num_heads=2, d_model=32)
        c.data.seq_len = 32
        c.data.batch_size = 8
        c.data.eval_batch_size = 8
        c.data.eval_batches = 2
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 2
        c.train.steps = 4
        c.train.log_every = 2
        c.train.eval_every = 0
        c.train.ckpt_every = 4
        c.train.num_samples = 2
    return c
