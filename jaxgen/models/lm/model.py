"""A decoder-only Transformer language model (Radford et al. 2018/2019, GPT) in Flax Linen.

Pre-norm residual blocks ``x + attn(norm(x))``, ``x + mlp(norm(x))`` with the modern options of
Llama-style models: rotary positions (Su et al. 2021) or learned absolute positions, RMSNorm
(Zhang & Sennrich 2019) or LayerNorm, SwiGLU (Shazeer 2020) or GELU MLPs, grouped-query attention
(Ainslie et al. 2023), optional weight tying of the embedding and the output head (Press & Wolf
2017). Layers can be unrolled or scanned (``nn.scan``, parameters stacked on a leading "layers"
axis) and rematerialised (Chen et al. 2016). Every parameter carries logical axis names; see
:mod:`jaxgen.nn.partitioning` for how they map onto the ("data", "fsdp", "tensor") mesh.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import ROPE_SCALINGS, RopeScaling, SelfAttention, init_cache, rope_tables
from jaxgen.nn.kernels import KernelName
from jaxgen.nn.layers import MLP, DType, dense_general, dtype_of, embed, norm, remat_policy
from jaxgen.nn.partitioning import constrain

ACT = ("activation_batch", "activation_length", "activation_embed")  # the residual stream
F32_DOT = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)
CACHE = ("activation_batch", "activation_length", "activation_kv_heads", "kv")  # [B, S, K, H]


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Shape and numerics of the Transformer (hashable; safe to close over in jitted code).

    Attributes:
      vocab_size: tokens in the vocabulary (0: the data's tokenizer sets it).
      max_len: the context, in tokens (0: data.seq_len).
      num_layers: Transformer blocks.
      num_heads: query heads.
      num_kv_heads: key/value heads (0: as many as num_heads; fewer is grouped-query attention,
        Ainslie et al. 2023).
      d_model: the residual stream's width.
      mlp: swiglu (Shazeer 2020) or gelu (GPT-2).
      mlp_hidden: the MLP's hidden width (0: 4 d_model for gelu, the parameter-matched
        8/3 d_model rounded up to a multiple of 32 for swiglu).
      norm: rmsnorm (Zhang & Sennrich 2019) or layernorm (Ba et al. 2016).
      positions: rope (rotary, Su et al. 2021) or learned (absolute, GPT-2).
      rope_base: the rotary embedding's base wavelength.
      rope_scaling: none, linear (position interpolation) or llama3 (Llama 3.1's frequency
        scaling); see :class:`jaxgen.nn.attention.RopeScaling`.
      rope_factor: the scaling's factor (linear and llama3).
      rope_low_freq_factor, rope_high_freq_factor, rope_original_len: llama3's band edges
        (original context / factor) and the context the model was first trained at.
      norm_eps: the normalisation's epsilon (0: 1e-6 for rmsnorm, 1e-5 for layernorm).
      tie_embeddings: the output head is the transposed token embedding (Press & Wolf 2017).
      use_bias: biases in the projections and the LayerNorms.
      dropout: dropout rate on the residual branches and the embeddings while training.
      scan_layers: stack the blocks' parameters and run them with ``nn.scan`` (compile time
        stays flat in depth).
      remat: rematerialise each block in the backward pass: none, full or dots (keep the
        matmul outputs; Chen et al. 2016).
      dtype: compute dtype.
      param_dtype: parameter dtype.
      attention_kernel: the kernel of :func:`jaxgen.nn.kernels.attention` ("auto": chosen for
        the platform, shapes and dtype).
      init_std: the standard deviation of the normal initialisation (GPT-2's 0.02; output
        projections get init_std / sqrt(2 num_layers)).
    """

    vocab_size: int = 0
    max_len: int = 0
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 0
    d_model: int = 128
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    mlp_hidden: int = 0
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    positions: Literal["rope", "learned"] = "rope"
    rope_base: float = 10000.0
    rope_scaling: Literal["none", "linear", "llama3"] = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_len: int = 8192
    norm_eps: float = 0.0
    tie_embeddings: bool = False
    use_bias: bool = False
    dropout: float = 0.0
    scan_layers: bool = False
    remat: Literal["none", "full", "dots"] = "none"
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_kernel: KernelName = "auto"
    init_std: float = 0.02

    def __post_init__(self):
        checks = [
            (self.vocab_size >= 0, f"model.vocab_size must be >= 0 (0: the data's), got {self.vocab_size}"),
            (self.max_len >= 0, f"model.max_len must be >= 0 (0: data.seq_len), got {self.max_len}"),
            (self.num_layers > 0, f"model.num_layers must be positive, got {self.num_layers}"),
            (self.num_heads > 0 and self.d_model % self.num_heads == 0,
             f"model.d_model ({self.d_model}) must be a positive multiple of model.num_heads "
             f"({self.num_heads})"),
            (self.num_kv_heads >= 0 and self.num_heads % self.kv_heads == 0,
             f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads "
             f"({self.num_kv_heads})"),
            (self.positions != "rope" or self.head_dim % 2 == 0,
             f"rope needs an even head dimension, got {self.head_dim}"),
            (0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}"),
            (self.mlp_hidden >= 0 and self.init_std > 0,
             "model.mlp_hidden must be >= 0 and model.init_std positive"),
            (self.rope_scaling in ROPE_SCALINGS,
             f"model.rope_scaling must be one of {', '.join(ROPE_SCALINGS)}"),
            (self.rope_factor >= 1.0 and self.rope_original_len > 0
             and self.rope_high_freq_factor > self.rope_low_freq_factor > 0,
             "model.rope_factor must be >= 1, model.rope_original_len positive and "
             "model.rope_high_freq_factor > model.rope_low_freq_factor > 0"),
            (self.norm_eps >= 0, f"model.norm_eps must be >= 0, got {self.norm_eps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def rope(self) -> RopeScaling:
        return RopeScaling(self.rope_scaling, self.rope_factor, self.rope_low_freq_factor,
                           self.rope_high_freq_factor, self.rope_original_len)

    @property
    def eps(self) -> Optional[float]:
        return self.norm_eps or None

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


class Block(nn.Module):
    """One pre-norm Transformer block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

    config: LMConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, cache, rope, mask, cache_index):
        c = self.config
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        init = nn.initializers.normal(c.init_std)
        out_init = nn.initializers.normal(c.init_std / math.sqrt(2 * c.num_layers))  # GPT-2
        x = constrain(x, ACT)
        h = norm(c.norm, use_bias=c.use_bias, eps=c.eps, name="attn_norm", **kw)(x)
        h, new_cache = SelfAttention(c.num_heads, c.kv_heads, c.head_dim, use_bias=c.use_bias,
                                     kernel=c.attention_kernel, kernel_init=init,
                                     out_init=out_init, name="attn", **kw)(h, rope, cache, mask,
                                                                             cache_index)
        x = x + nn.Dropout(c.dropout)(h, deterministic=self.deterministic)
        h = norm(c.norm, use_bias=c.use_bias, eps=c.eps, name="mlp_norm", **kw)(x)
        h = MLP(c.hidden, c.mlp, use_bias=c.use_bias, kernel_init=init, out_init=out_init,
                name="mlp", **kw)(h)
        x = x + nn.Dropout(c.dropout)(h, deterministic=self.deterministic)
        return constrain(x, ACT), new_cache


class Transformer(nn.Module):
    """tokens int32 [B, T] -> logits float32 [B, T, V] (and the updated cache when one is given).

    With ``cache`` (from :func:`make_cache`) and ``cache_index`` (int32 scalar, the position of
    tokens[:, 0]) the tokens' keys and values are written to the cache and each token attends to
    every cached position up to its own: this is prefill (T > 1) and incremental decoding (T = 1).
    The cache is one stacked pytree [L, B, S, K, H] for scanned layers and a tuple of per-layer
    pytrees [B, S, K, H] otherwise, so a decoding step updates it in place (a
    ``dynamic_update_slice`` per layer) and never copies it.
    """

    config: LMConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, *, cache: Optional[dict] = None,
                 cache_index: Optional[jax.Array] = None, deterministic: bool = True):
        c = self.config
        if c.vocab_size < 1 or c.max_len < 1:
            raise ValueError("LMConfig.vocab_size and max_len must be set (> 0) to build a model")
        dt = dtype_of(c.dtype)
        t = tokens.shape[1]
        init = nn.initializers.normal(c.init_std)
        tok_embed = embed(c.vocab_size, c.d_model, init=init, axes=("vocab", "embed"),
                          dtype=c.dtype, param_dtype=c.param_dtype, name="embed")
        x = tok_embed(tokens).astype(dt)
        start = jnp.zeros((), jnp.int32) if cache_index is None else jnp.asarray(cache_index, jnp.int32)
        positions = start + jnp.arange(t, dtype=jnp.int32)
        if c.positions == "learned":
            pos_embed = embed(c.max_len, c.d_model, init=init, axes=(None, "embed"),
                              dtype=c.dtype, param_dtype=c.param_dtype, name="pos_embed")
            x = x + pos_embed(positions).astype(dt)[None]
        x = constrain(nn.Dropout(c.dropout)(x, deterministic=deterministic), ACT)
        rope = rope_tables(positions, c.head_dim, c.rope_base, c.rope) if c.positions == "rope" else None
        mask = None
        if cache is not None:
            length = (cache["k"] if c.scan_layers else cache[0]["k"]).shape[-3]
            mask = jnp.arange(length)[None, :] <= positions[:, None]  # [T, S]

        block = Block  # (carry, *xs) signature, as nn.scan expects
        if c.remat != "none":
            block = nn.remat(block, policy=remat_policy(c.remat), prevent_cse=not c.scan_layers)
        if c.scan_layers:
            layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                             in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_layers,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            x, new_cache = layers(c, deterministic, name="layers")(x, cache, rope, mask, cache_index)
        else:
            new_layers = []
            for i in range(c.num_layers):
                layer_cache = None if cache is None else cache[i]
                x, lc = block(c, deterministic, name=f"block_{i}")(x, layer_cache, rope, mask, cache_index)
                new_layers.append(lc)
            new_cache = None if cache is None else tuple(new_layers)

        x = norm(c.norm, use_bias=c.use_bias, eps=c.eps, dtype=c.dtype, param_dtype=c.param_dtype,
                 name="final_norm")(x)
        # The head accumulates in float32 (a bfloat16 model's logits are not rounded to bf16).
        if c.tie_embeddings:
            logits = jnp.einsum("btd,vd->btv", x, tok_embed.embedding.astype(dt),
                                preferred_element_type=jnp.float32)
        else:
            logits = dense_general(c.vocab_size, ("embed", "vocab"), kernel_init=init,
                                   dtype=c.dtype, param_dtype=c.param_dtype, name="head",
                                   dot_general=F32_DOT)(x)
        logits = constrain(logits.astype(jnp.float32),
                           ("activation_batch", "activation_length", "activation_vocab"))
        return logits if cache is None else (logits, new_cache)


def make_cache(config: LMConfig, batch: int, length: int) -> Any:
    """Zero KV cache for all layers in the compute dtype, sharded (under a mesh) with the batch
    over the data axes and the key/value heads over "tensor": {"k", "v"} each [L, B, length,
    K, H] for scanned layers, else a tuple of L such pytrees of [B, length, K, H]."""
    one = init_cache(batch, length, config.kv_heads, config.head_dim, config.dtype)
    one = jax.tree.map(lambda a: constrain(a, CACHE), one)
    if config.scan_layers:
        return jax.tree.map(lambda a: constrain(jnp.zeros((config.num_layers,) + a.shape, a.dtype),
                                                ("layers",) + CACHE), one)
    return tuple(jax.tree.map(jnp.copy, one) for _ in range(config.num_layers))
