"""``jax.nn.dot_product_attention`` (XLA and cuDNN implementations) with reference semantics.

Two differences from :func:`~jaxgen.nn.kernels.reference.reference_attention` are bridged here:
``is_causal`` is top-left aligned (so causal attention with T_q != T_k is passed as an explicit
bottom-right mask), and a row whose keys are all masked gets a uniform softmax instead of zeros
(so such rows are zeroed afterwards). The cuDNN path is flash attention (Dao et al. 2022) in
cuDNN; it needs a CUDA GPU, fp16/bf16 inputs and a head dim that is a multiple of 8 and <= 256
(<= 128 before Hopper).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.nn.kernels.masks import check_qkv, mask_4d
from jaxgen.nn.kernels.reference import causal_mask

CUDNN_DTYPES = (jnp.float16, jnp.bfloat16)


def cudnn_unusable_reason(q: jax.Array, k: jax.Array, platform: str | None = None) -> str | None:
    """One line saying why the cuDNN kernel cannot run these inputs here, or None if it can."""
    platform = jax.default_backend() if platform is None else platform
    if platform != "gpu":
        return f"attention kernel 'cudnn' needs a CUDA GPU; this platform is {platform}"
    if q.dtype not in CUDNN_DTYPES or k.dtype != q.dtype:
        return f"attention kernel 'cudnn' needs float16 or bfloat16 inputs, got {q.dtype}"
    h = q.shape[-1]
    if h % 8 or h > 256:
        return f"attention kernel 'cudnn' needs a head dim that is a multiple of 8 and <= 256, got {h}"
    return None


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                          mask: jax.Array | None = None, scale: float | None = None,
                          implementation: str = "xla") -> jax.Array:
    """Attention through ``jax.nn.dot_product_attention``; shapes as in ``reference_attention``.

    Args:
      q: [B, T_q, N, H]; k, v: [B, T_k, K, H], N a multiple of K.
      causal: bottom-right aligned causal mask.
      mask: optional bool broadcastable to [B, N, T_q, T_k], True = may attend.
      scale: default 1 / sqrt(H).
      implementation: "xla" or "cudnn" (the latter checked by :func:`cudnn_unusable_reason`).
    Returns:
      [B, T_q, N, H] in q's dtype; rows with no visible key are zero.
    """
    if implementation == "cudnn":
        reason = cudnn_unusable_reason(q, k)
        if reason:
            raise ValueError(reason)
    check_qkv(q, k, v)
    b, t_q, n, h = q.shape
    t_k = k.shape[1]
    m4 = None if mask is None else mask_4d(mask, b, n, t_q, t_k)
    if m4 is not None:
        m4 = jnp.broadcast_to(m4, m4.shape[:2] + (t_q, t_k))
    is_causal = causal and t_q == t_k
    if causal and not is_causal:
        cm = causal_mask(t_q, t_k)[None, None]
        m4 = cm if m4 is None else m4 & cm
    out = jax.nn.dot_product_attention(q, k, v, mask=m4, is_causal=is_causal, scale=scale,
                                       implementation=implementation)
    if m4 is None:
        return out
    rows = m4 & causal_mask(t_q, t_k)[None, None] if is_causal else m4
    seen = jnp.broadcast_to(jnp.any(rows, axis=-1), (b, n, t_q))  # [B, N, Tq]
    return jnp.where(seen.transpose(0, 2, 1)[..., None], out, jnp.zeros((), out.dtype))
