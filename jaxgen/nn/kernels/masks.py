"""Validation shared by the kernels: the q/k/v shapes and the optional attention mask."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_4d(mask: jax.Array, b: int, n: int, t_q: int, t_k: int) -> jax.Array:
    """A bool mask broadcastable to [B, N, T_q, T_k] as a 4-d array [B|1, N|1, T_q|1, T_k|1].

    Raises ValueError (one line) when the mask does not broadcast to [B, N, T_q, T_k].
    """
    mask = jnp.asarray(mask, bool)
    want = f"[B,N,Tq,Tk]=({b},{n},{t_q},{t_k})"
    if mask.ndim > 4:
        raise ValueError(f"mask shape {mask.shape} does not broadcast to {want}")
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if any(m not in (1, d) for m, d in zip(mask.shape, (b, n, t_q, t_k))):
        raise ValueError(f"mask shape {mask.shape} does not broadcast to {want}")
    return mask


def check_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    """Raise ValueError (one line) unless q is [B, T_q, N, H] and k, v are [B, T_k, K, H] with
    N a multiple of K."""
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] \
            or k.shape[3] != q.shape[3]:
        raise ValueError(f"attention needs q [B,Tq,N,H] and k, v [B,Tk,K,H], got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    n, kv_heads = q.shape[2], k.shape[2]
    if n % kv_heads:
        raise ValueError(f"query heads ({n}) must be a multiple of key/value heads ({kv_heads})")
