"""Reusable Linen layers: linear maps with logical-axis sharding, norms and MLPs.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) so a model built
from these layers can be sharded by mapping logical names to mesh axes, e.g. "embed" -> "fsdp",
"mlp"/"heads"/"vocab" -> "tensor" (see :mod:`jaxgen.models.lm.model`). Layers keep parameters in
``param_dtype`` and compute in ``dtype``; norms always compute in float32.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]
Dtype = Any


def dtype_of(name: str) -> Dtype:
    """"float32" / "bfloat16" / "float16" -> the jnp dtype; anything else is a ValueError."""
    table = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(table)}")
    return table[name]


class Linear(nn.Module):
    """``y = x @ W (+ b)`` on the last axis; W is [in, features] with logical ``axes``.

    Attributes:
      features: output width.
      axes: logical names of (input axis, output axis) of the kernel, e.g. ("embed", "mlp").
      use_bias: add a bias (logical axis ``axes[1]``), zero-initialised.
      kernel_init: initializer of the unboxed kernel.
    """

    features: int
    axes: tuple[str, str]
    use_bias: bool = False
    kernel_init: Initializer = nn.initializers.normal(0.02)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                            (x.shape[-1], self.features), self.param_dtype)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): ``x / rms(x) * scale``, no centring."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
    """Layer normalisation (Ba et al. 2016), optionally without bias; float32 statistics."""

    eps: float = 1e-5
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (d,), self.param_dtype)
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                              (d,), self.param_dtype)
            y = y + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def make_norm(kind: str, *, use_bias: bool = False, dtype: Dtype = jnp.float32,
              param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
    """"rmsnorm" -> :class:`RMSNorm`; "layernorm" -> :class:`LayerNorm`."""
    if kind == "rmsnorm":
        return RMSNorm(dtype=dtype, param_dtype=param_dtype, name=name)
    if kind == "layernorm":
        return LayerNorm(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)
    raise ValueError(f"unknown norm {kind!r}; use 'rmsnorm' or 'layernorm'")


class MLP(nn.Module):
    """Position-wise feed-forward block, [..., D] -> [..., D].

    ``kind="swiglu"``: ``W_out (silu(x W_gate) * (x W_up))`` (Shazeer 2020, GLU variants), the gate
    and up projections fused into one [D, 2F] matmul. ``kind="gelu"``: ``W_out gelu(x W_in)``
    (Hendrycks & Gimpel 2016), as in GPT-2.
    """

    hidden: int
    kind: str = "swiglu"
    use_bias: bool = False
    out_init: Initializer = nn.initializers.normal(0.02)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.kind == "swiglu":
            gate_up = Linear(2 * self.hidden, ("embed", "mlp"), name="wi", **kw)(x)
            gate, up = jnp.split(gate_up, 2, axis=-1)
            h = nn.silu(gate) * up
        elif self.kind == "gelu":
            h = nn.gelu(Linear(self.hidden, ("embed", "mlp"), name="wi", **kw)(x), approximate=True)
        else:
            raise ValueError(f"unknown MLP kind {self.kind!r}; use 'swiglu' or 'gelu'")
        return Linear(d, ("mlp", "embed"), kernel_init=self.out_init, name="wo", **kw)(h)
