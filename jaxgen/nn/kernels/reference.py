"""Reference multi-head attention: the plain softmax(q k^T / sqrt(d)) v of Vaswani et al. 2017.

Every other kernel is tested against this one. Layout BTNH as in ``jax.nn.dot_product_attention``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.nn.kernels.masks import check_qkv


def causal_mask(t_q: int, t_k: int) -> jax.Array:
    """bool[t_q, t_k]; query i may see key j iff j <= i + (t_k - t_q) (bottom-right aligned)."""
    return jnp.arange(t_k)[None, :] <= jnp.arange(t_q)[:, None] + (t_k - t_q)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                        mask: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """Attention computed in float32 with the full [T_q, T_k] score matrix.

    Args:
      q: [B, T_q, N, H] queries.
      k, v: [B, T_k, K, H] keys and values; N must be a multiple of K (grouped-query attention,
        Ainslie et al. 2023; K == 1 is multi-query attention, Shazeer 2019).
      causal: apply a bottom-right aligned causal mask.
      mask: optional bool array broadcastable to [B, N, T_q, T_k]; True means "may attend".
      scale: score scale, default 1 / sqrt(H).
    Returns:
      [B, T_q, N, H] in the dtype of ``q``. Rows with no visible key return zeros.
    """
    check_qkv(q, k, v)
    b, t_q, n, h = q.shape
    kv_heads = k.shape[2]
    scale = h ** -0.5 if scale is None else scale
    g = n // kv_heads
    qf = q.astype(jnp.float32).reshape(b, t_q, kv_heads, g, h)
    s = jnp.einsum("bqkgh,bskh->bkgqs", qf, k.astype(jnp.float32)) * scale  # [B,K,G,Tq,Tk]
    visible = jnp.ones((t_q, k.shape[1]), bool)
    if causal:
        visible = causal_mask(t_q, k.shape[1])
    visible = jnp.broadcast_to(visible, (b, n, t_q, k.shape[1]))
    if mask is not None:
        visible = visible & jnp.broadcast_to(mask, (b, n, t_q, k.shape[1]))
    visible = visible.reshape(b, kv_heads, g, t_q, k.shape[1])
    s = jnp.where(visible, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(visible, jnp.exp(s - m), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0, 1.0, denom)
    o = jnp.einsum("bkgqs,bskh->bqkgh", p, v.astype(jnp.float32))
    return o.reshape(b, t_q, n, h).astype(q.dtype)
