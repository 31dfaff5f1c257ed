"""A decoder-only Transformer language model (Radford et al. 2018/2019, GPT) in Flax Linen.

Pre-norm residual blocks ``x + attn(norm(x))``, ``x + mlp(norm(x))`` with the modern options of
Llama-style models: rotary positions (Su et al. 2021) or learned absolute positions, RMSNorm
(Zhang & Sennrich 2019) or LayerNorm, SwiGLU (Shazeer 2020) or GELU MLPs, grouped-query attention
(Ainslie et al. 2023), optional weight tying of the embedding and the output head (Press & Wolf
2017). Layers can be unrolled or scanned (``nn.scan``, parameters stacked on a leading "layers"
axis) and rematerialised (Chen et al. 2016). Every parameter carries logical axis names; see
:data:`LOGICAL_RULES` for how they map onto the ("data", "fsdp", "tensor") mesh.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import SelfAttention, init_cache, rope_tables
from jaxgen.nn.kernels import KERNELS
from jaxgen.nn.layers import MLP, Linear, dtype_of, make_norm

# logical axis name -> mesh axis (None: replicated)
LOGICAL_RULES = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
    ("layers", None),
)

REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Shape and numerics of the Transformer (hashable; safe to close over in jitted code).

    ``num_kv_heads=0`` means as many as ``num_heads`` (plain multi-head attention); ``mlp_hidden=0``
    means 4 D for GELU and the parameter-matched 8/3 D (rounded up to a multiple of 32) for SwiGLU.
    """

    vocab_size: int
    max_len: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 0
    d_model: int = 128
    mlp: str = "swiglu"            # swiglu | gelu
    mlp_hidden: int = 0
    norm: str = "rmsnorm"          # rmsnorm | layernorm
    positions: str = "rope"        # rope | learned
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    use_bias: bool = False
    dropout: float = 0.0
    scan_layers: bool = False
    remat: str = "none"            # none | full | dots
    dtype: str = "float32"         # compute dtype
    param_dtype: str = "float32"
    attention_kernel: str = "auto"
    init_std: float = 0.02

    def __post_init__(self):
        checks = [
            (self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}"),
            (self.max_len > 0, f"max_len must be positive, got {self.max_len}"),
            (self.num_layers > 0, f"num_layers must be positive, got {self.num_layers}"),
            (self.num_heads > 0 and self.d_model % self.num_heads == 0,
             f"d_model ({self.d_model}) must be a positive multiple of num_heads ({self.num_heads})"),
            (self.num_heads % self.kv_heads == 0 if self.kv_heads > 0 else False,
             f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"),
            (self.mlp in ("swiglu", "gelu"), f"unknown mlp {self.mlp!r}; use 'swiglu' or 'gelu'"),
            (self.norm in ("rmsnorm", "layernorm"), f"unknown norm {self.norm!r}; use 'rmsnorm' or 'layernorm'"),
            (self.positions in ("rope", "learned"), f"unknown positions {self.positions!r}; use 'rope' or 'learned'"),
            (self.positions != "rope" or self.head_dim % 2 == 0,
             f"rope needs an even head dimension, got {self.head_dim}"),
            (self.remat in REMAT_POLICIES, f"unknown remat {self.remat!r}; use one of {', '.join(REMAT_POLICIES)}"),
            (self.attention_kernel in KERNELS,
             f"unknown attention kernel {self.attention_kernel!r}; use one of {', '.join(KERNELS)}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        dtype_of(self.dtype), dtype_of(self.param_dtype)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.d_model
        return 32 * math.ceil(8 * self.d_model / 3 / 32)

    @classmethod
    def from_config(cls, cfg: Any, **overrides) -> "LMConfig":
        """From a ConfigDict/dict (``config.model``), ignoring keys this dataclass lacks."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        d = {k: v for k, v in d.items() if k in names}
        d.update(overrides)
        return cls(**d)


def _remat_policy(name: str):
    return {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


class Block(nn.Module):
    """One pre-norm Transformer block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

    config: LMConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, cache, rope, mask, cache_index):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        out_init = nn.initializers.normal(c.init_std / math.sqrt(2 * c.num_layers))  # GPT-2 scaling
        h = make_norm(c.norm, use_bias=c.use_bias, dtype=dt, param_dtype=pdt, name="attn_norm")(x)
        h, new_cache = SelfAttention(c.num_heads, c.kv_heads, c.head_dim, use_bias=c.use_bias,
                                     kernel=c.attention_kernel, out_init=out_init, dtype=dt,
                                     param_dtype=pdt, name="attn")(h, rope, cache, mask, cache_index)
        x = x + nn.Dropout(c.dropout)(h, deterministic=self.deterministic)
        h = make_norm(c.norm, use_bias=c.use_bias, dtype=dt, param_dtype=pdt, name="mlp_norm")(x)
        h = MLP(c.hidden, c.mlp, use_bias=c.use_bias, out_init=out_init, dtype=dt, param_dtype=pdt,
                name="mlp")(h)
        x = x + nn.Dropout(c.dropout)(h, deterministic=self.deterministic)
        return x, new_cache


class Transformer(nn.Module):
    """tokens int32 [B, T] -> logits float32 [B, T, V] (and the updated cache when one is given).

    With ``cache`` (from :func:`make_cache`) and ``cache_index`` (int32 scalar, the position of
    tokens[:, 0]) the tokens' keys and values are written to the cache and each token attends to
    every cached position up to its own: this is prefill (T > 1) and incremental decoding (T = 1).
    """

    config: LMConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, *, cache: Optional[dict] = None,
                 cache_index: Optional[jax.Array] = None, deterministic: bool = True):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        t = tokens.shape[1]
        init = nn.initializers.normal(c.init_std)
        embedding = self.param("embedding", nn.with_logical_partitioning(init, ("vocab", "embed")),
                               (c.vocab_size, c.d_model), pdt)
        x = jnp.take(embedding, tokens, axis=0).astype(dt)
        start = jnp.zeros((), jnp.int32) if cache_index is None else jnp.asarray(cache_index, jnp.int32)
        positions = start + jnp.arange(t, dtype=jnp.int32)
        if c.positions == "learned":
            pos_embedding = self.param("pos_embedding", nn.with_logical_partitioning(init, (None, "embed")),
                                       (c.max_len, c.d_model), pdt)
            x = x + jnp.take(pos_embedding, positions, axis=0).astype(dt)[None]
        x = nn.Dropout(c.dropout)(x, deterministic=deterministic)
        rope = rope_tables(positions, c.head_dim, c.rope_base) if c.positions == "rope" else None
        mask = None
        if cache is not None:
            mask = jnp.arange(cache["k"].shape[2])[None, :] <= positions[:, None]  # [T, S]

        block = Block  # (carry, *xs) signature, as nn.scan expects
        if c.remat != "none":
            block = nn.remat(block, policy=_remat_policy(c.remat), prevent_cse=not c.scan_layers)
        if c.scan_layers:
            layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                             in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_layers,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            x, new_cache = layers(c, deterministic, name="layers")(x, cache, rope, mask, cache_index)
        else:
            new_layers = []
            for i in range(c.num_layers):
                layer_cache = None if cache is None else jax.tree.map(lambda a, i=i: a[i], cache)
                x, lc = block(c, deterministic, name=f"block_{i}")(x, layer_cache, rope, mask, cache_index)
                new_layers.append(lc)
            new_cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *new_layers)

        x = make_norm(c.norm, use_bias=c.use_bias, dtype=dt, param_dtype=pdt, name="final_norm")(x)
        if c.tie_embeddings:
            logits = jnp.dot(x, embedding.astype(dt).T)
        else:
            logits = Linear(c.vocab_size, ("embed", "vocab"), kernel_init=init, dtype=dt,
                            param_dtype=pdt, name="head")(x)
        logits = logits.astype(jnp.float32)
        return logits if cache is None else (logits, new_cache)


def make_cache(config: LMConfig, batch: int, length: int) -> dict:
    """Zero KV cache for all layers: {"k", "v"} each [L, B, length, K, H] in the compute dtype."""
    one = init_cache(batch, length, config.kv_heads, config.head_dim, dtype_of(config.dtype))
    return jax.tree.map(lambda a: jnp.zeros((config.num_layers,) + a.shape, a.dtype), one)


def num_params(params: Any) -> int:
    """Total number of parameters of a (possibly boxed) parameter tree."""
    return sum(int(x.size) for x in jax.tree.leaves(nn.meta.unbox(params)))
