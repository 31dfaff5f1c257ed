"""The one attention entry point, :func:`attention`, and the one rule that picks a kernel.

Every model calls :func:`attention`; nothing else in jaxgen looks at the platform to choose how
attention is computed. ``kernel`` names an implementation or ``auto``; ``auto`` is resolved by
:func:`choose_kernel` from the platform, the shapes, the dtype and the mask. The platform is
that of the devices the program is compiled for: the mesh set with ``jax.set_mesh`` (the
trainer traces every step under its mesh, so compiling for a TPU topology on a CPU host picks
the TPU kernel), else JAX's default backend.

Kernels: ``reference`` (plain JAX, float32 scores), ``xla`` and ``cudnn``
(``jax.nn.dot_product_attention``), ``short`` (short sequences laid out for XLA:CPU's batched
matmuls), ``chunked`` (memory-efficient, Rabe & Staats 2021, with a FlashAttention-2 backward
and causal block skipping), ``cpu_flash`` (FlashAttention as a C++ AVX-512 kernel behind
``jax.ffi``, float32), ``pallas`` (flash attention, Dao et al. 2022; GPU, or interpret mode).
A kernel that takes no arbitrary mask (``cpu_flash``, ``pallas``) named for a call that has
one (KV-cache decoding) is a preference, not an order: that call uses ``auto``.

The ``auto`` rule (CPU figures from ``python -m benchmarks attention`` and
``python -m benchmarks.unet_parts`` on a 2-core CPU; the GPU order from the kernels' design):
- GPU: ``cudnn`` when usable (fp16/bf16, head dim a multiple of 8 and <= 256), else ``pallas``
  when usable (no mask, T_q == T_k, T a multiple of its blocks), else ``xla``.
- TPU and any other accelerator: ``xla``.
- CPU: for causal attention with T_k >= CAUSAL_CHUNKED_MIN_T or any attention with
  T_q * T_k >= CHUNKED_MIN_SCORES, ``cpu_flash`` when it can run (float32, no mask, head dim a
  multiple of 16, AVX-512 and a compiler), else ``chunked``; below that, ``short``.
Each fallback is logged once per cause.
"""
from __future__ import annotations

import logging
import typing
from typing import Literal

import jax

from jaxgen.nn.kernels.chunked import chunked_attention
from jaxgen.nn.kernels.cpu_flash import cpu_flash_attention, cpu_flash_unusable_reason
from jaxgen.nn.kernels.pallas import (
    DEFAULT_BLOCK_BACKWARD,
    DEFAULT_BLOCK_K,
    DEFAULT_BLOCK_Q,
    MIN_GPU_BLOCK,
    block_size,
    pallas_attention,
    pallas_unusable_reason,
)
from jaxgen.nn.kernels.reference import reference_attention
from jaxgen.nn.kernels.short import short_attention
from jaxgen.nn.kernels.xla import cudnn_unusable_reason, dot_product_attention

log = logging.getLogger(__name__)
_logged: set[str] = set()

KernelName = Literal["auto", "reference", "xla", "cudnn", "short", "chunked", "cpu_flash",
                     "pallas"]
KERNELS: tuple[str, ...] = typing.get_args(KernelName)
# Kernels that take an arbitrary mask; the others only causal or none.
MASK_KERNELS = ("reference", "xla", "cudnn", "short", "chunked")

# Measured by `python -m benchmarks attention` (float32, causal, B=4, N=8, H=64, a busy 2-core CPU
# split into 2 devices): chunked vs xla time was 1.04x forward / 0.95x forward+backward at
# T=256, 2.3x / 2.4x at T=512, 4.7x / 8.1x at T=1024; non-causal (B=2, N=4, T=1024) 1.8x / 1.9x.
CAUSAL_CHUNKED_MIN_T = 256
CHUNKED_MIN_SCORES = 512 * 512


def current_platform() -> str:
    """The platform of the mesh the program is traced under (``jax.set_mesh``), else JAX's
    default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def _fallback(chosen: str, reason: str) -> str:
    message = f"attention kernel 'auto' uses {chosen!r}: {reason}"
    if message not in _logged:
        _logged.add(message)
        log.info(message)
    return chosen


def _pallas_blocks_reason(t: int) -> str | None:
    """Why the Pallas kernel's default tiles cannot cover T on a GPU, or None."""
    for name, size in (("block_backward", DEFAULT_BLOCK_BACKWARD), ("block_q", DEFAULT_BLOCK_Q),
                       ("block_k", DEFAULT_BLOCK_K)):
        try:
            block_size(size, t, name)
        except ValueError:
            return (f"attention kernel 'pallas' needs T a multiple of {name}={size}, got {t} "
                    f"(or of {MIN_GPU_BLOCK}, with smaller tiles)")
    return None


def choose_kernel(q: jax.Array, k: jax.Array, *, causal: bool, mask: jax.Array | None,
                  platform: str | None = None) -> str:
    """The kernel ``auto`` runs for q [B,Tq,N,H], k [B,Tk,K,H] on ``platform`` (default:
    :func:`current_platform`)."""
    platform = current_platform() if platform is None else platform
    t_q, t_k = q.shape[1], k.shape[1]
    if platform == "gpu":
        cudnn_reason = cudnn_unusable_reason(q, k, platform)
        if cudnn_reason is None:
            return "cudnn"
        pallas_reason = (pallas_unusable_reason(q, k, mask=mask, interpret=False, platform=platform)
                         or _pallas_blocks_reason(t_q))
        if pallas_reason is None:
            return _fallback("pallas", cudnn_reason)
        return _fallback("xla", f"{cudnn_reason}; {pallas_reason}")
    if platform != "cpu":
        return _fallback("xla", f"platform {platform} has no kernel tuned for it here")
    if (causal and t_k >= CAUSAL_CHUNKED_MIN_T) or t_q * t_k >= CHUNKED_MIN_SCORES:
        reason = cpu_flash_unusable_reason(q, k, mask=mask, platform=platform)
        return "cpu_flash" if reason is None else _fallback("chunked", reason)
    return "short"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
              mask: jax.Array | None = None, scale: float | None = None,
              kernel: str = "auto", interpret: bool = False, block_q: int | None = None,
              block_k: int | None = None) -> jax.Array:
    """Multi-head attention, layout BTNH: q [B,Tq,N,H], k/v [B,Tk,K,H] -> [B,Tq,N,H].

    See :func:`jaxgen.nn.kernels.reference.reference_attention` for the exact semantics that
    every kernel reproduces (bottom-right causal mask, bool ``mask`` broadcastable to
    [B,N,Tq,Tk], GQA/MQA, zeros for rows with no visible key).

    Args:
      kernel: one of :data:`KERNELS` (see the module docstring for ``auto``).
      interpret: run the ``pallas`` kernel in the Pallas interpreter (needed off GPU).
      block_q, block_k: tile sizes for ``chunked``, ``cpu_flash`` and ``pallas`` (None: each
        kernel's default).
    Raises:
      ValueError: unknown kernel, or a kernel that cannot run these inputs on this platform.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "auto" or (mask is not None and kernel not in MASK_KERNELS):
        kernel = choose_kernel(q, k, causal=causal, mask=mask)
    blocks = {name: size for name, size in (("block_q", block_q), ("block_k", block_k))
              if size is not None}
    if kernel == "reference":
        return reference_attention(q, k, v, causal=causal, mask=mask, scale=scale)
    if kernel == "short":
        return short_attention(q, k, v, causal=causal, mask=mask, scale=scale)
    if kernel in ("xla", "cudnn"):
        return dot_product_attention(q, k, v, causal=causal, mask=mask, scale=scale,
                                     implementation=kernel)
    if kernel == "chunked":
        return chunked_attention(q, k, v, causal=causal, mask=mask, scale=scale, **blocks)
    if kernel == "cpu_flash":
        return cpu_flash_attention(q, k, v, causal=causal, mask=mask, scale=scale, **blocks)
    return pallas_attention(q, k, v, causal=causal, mask=mask, scale=scale,
                            interpret=interpret, **blocks)
