"""Attention for short sequences on CPU, laid out for XLA:CPU's batched matmuls.

The same result as :func:`~jaxgen.nn.kernels.reference.reference_attention` (to float32
rounding), computed as two plain batched matmuls with the batch axes leading: heads move next
to the batch ([B, K, G, T, H]), keys are transposed to [B, K, H, S], so the products are
[T, H] x [H, S] and [T, S] x [S, H], and the normalisation divides the [.., T, H] output instead
of the [.., T, S] probabilities. XLA:CPU runs a contraction over the minor axis of both operands
(``einsum("btnh,bsnh->bnst")``, what ``jax.nn.dot_product_attention`` lowers to) much more
slowly: at the U-Net's 196 tokens of width 8 (B=16, N=16, 2-core CPU) this took 5.9 ms against
20.9 ms for that einsum and 33.7 ms for ``jax.nn.dot_product_attention``; PyTorch's SDPA took
5.3 ms (``python -m benchmarks.unet_parts``). ``auto`` picks it on CPU only, for sequences short
enough that the whole [T, S] score matrix is small (see :mod:`jaxgen.nn.kernels.dispatch`).
Scores, exponentials and sums are float32; causal (bottom-right), masks and GQA as the
reference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.nn.kernels.masks import check_qkv, mask_4d
from jaxgen.nn.kernels.reference import causal_mask


def short_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                    mask: jax.Array | None = None, scale: float | None = None) -> jax.Array:
    """q [B, T, N, H], k/v [B, S, K, H] -> [B, T, N, H] (rows with no visible key are zero)."""
    check_qkv(q, k, v)
    f32 = jnp.float32
    b, t, n, h = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = n // kv
    scale = h ** -0.5 if scale is None else scale
    q_t = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, g, h).transpose(0, 2, 3, 1, 4)
    k_t = k.transpose(0, 2, 3, 1)  # [B, K, H, S]
    v_t = v.transpose(0, 2, 1, 3)  # [B, K, S, H]
    batch_dims = ((0, 1), (0, 1))
    q_t = q_t.reshape(b, kv, g * t, h)  # [B, K, G*T, H]
    scores = jax.lax.dot_general(q_t, k_t, (((3,), (2,)), batch_dims),
                                 preferred_element_type=f32)  # [B, K, G*T, S]
    visible = None
    if causal or mask is not None:
        vis = jnp.ones((1, 1, t, s), bool) if not causal else causal_mask(t, s)[None, None]
        if mask is not None:
            vis = vis & mask_4d(mask, b, n, t, s)
        visible = jnp.broadcast_to(vis, (vis.shape[0], n, t, s)).reshape(
            vis.shape[0], kv, g * t, s)
        scores = jnp.where(visible, scores, -jnp.inf)
    m = jnp.max(scores, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(scores - m)
    if visible is not None:
        e = jnp.where(visible, e, 0.0)
    o = jax.lax.dot_general(e.astype(v.dtype), v_t, (((3,), (2,)), batch_dims),
                            preferred_element_type=f32)  # [B, K, G*T, H]
    denom = jnp.sum(e, axis=-1)[..., None]
    o = o / jnp.where(denom == 0, 1.0, denom)
    return o.reshape(b, kv, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q.dtype)
