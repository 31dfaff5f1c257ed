"""Validation of the optional attention mask shared by the kernels."""
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
