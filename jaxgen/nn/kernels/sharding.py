"""Running an attention kernel per shard under a sharded ``jit``.

A hand-written kernel (a Pallas call, for one) is opaque to XLA's SPMD partitioner: given inputs
sharded over batch or heads it would gather them and compute everything on every device.
:func:`shard_attention` wraps a kernel in ``jax.shard_map`` so each device runs it on its own
batch/head shard, with no collective. Attention is independent across examples and heads, so
the result is exact. Heads may be sharded when the key/value head count divides evenly (each
device then holds whole GQA groups).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax.sharding import PartitionSpec as P

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _axes(names: str | Sequence[str] | None) -> tuple[str, ...]:
    if names is None:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _spec_entry(names: tuple[str, ...]):
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def _size(mesh, names: tuple[str, ...]) -> int:
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return size


def shard_attention(fn: AttentionFn, mesh: jax.sharding.Mesh | None = None, *,
                    batch_axes: str | Sequence[str] | None = "data",
                    head_axes: str | Sequence[str] | None = None) -> AttentionFn:
    """``fn(q, k, v) -> o`` (layout BTNH) computed per shard of batch and heads.

    Args:
      fn: an attention function of (q, k, v), e.g. a ``functools.partial`` of
        :func:`jaxgen.nn.kernels.attention` with the kernel and its options bound.
      mesh: the device mesh; None takes the mesh of the surrounding context
        (``jax.set_mesh``), and raises ValueError when there is none.
      batch_axes: mesh axis name(s) the batch dimension is sharded over (None: not sharded).
      head_axes: mesh axis name(s) the head dimension is sharded over (None: not sharded).
    Returns:
      A function of (q, k, v) with the same result as ``fn``; call it under ``jax.jit``. It
      raises ValueError (one line) when a sharded dimension does not divide evenly.
    """
    batch, heads = _axes(batch_axes), _axes(head_axes)
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            raise ValueError("shard_attention needs a mesh: pass mesh= or call it under "
                             "jax.set_mesh(mesh)")
    unknown = [a for a in batch + heads if a not in mesh.axis_names]
    if unknown:
        raise ValueError(f"mesh axes {unknown} not in the mesh's axes {mesh.axis_names}")
    spec = P(_spec_entry(batch), None, _spec_entry(heads), None)

    def run(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        n_b, n_h = _size(mesh, batch), _size(mesh, heads)
        if q.shape[0] % n_b:
            raise ValueError(f"batch {q.shape[0]} does not divide over mesh axes {batch} "
                             f"({n_b} devices)")
        if k.shape[2] % n_h:
            raise ValueError(f"key/value heads {k.shape[2]} do not divide over mesh axes "
                             f"{heads} ({n_h} devices)")
        mapped = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                               check_vma=False)
        return mapped(q, k, v)

    return run
