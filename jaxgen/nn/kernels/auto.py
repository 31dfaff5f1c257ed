"""The ``auto`` rule: pick the fastest kernel that is correct for these inputs on this platform.

Rule (from ``python -m benchmarks.attention`` on a 2-core CPU; GPU order from the kernels' design,
not measured here):
- GPU: ``cudnn`` when usable (fp16/bf16, head dim a multiple of 8 and <= 256), else ``pallas``
  when usable (no mask, T_q == T_k, T a multiple of its blocks), else ``xla``. Each fallback is
  logged once per cause.
- CPU and other platforms: ``chunked`` for causal attention with T_k >= CAUSAL_CHUNKED_MIN_T or
  any attention with T_q * T_k >= CHUNKED_MIN_SCORES (it skips masked blocks and keeps score
  tiles in cache); ``xla`` for shorter sequences, where one fused dense op wins.
"""
from __future__ import annotations

import logging

import jax

from jaxgen.nn.kernels.pallas import DEFAULT_BLOCK_BACKWARD, DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q
from jaxgen.nn.kernels.pallas import pallas_unusable_reason
from jaxgen.nn.kernels.xla import cudnn_unusable_reason

log = logging.getLogger(__name__)
_logged: set[str] = set()

# Measured (float32, B=4, N=8, H=64, shared 2-core CPU): chunked vs xla forward speed-up was
# 1.3x causal / 0.93x full at T=256, 2.8x / 2.2x at T=512, 4.2x / 1.6x at T=2048.
CAUSAL_CHUNKED_MIN_T = 256
CHUNKED_MIN_SCORES = 512 * 512


def _fallback(chosen: str, reason: str) -> str:
    message = f"attention kernel 'auto' uses {chosen!r}: {reason}"
    if message not in _logged:
        _logged.add(message)
        log.info(message)
    return chosen


def _pallas_blocks_reason(t: int) -> str | None:
    for name, size in (("block_q", DEFAULT_BLOCK_Q), ("block_k", DEFAULT_BLOCK_K),
                       ("block_backward", DEFAULT_BLOCK_BACKWARD)):
        if t % min(size, t):
            return f"attention kernel 'pallas' needs T a multiple of {name}={size}, got {t}"
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
    if (causal and t_k >= CAUSAL_CHUNKED_MIN_T) or t_q * t_k >= CHUNKED_MIN_SCORES:
        return "chunked"
    return "xla"
