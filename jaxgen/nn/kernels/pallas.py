"""The Pallas (Triton) flash-attention kernel shipped with JAX, with reference semantics.

Wraps ``jax.experimental.pallas.ops.gpu.attention.mha`` (FlashAttention, Dao et al. 2022; its
backward is FlashAttention-2, Dao 2023). That kernel takes layout BTNH, equal head counts for
q/k/v (GQA is served by repeating k/v heads), a top-left causal mask, optional segment ids and
sequence lengths divisible by its block sizes. It cannot express an arbitrary mask, and its causal
mask only agrees with ours when T_q == T_k, so those cases raise ValueError. Off GPU it runs only
in interpret mode (slow; for tests).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxgen.nn.kernels.masks import check_qkv

DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 128
DEFAULT_BLOCK_BACKWARD = 32


def pallas_unusable_reason(q: jax.Array, k: jax.Array, *, mask: jax.Array | None,
                           interpret: bool, platform: str | None = None) -> str | None:
    """One line saying why the Pallas kernel cannot run these inputs here, or None if it can."""
    platform = jax.default_backend() if platform is None else platform
    if platform != "gpu" and not interpret:
        return (f"attention kernel 'pallas' needs a GPU (or interpret=True); "
                f"this platform is {platform}")
    if mask is not None:
        return "attention kernel 'pallas' cannot take a mask (it has only causal and segment ids)"
    if q.shape[1] != k.shape[1]:
        return (f"attention kernel 'pallas' needs T_q == T_k (its causal mask is top-left "
                f"aligned), got {q.shape[1]} and {k.shape[1]}")
    return None


# Triton tiles must be powers of two, and its matmuls need tiles of at least 16 rows/columns.
MIN_GPU_BLOCK = 16


def block_size(size: int, t: int, name: str, *, interpret: bool = False) -> int:
    """The tile the kernel uses for a requested ``size`` along a sequence of length ``t``.

    A power-of-two ``size`` becomes the largest power of two <= ``size`` that divides ``t``
    (128 for T=256, 16 for T=48). Any other size is clipped to ``t`` and must then divide it,
    and is rounded down to its largest power-of-two factor (a clipped T=48 gives 16). On a GPU
    the result must be at least :data:`MIN_GPU_BLOCK`. Raises ValueError (one line) otherwise.
    """
    if size < 1:
        raise ValueError(f"attention kernel 'pallas': {name} must be positive, got {size}")
    if size & (size - 1) == 0:
        b = math.gcd(size, t)
    else:
        b = min(size, t)
        if t % b:
            raise ValueError(f"attention kernel 'pallas': sequence length {t} is not a multiple "
                             f"of {name}={b}")
        b &= -b  # largest power of two dividing b
    if not interpret and b < MIN_GPU_BLOCK:
        raise ValueError(f"attention kernel 'pallas' needs {name} >= {MIN_GPU_BLOCK} on a GPU "
                         f"(a power of two dividing T), got {b} for T={t}")
    return b



def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                     mask: jax.Array | None = None, scale: float | None = None,
                     interpret: bool = False, block_q: int = DEFAULT_BLOCK_Q,
                     block_k: int = DEFAULT_BLOCK_K,
                     block_backward: int = DEFAULT_BLOCK_BACKWARD) -> jax.Array:
    """Flash attention in Pallas; q [B,T,N,H], k/v [B,T,K,H] -> [B,T,N,H] (N a multiple of K).

    Block sizes become powers of two that divide T (see :func:`block_size`);
    ``block_backward`` is used for all four backward tiles. ``interpret=True`` runs the kernel
    through the Pallas interpreter (any platform). Under a sharded ``jit``, wrap it in
    :func:`jaxgen.nn.kernels.sharding.shard_attention` so each device runs its own shard.
    """
    from jax.experimental.pallas.ops.gpu import attention as pallas_mha  # triton import is slow

    reason = pallas_unusable_reason(q, k, mask=mask, interpret=interpret)
    if reason:
        raise ValueError(reason)
    check_qkv(q, k, v)
    n, h = q.shape[2], q.shape[3]
    kv_heads = k.shape[2]
    if kv_heads != n:
        k, v = jnp.repeat(k, n // kv_heads, axis=2), jnp.repeat(v, n // kv_heads, axis=2)
    t = q.shape[1]
    bb = block_size(block_backward, t, "block_backward", interpret=interpret)
    sizes = pallas_mha.BlockSizes(block_q=block_size(block_q, t, "block_q", interpret=interpret),
                                  block_k=block_size(block_k, t, "block_k", interpret=interpret),
                                  block_q_dkv=bb,
                                  block_kv_dkv=bb, block_q_dq=bb, block_kv_dq=bb)
    scale = h ** -0.5 if scale is None else scale
    return pallas_mha.mha(q, k, v, None, sm_scale=float(scale), causal=bool(causal),
                          block_sizes=sizes, interpret=interpret)
