"""Attention kernels behind one function, :func:`attention`.

Kernels: ``reference`` (plain JAX, float32 scores), ``xla`` and ``cudnn``
(``jax.nn.dot_product_attention``), ``chunked`` (memory-efficient, Rabe & Staats 2021, with a
FlashAttention-2 backward and causal block skipping), ``cpu_flash`` (FlashAttention as a C++
AVX-512 kernel behind ``jax.ffi``, float32, built on first use), ``pallas`` (flash attention, Dao et al.
2022; GPU, or interpret mode on CPU), ``auto`` (see :mod:`jaxgen.nn.kernels.auto`).
:func:`shard_attention` runs any of them per batch/head shard under a sharded ``jit``.
"""
from __future__ import annotations

import jax

from jaxgen.nn.kernels.auto import choose_kernel
from jaxgen.nn.kernels.chunked import chunked_attention
from jaxgen.nn.kernels.cpu_flash import cpu_flash_attention
from jaxgen.nn.kernels.pallas import pallas_attention
from jaxgen.nn.kernels.reference import causal_mask, reference_attention
from jaxgen.nn.kernels.sharding import shard_attention
from jaxgen.nn.kernels.xla import dot_product_attention

KERNELS = ("auto", "reference", "xla", "cudnn", "chunked", "cpu_flash", "pallas")
# Kernels that take no arbitrary mask (causal or none only): callers that need one, such as
# KV-cache decoding, use ``auto`` instead.
MASKLESS_KERNELS = ("cpu_flash", "pallas")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
              mask: jax.Array | None = None, scale: float | None = None,
              kernel: str = "auto", interpret: bool = False, block_q: int | None = None,
              block_k: int | None = None) -> jax.Array:
    """Multi-head attention, layout BTNH: q [B,Tq,N,H], k/v [B,Tk,K,H] -> [B,Tq,N,H].

    See :func:`jaxgen.nn.kernels.reference.reference_attention` for the exact semantics that
    every kernel reproduces (bottom-right causal mask, bool ``mask`` broadcastable to
    [B,N,Tq,Tk], GQA/MQA, zeros for rows with no visible key).

    Args:
      kernel: one of :data:`KERNELS`.
      interpret: run the ``pallas`` kernel in the Pallas interpreter (needed off GPU).
      block_q, block_k: tile sizes for ``chunked``, ``cpu_flash`` and ``pallas`` (None: each
        kernel's default).
    Raises:
      ValueError: unknown kernel, or a kernel that cannot run these inputs on this platform.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "auto":
        kernel = choose_kernel(q, k, causal=causal, mask=mask)
    blocks = {name: size for name, size in (("block_q", block_q), ("block_k", block_k))
              if size is not None}
    if kernel == "reference":
        return reference_attention(q, k, v, causal=causal, mask=mask, scale=scale)
    if kernel in ("xla", "cudnn"):
        return dot_product_attention(q, k, v, causal=causal, mask=mask, scale=scale,
                                     implementation=kernel)
    if kernel == "chunked":
        return chunked_attention(q, k, v, causal=causal, mask=mask, scale=scale, **blocks)
    if kernel == "cpu_flash":
        return cpu_flash_attention(q, k, v, causal=causal, mask=mask, scale=scale, **blocks)
    return pallas_attention(q, k, v, causal=causal, mask=mask, scale=scale,
                            interpret=interpret, **blocks)


__all__ = ["KERNELS", "MASKLESS_KERNELS", "attention", "causal_mask", "choose_kernel",
           "chunked_attention", "cpu_flash_attention", "dot_product_attention", "pallas_attention",
           "reference_attention", "shard_attention"]
