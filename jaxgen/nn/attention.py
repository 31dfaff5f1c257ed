"""Multi-head self-attention with RoPE, grouped-query heads and an explicit KV cache.

Attention is ``softmax(q k^T / sqrt(H)) v`` (Vaswani et al. 2017), computed by
:func:`jaxgen.nn.kernels.attention` (layout BTNH) with the kernel named in ``kernel``. Keys and
values may have fewer heads than queries: grouped-query attention (Ainslie et al. 2023), multi-query
when ``num_kv_heads == 1`` (Shazeer 2019). Positions are encoded by rotary embeddings (Su et al.
2021, RoFormer) applied to q and k, or not at all (the model adds learned positions instead).

The KV cache is a plain pytree ``{"k": [B, S, K, H], "v": [B, S, K, H]}`` passed in and returned,
so decoding stays functional (no mutable Flax collections) and stacks naturally under ``nn.scan``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import kernels
from jaxgen.nn.kernels import attention  # noqa: F401  (re-exported: the attention function)
from jaxgen.nn.layers import Initializer, dense_general, dtype_of
from jaxgen.nn.partitioning import constrain

ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", "kv")
ACT_KV_HEADS = ("activation_batch", "activation_length", "activation_kv_heads", "kv")

KVCache = dict  # {"k": [B, S, K, H], "v": [B, S, K, H]}


ROPE_SCALINGS = ("none", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How the rotary frequencies are stretched for a longer context (hashable).

    kind: none; linear (position interpolation, Chen et al. 2023: every frequency / factor);
    llama3 (Meta's Llama 3.1 scaling: wavelengths longer than original_len / low_freq_factor
    are divided by ``factor``, those shorter than original_len / high_freq_factor kept, and the
    band between interpolated smoothly; as ``transformers``' "llama3" rope type).
    """

    kind: str = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_len: int = 8192


def rope_frequencies(head_dim: int, base: float = 10000.0,
                     scaling: RopeScaling = RopeScaling()) -> jax.Array:
    """The rotary inverse wavelengths float32 [head_dim // 2]: ``base^(-2i/H)``, then scaled."""
    if scaling.kind not in ROPE_SCALINGS:
        raise ValueError(f"unknown rope scaling {scaling.kind!r}; use one of "
                         f"{', '.join(ROPE_SCALINGS)}")
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    if scaling.kind == "llama3":
        lo, hi, f = scaling.low_freq_factor, scaling.high_freq_factor, scaling.factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > scaling.original_len / lo, inv_freq / f, inv_freq)
        smooth = (scaling.original_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / f + smooth * scaled
        medium = (wavelen >= scaling.original_len / hi) & (wavelen <= scaling.original_len / lo)
        return jnp.where(medium, smoothed, scaled)
    return inv_freq


def rope_tables(positions: jax.Array, head_dim: int, base: float = 10000.0,
                scaling: RopeScaling = RopeScaling()) -> tuple[jax.Array, jax.Array]:
    """(sin, cos), each float32 [T, head_dim // 2], of rotary angles ``pos * freq_i``
    (:func:`rope_frequencies`)."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    inv_freq = rope_frequencies(head_dim, base, scaling)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotates pairs (x[..., i], x[..., i + H/2]) of x [B, T, N, H] by the angles of position t.

    The "rotate half" layout of GPT-NeoX / Llama: <rope(q, m), rope(k, n)> depends on m - n only.
    """
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    s, c = sin[None, :, None, :], cos[None, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def init_cache(batch: int, length: int, num_kv_heads: int, head_dim: int,
               dtype: Any = "float32") -> KVCache:
    """An empty (zero) cache for ``length`` positions."""
    shape = (batch, length, num_kv_heads, head_dim)
    return {"k": jnp.zeros(shape, dtype_of(dtype)), "v": jnp.zeros(shape, dtype_of(dtype))}


class SelfAttention(nn.Module):
    """Causal multi-head self-attention, [B, T, D] -> [B, T, D].

    Projections (Flax ``DenseGeneral``, logical axes in brackets): queries [D, N, H]
    (embed, heads, kv), keys and values together [D, 2, K, H] (embed, None, kv_heads, kv), the
    output [N, H, D] (heads, kv, embed). Heads are an axis of every kernel, so splitting heads
    over "tensor" never cuts a head or mixes q with k and v. Call with ``cache=None`` for a full
    causal pass, or with a cache and ``cache_index`` (int32 scalar: the position of x[:, 0]) to
    write this step's keys and values at ``cache_index`` and attend over the cache with
    ``mask`` [T, S] (True = visible).

    Attributes:
      num_heads: N query heads. num_kv_heads: K key/value heads, N % K == 0.
      head_dim: H. kernel: the kernel of :func:`jaxgen.nn.kernels.attention`.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    use_bias: bool = False
    kernel: str = "auto"
    kernel_init: Initializer = nn.initializers.normal(0.02)
    out_init: Initializer = nn.initializers.normal(0.02)
    dtype: Any = "float32"
    param_dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, rope: Optional[tuple[jax.Array, jax.Array]] = None,
                 cache: Optional[KVCache] = None, mask: Optional[jax.Array] = None,
                 cache_index: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[KVCache]]:
        n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
        if n % k:
            raise ValueError(f"num_heads ({n}) must be a multiple of num_kv_heads ({k})")
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        q = dense_general((n, h), ("embed", "heads", "kv"), kernel_init=self.kernel_init,
                          name="q", **kw)(x)
        kv = dense_general((2, k, h), ("embed", None, "kv_heads", "kv"),
                           kernel_init=self.kernel_init, name="kv", **kw)(x)
        kk, v = kv[:, :, 0], kv[:, :, 1]
        if rope is not None:
            q, kk = apply_rope(q, *rope), apply_rope(kk, *rope)
        q = constrain(q, ACT_HEADS)
        kk, v = constrain(kk, ACT_KV_HEADS), constrain(v, ACT_KV_HEADS)
        if cache is None:
            o = kernels.attention(q, kk, v, causal=True, kernel=self.kernel)
            new_cache = None
        else:
            start = (0, cache_index, 0, 0)
            new_cache = {name: constrain(jax.lax.dynamic_update_slice(
                cache[name], new.astype(cache[name].dtype), start), ACT_KV_HEADS)
                for name, new in (("k", kk), ("v", v))}
            o = kernels.attention(q, new_cache["k"].astype(q.dtype), new_cache["v"].astype(q.dtype),
                                  causal=False, mask=mask, kernel=self.kernel)
        out = dense_general(x.shape[-1], ("heads", "kv", "embed"), axis=(-2, -1),
                            kernel_init=self.out_init, name="out", **kw)(o)
        return out, new_cache
