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
``jax.ffi``, float32), ``pallas`` (flash attention, Dao et al. 2022, in Triton; GPU, or
interpret mode), ``splash`` (Pallas's TPU flash attention, the causal mask as block sparsity).
The two Pallas kernels are opaque to the SPMD partitioner, so under a mesh they run under
``shard_map``, each device on its own batch and head shard (no gather). A kernel that takes no
arbitrary mask (``cpu_flash``, ``pallas``, ``splash``) named for a call that has one (KV-cache
decoding) is a preference, not an order: that call uses ``auto``.

The ``auto`` rule (CPU figures from ``python -m benchmarks attention`` and
``python -m benchmarks.unet_parts`` on a 2-core CPU; the accelerators' order from the
kernels' design):
- GPU: ``cudnn`` when usable (fp16/bf16, head dim a multiple of 8 and <= 256), else ``pallas``
  when usable (no mask, T_q == T_k, T a multiple of its blocks), else ``xla``.
- TPU: ``splash`` when usable (no mask, T_k a multiple of 128, T_q of 8, f32/bf16, the batch and
  key/value heads dividing over the mesh's batch and tensor axes), else ``xla``.
- Any other accelerator: ``xla``.
- CPU: for causal attention with T_k >= CAUSAL_CHUNKED_MIN_T or any attention with
  T_q * T_k >= CHUNKED_MIN_SCORES, ``cpu_flash`` when it can run (float32, no mask, head dim a
  multiple of 16, AVX-512 and a compiler), else ``chunked``; below that, ``short``.
Each fallback is logged once per cause.
"""
from __future__ import annotations

import contextlib
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
from jaxgen.nn.kernels.sharding import shard_attention
from jaxgen.nn.kernels.short import short_attention
from jaxgen.nn.kernels.splash import (
    DEFAULT_BATCH_AXES,
    auto_axes,
    DEFAULT_HEAD_AXES,
    splash_attention,
    splash_unusable_reason,
)
from jaxgen.nn.kernels.xla import cudnn_unusable_reason, dot_product_attention

log = logging.getLogger(__name__)
_logged: set[str] = set()

KernelName = Literal["auto", "reference", "xla", "cudnn", "short", "chunked", "cpu_flash",
                     "pallas", "splash"]
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


# (kernel, dtype) pairs ``auto`` and explicit names resolved to while tracing (what a compile
# report names); cleared by whoever reads it.
chosen: set[tuple[str, str]] = set()
_silent = [0]


@contextlib.contextmanager
def silent():
    """Neither log ``auto``'s fallbacks nor record :data:`chosen` inside this block: for
    traces that never run (a model's abstract initialisation, often on a batch of 1 or outside
    the mesh), which would otherwise report a kernel the compiled step does not use."""
    _silent[0] += 1
    try:
        yield
    finally:
        _silent[0] -= 1


def _shards(axes: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """(the axes of ``axes`` the context mesh has, their total size); ((), 1) without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return (), 1
    have = tuple(a for a in axes if a in auto_axes(mesh))
    size = 1
    for a in have:
        size *= mesh.shape[a]
    return have, size


def _mesh_split_reason(name: str, q: jax.Array, k: jax.Array) -> str | None:
    """Why a kernel run per shard cannot split these inputs over the context mesh, or None."""
    _, n_b = _shards(DEFAULT_BATCH_AXES)
    _, n_h = _shards(DEFAULT_HEAD_AXES)
    if q.shape[0] % n_b:
        return f"attention kernel {name!r}: batch {q.shape[0]} does not divide over {n_b} shards"
    if k.shape[2] % n_h:
        return (f"attention kernel {name!r}: key/value heads {k.shape[2]} do not divide over "
                f"{n_h} tensor shards")
    return None


def _per_shard(fn):
    """``fn`` under ``shard_map`` over the context mesh's batch and head axes (no mesh: fn)."""
    if jax.sharding.get_abstract_mesh().empty:
        return fn
    batch, _ = _shards(DEFAULT_BATCH_AXES)
    heads, _ = _shards(DEFAULT_HEAD_AXES)
    if not batch and not heads:  # inside a shard_map over them already
        return fn
    return shard_attention(fn, batch_axes=batch or None, head_axes=heads or None)


def _fallback(chosen: str, reason: str) -> str:
    message = f"attention kernel 'auto' uses {chosen!r}: {reason}"
    if message not in _logged and not _silent[0]:
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
                         or _pallas_blocks_reason(t_q) or _mesh_split_reason("pallas", q, k))
        if pallas_reason is None:
            return _fallback("pallas", cudnn_reason)
        return _fallback("xla", f"{cudnn_reason}; {pallas_reason}")
    if platform == "tpu":
        reason = (splash_unusable_reason(q, k, mask, platform, causal=causal)
                  or _mesh_split_reason("splash", q, k))
        return "splash" if reason is None else _fallback("xla", reason)
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
    if not _silent[0]:
        chosen.add((kernel, str(jax.numpy.dtype(q.dtype))))
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
    if kernel == "splash":
        return splash_attention(q, k, v, causal=causal, mask=mask, scale=scale,
                                interpret=interpret, **blocks)
    return _per_shard(lambda q, k, v: pallas_attention(
        q, k, v, causal=causal, mask=mask, scale=scale, interpret=interpret, **blocks))(q, k, v)
