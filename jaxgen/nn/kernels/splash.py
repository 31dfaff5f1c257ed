"""TPU attention: JAX's Pallas "splash" kernel (sparse flash attention), with reference semantics.

Wraps ``jax.experimental.pallas.ops.tpu.splash_attention`` (flash attention, Dao et al. 2022,
written in Pallas for the TPU's Mosaic compiler; its backward is its own custom VJP). The causal
mask is block sparsity (``splash_attention_mask.CausalMask``): key blocks above the diagonal are
never loaded. The kernel sees one example, q [N, Tq, H] and k/v [K, Tk, H] with N a multiple
of K (GQA/MQA); this wrapper takes jaxgen's layout q [B, Tq, N, H], k/v [B, Tk, K, H] (BTNH),
maps the kernel over the batch and scales q itself (the kernel does not scale scores).

Semantics: as :func:`jaxgen.nn.kernels.reference.reference_attention` with ``mask=None``: the
causal mask is bottom-right aligned (``CausalMask(offset=Tk - Tq)``). What the kernel cannot do
(see :func:`splash_unusable_reason`): a mask array, T_k not a multiple of 128 (its key tile fills
the 128 lanes), T_q not a multiple of 8, float16, causal with T_q > T_k (rows that see no key are
undefined there; the reference returns zeros).

Under a sharded ``jit`` the kernel is an opaque custom call (``tpu_custom_call``) that the SPMD
partitioner would gather around; :func:`splash_attention` therefore runs it under
``jax.shard_map`` over the context mesh (``jax.set_mesh``), batch over ``batch_axes`` and heads
over ``head_axes``: each device computes its own examples and heads, with no collective.
Off TPU the kernel only runs in the Pallas interpreter (``interpret=True``; slow, for tests).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxgen.nn.kernels.masks import check_qkv

DEFAULT_BATCH_AXES = ("data", "fsdp")
DEFAULT_HEAD_AXES = ("tensor",)
NUM_LANES = 128   # the kernel's key tile is a multiple of the TPU's 128 lanes
NUM_SUBLANES = 8  # and its query tile a multiple of the 8 sublanes
Q_BLOCKS = (512, 256, 128, 64, 32, 16, 8)
KV_BLOCKS = (512, 256, 128)


def kernel_platform(mesh=None) -> str:
    """The platform attention runs on: that of the mesh's devices (the context mesh of
    ``jax.set_mesh`` when ``mesh`` is None), else ``jax.default_backend()``. Compiling for a
    TPU topology from a CPU host answers "tpu" here and "cpu" from the default backend."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh is not None and not mesh.empty:
        if isinstance(mesh, jax.sharding.Mesh):
            return mesh.devices.flat[0].platform
        device = getattr(mesh, "abstract_device", None)
        if device is not None:
            return device.platform
    return jax.default_backend()


def splash_unusable_reason(q: jax.Array, k: jax.Array, mask: jax.Array | None = None,
                           platform: str | None = None, *, causal: bool = False,
                           interpret: bool = False) -> str | None:
    """One line saying why the splash kernel cannot run these inputs, or None if it can.

    Args:
      q: [B, Tq, N, H]; k: [B, Tk, K, H] (arrays or ShapeDtypeStructs).
      mask: the caller's mask argument (splash takes none).
      platform: where it would run (default :func:`kernel_platform`).
      causal: whether the causal mask is asked for.
      interpret: the Pallas interpreter runs on any platform.
    """
    platform = kernel_platform() if platform is None else platform
    if platform != "tpu" and not interpret:
        return (f"attention kernel 'splash' needs a TPU (or interpret=True); the devices are "
                f"{platform}")
    if mask is not None:
        return "attention kernel 'splash' cannot take a mask (only causal or none)"
    dtypes = {jnp.dtype(q.dtype), jnp.dtype(k.dtype)}
    if not dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)}:
        return (f"attention kernel 'splash' needs float32 or bfloat16, got "
                f"{', '.join(sorted(str(d) for d in dtypes))}")
    t_q, t_k = q.shape[1], k.shape[1]
    if t_k % NUM_LANES:
        return f"attention kernel 'splash' needs T_k a multiple of {NUM_LANES}, got {t_k}"
    if t_q % NUM_SUBLANES:
        return f"attention kernel 'splash' needs T_q a multiple of {NUM_SUBLANES}, got {t_q}"
    if causal and t_q > t_k:
        return (f"attention kernel 'splash' needs T_q <= T_k when causal (rows seeing no key are "
                f"undefined in it), got {t_q} > {t_k}")
    return None


def _block(requested: int | None, t: int, choices: tuple[int, ...], multiple: int,
           name: str) -> int:
    if requested is None:
        return next(b for b in choices if t % b == 0)
    if requested < 1 or requested % multiple or t % requested:
        raise ValueError(f"attention kernel 'splash': {name}={requested} must be a multiple of "
                         f"{multiple} dividing {t}")
    return requested


def _make_kernel(heads: int, t_q: int, t_k: int, *, causal: bool, block_q: int, block_k: int,
                 interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    if causal:
        one = splash.CausalMask((t_q, t_k), offset=t_k - t_q)
    else:
        one = splash.FullMask((t_q, t_k))
    sizes = splash.BlockSizes(block_q=block_q, block_kv=block_k, block_kv_compute=block_k,
                              block_q_dkv=block_q, block_kv_dkv=block_k,
                              block_kv_dkv_compute=block_k, block_q_dq=block_q,
                              block_kv_dq=block_k)
    # The mask's block structure is computed in NumPy (and cached by the kernel's module).
    return splash.make_splash_mha(splash.MultiHeadMask([one] * heads), block_sizes=sizes,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


def auto_axes(mesh) -> tuple[str, ...]:
    """The axes of ``mesh`` a kernel may still ``shard_map`` over: all but those an enclosing
    ``shard_map`` has already made manual (inside it, each device holds its shard already)."""
    manual = set(getattr(mesh, "manual_axes", ()) or ())
    return tuple(a for a in mesh.axis_names if a not in manual)


def _axes(names: str | Sequence[str] | None, default: tuple[str, ...], mesh) -> tuple[str, ...]:
    if names is None:
        return ()
    names = (names,) if isinstance(names, str) else tuple(names)
    if names == default:  # the defaults name axes a mesh may not have (or has made manual)
        return tuple(a for a in names if a in auto_axes(mesh))
    unknown = [a for a in names if a not in mesh.axis_names]
    if unknown:
        raise ValueError(f"attention kernel 'splash': mesh axes {unknown} not in the mesh's axes "
                         f"{tuple(mesh.axis_names)}")
    return names


def _entry(names: tuple[str, ...]):
    return None if not names else names[0] if len(names) == 1 else names


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                     mask: jax.Array | None = None, scale: float | None = None,
                     interpret: bool = False, block_q: int | None = None,
                     block_k: int | None = None,
                     batch_axes: str | Sequence[str] | None = DEFAULT_BATCH_AXES,
                     head_axes: str | Sequence[str] | None = DEFAULT_HEAD_AXES,
                     mesh=None) -> jax.Array:
    """Splash attention; q [B,Tq,N,H], k/v [B,Tk,K,H] (N a multiple of K) -> [B,Tq,N,H].

    Args:
      causal: bottom-right aligned causal mask, as block sparsity.
      mask: must be None (raises ValueError otherwise; see :func:`splash_unusable_reason`).
      scale: score scale, default 1/sqrt(H) (applied to q in float32).
      interpret: run the kernel in the Pallas interpreter (any platform; slow).
      block_q, block_k: query and key tiles (default: the largest of 512, 256, ... dividing T;
        block_k a multiple of 128, block_q of 8).
      batch_axes, head_axes: mesh axes the batch and head dimensions are sharded over. With a
        mesh (``mesh`` or the context mesh of ``jax.set_mesh``) the kernel runs under
        ``jax.shard_map`` per (batch, head) shard; the defaults use those of
        ``("data", "fsdp")`` and ``("tensor",)`` that the mesh has. None: not sharded.
      mesh: the mesh (default: the context mesh; none means one device, no ``shard_map``).
    Raises:
      ValueError (one line): inputs the kernel cannot run, or a sharded dimension (batch, key/
      value heads) that does not divide over its mesh axes.
    """
    check_qkv(q, k, v)
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    has_mesh = mesh is not None and not mesh.empty
    reason = splash_unusable_reason(q, k, mask, kernel_platform(mesh if has_mesh else None),
                                    causal=causal, interpret=interpret)
    if reason:
        raise ValueError(reason)
    b, t_q, _, h = q.shape
    t_k, kv_heads = k.shape[1], k.shape[2]
    bq = _block(block_q, t_q, Q_BLOCKS, NUM_SUBLANES, "block_q")
    bk = _block(block_k, t_k, KV_BLOCKS, NUM_LANES, "block_k")
    scale = h ** -0.5 if scale is None else scale
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)

    def local(q, k, v):  # one shard: [b, Tq, n, H], [b, Tk, kv, H]
        kernel = _make_kernel(q.shape[2], t_q, t_k, causal=causal, block_q=bq, block_k=bk,
                              interpret=interpret)
        out = jax.vmap(kernel)(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
                               v.transpose(0, 2, 1, 3))
        return out.transpose(0, 2, 1, 3).astype(q.dtype)

    if not has_mesh:
        return local(q, k, v)
    batch = _axes(batch_axes, DEFAULT_BATCH_AXES, mesh)
    heads = _axes(head_axes, DEFAULT_HEAD_AXES, mesh)
    n_b = math.prod(mesh.shape[a] for a in batch)
    n_h = math.prod(mesh.shape[a] for a in heads)
    if b % n_b:
        raise ValueError(f"attention kernel 'splash': batch {b} does not divide over mesh axes "
                         f"{batch} ({n_b} shards)")
    if kv_heads % n_h:
        raise ValueError(f"attention kernel 'splash': key/value heads {kv_heads} do not divide "
                         f"over mesh axes {heads} ({n_h} shards)")
    spec = P(_entry(batch), None, _entry(heads), None)
    mapped = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                           check_vma=False)
    return mapped(q, k, v)


__all__ = ["DEFAULT_BATCH_AXES", "DEFAULT_HEAD_AXES", "kernel_platform", "splash_attention",
           "splash_unusable_reason"]
