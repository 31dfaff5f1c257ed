"""The ``auto`` rule: pick the fastest kernel that is correct for these inputs on this platform.

Rule (from ``python -m benchmarks.attention`` on a 2-core CPU; GPU order from the kernels' design,
not measured here):
- GPU: ``cudnn`` when usable (fp16/bf16, head dim a multiple of 8 and <= 256), else ``pallas``
  when usable (no mask, T_q == T_k, T a multiple of its blocks), else ``xla``. Each fallback is
  logged once per cause.
- TPU and any other platform: ``xla`` (XLA's TPU compiler fuses attention itself; the
  ``chunked`` kernel's tiling is tuned for CPU caches, and its unrolled tile plan would only
  lengthen TPU compiles). Logged once.
- CPU: for causal attention with T_k >= CAUSAL_CHUNKED_MIN_T or any attention with
  T_q * T_k >= CHUNKED_MIN_SCORES, ``cpu_flash`` when it can run (float32, no mask, head dim a
  multiple of 16, AVX-512 and a compiler, see :mod:`jaxgen.nn.kernels.cpu_flash`), else
  ``chunked``; both skip masked blocks and keep score tiles in cache. ``xla`` for shorter
  sequences, where one fused dense op wins.
"""
from __future__ import annotations

import logging

import jax

from jaxgen.nn.kernels.cpu_flash import cpu_flash_unusable_reason
from jaxgen.nn.kernels.pallas import (
    DEFAULT_BLOCK_BACKWARD,
    DEFAULT_BLOCK_K,
    DEFAULT_BLOCK_Q,
    MIN_GPU_BLOCK,
    block_size,
    pallas_unusable_reason,
)
from jaxgen.nn.kernels.xla import cudnn_unusable_reason

log = logging.getLogger(__name__)
_logged: set[str] = set()

# Measured by `python -m benchmarks attention` (float32, causal, B=4, N=8, H=64, a busy 2-core CPU
# split into 2 devices): chunked vs xla time was 1.04x forward / 0.95x forward+backward at
# T=256, 2.3x / 2.4x at T=512, 4.7x / 8.1x at T=1024; non-causal (B=2, N=4, T=1024) 1.8x / 1.9x.
CAUSAL_CHUNKED_MIN_T = 256
CHUNKED_MIN_SCORES = 512 * 512


def _fallback(chosen: str, reason: str) -> str:
    message = f"attention kernel 'auto' uses {chosen!r}: {reason}"
    if message not in _logged:
        _logged.add(message)
        log.info(message)
    return chosen


def _pallas_blocks_reason(t: int) -> str | None:
    """Why the Pallas kernel's default tiles cannot cover T on a GPU (powers of two >= 16 that
    divide T, see :func:`~jaxgen.nn.kernels.pallas.block_size`), or None."""
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
    """Name of the kernel ``auto`` runs for q [B,Tq,N,H], k [B,Tk,K,H] on ``platform``
    (default: JAX's default backend)."""
    platform = jax.default_backend() if platform is None else platform
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
    if platform != "cpu":  # TPU and others: XLA's own fused attention, not the CPU-tuned kernel
        return _fallback("xla", f"platform {platform} has no kernel tuned for it here")
    if (causal and t_k >= CAUSAL_CHUNKED_MIN_T) or t_q * t_k >= CHUNKED_MIN_SCORES:
        reason = cpu_flash_unusable_reason(q, k, mask=mask, platform=platform)
        return "cpu_flash" if reason is None else _fallback("chunked", reason)
    return "xla"
