"""Logical axis names and the rules that map them onto the ("data", "fsdp", "tensor") mesh.

Every parameter of every jaxgen model carries logical axis names (Flax's
``nn.with_logical_partitioning``), so any family is sharded by the same rules instead of by a
shape heuristic: "embed" (a model width that parameters are sharded over for FSDP), "mlp",
"heads", "kv_heads", "vocab" (split over "tensor" for tensor parallelism), "kv" (a head's own
width), "conv_in"/"conv_out" (the input and output channels of a convolution kernel), "norm"
(the scale and bias of a normalisation), "layers" (the stacked axis of scanned layers), and
``None`` for axes that are never split (a convolution's spatial taps, a fused projection's
small "which part" axis). :func:`mesh_specs` resolves them against an actual mesh: a mesh axis
that does not divide a dimension is dropped for that dimension, so any mesh shape works.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

# logical axis name -> mesh axis (or axes; None: replicated)
RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("classes", None),
    # activations (sharding constraints at layer boundaries)
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def with_axes(init: Any, axes: Sequence[Optional[str]]) -> Any:
    """``init`` with logical axis names attached (``nn.with_logical_partitioning``)."""
    return nn.with_logical_partitioning(init, tuple(axes))


def _fit(spec: P, shape: tuple[int, ...], sizes: dict[str, int]) -> P:
    """``spec`` with every mesh axis that does not divide its dimension (or that an earlier
    dimension already uses) dropped."""
    used: set[str] = set()
    out = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axis is None else ((axis,) if isinstance(axis, str) else tuple(axis))
        names = tuple(a for a in names if a in sizes and a not in used)
        while names and dim % math.prod(sizes[a] for a in names):
            names = names[:-1]
        used.update(names)
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return P(*out)


def mesh_specs(boxed_params: Any, mesh: jax.sharding.Mesh,
               rules: Sequence[tuple[str, Any]] = RULES) -> Any:
    """PartitionSpecs (mesh axes) of the unboxed parameters of ``boxed_params`` (the result of
    ``init``, possibly under ``jax.eval_shape``), from their logical axes and ``rules``.

    A leaf without logical names gets ``P()`` (replicated).
    """
    logical = nn.get_partition_spec(boxed_params)
    specs = nn.logical_to_mesh(logical, rules)
    shapes = nn.meta.unbox(boxed_params)
    sizes = dict(mesh.shape)
    return jax.tree.map(lambda s, x: _fit(s if isinstance(s, P) else P(), tuple(x.shape), sizes),
                        specs, shapes, is_leaf=lambda x: isinstance(x, P) or x is None)


def rules_without(axis: str, rules: Sequence[tuple[str, Any]] = RULES
                  ) -> tuple[tuple[str, Any], ...]:
    """``rules`` with mesh axis ``axis`` taken out of every target (so what it sharded is
    replicated over it), e.g. the parameter layout of decoding without FSDP."""
    def drop(target: Any) -> Any:
        if target is None or isinstance(target, str):
            return None if target == axis else target
        kept = tuple(a for a in target if a != axis)
        return kept[0] if len(kept) == 1 else (kept or None)
    return tuple((name, drop(target)) for name, target in rules)


def logical_spec(axes: Sequence[Optional[str]], rules: Sequence[tuple[str, Any]] = RULES) -> P:
    """The mesh PartitionSpec of logical ``axes`` under ``rules`` (unknown names: None)."""
    table = dict(rules)
    return P(*(table.get(a) if a is not None else None for a in axes))


BATCH = ("activation_batch",)  # the leading axis of an activation


def constrain(x: jax.Array, axes: Sequence[Optional[str]]) -> jax.Array:
    """``x`` constrained to the sharding its logical ``axes`` name (one per dimension, e.g.
    ("activation_batch", "activation_length", "activation_embed")), on the mesh the program is
    traced under (``jax.set_mesh``); a mesh axis that does not divide a dimension is left out.
    Without a mesh, ``x`` unchanged. Layers call it at their boundaries, so activations stay
    sharded over the batch (and heads over "tensor") whatever sharding the parameters have."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(axes) + (None,) * (x.ndim - len(tuple(axes)))
    spec = _fit(logical_spec(axes), tuple(x.shape), dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def unboxed_without_axes(boxed_params: Any) -> list[str]:
    """Key paths of parameters that carry no logical axis names (for tests: there should be
    none in a jaxgen model)."""
    leaves = jax.tree_util.tree_flatten_with_path(
        boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    return [jax.tree_util.keystr(p) for p, x in leaves if not isinstance(x, nn.Partitioned)]
