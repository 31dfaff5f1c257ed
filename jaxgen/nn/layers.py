"""Reusable Linen layers: Flax's own layers with logical axis names, and the few written here.

Every parameter carries logical axis names (:mod:`jaxgen.nn.partitioning`), so a model built
from these layers is sharded by rules. :func:`dense`, :func:`dense_general`, :func:`conv`,
:func:`embed` and :func:`norm` are Flax's ``nn.Dense``, ``nn.DenseGeneral``, ``nn.Conv``,
``nn.Embed``, ``nn.RMSNorm``/``nn.LayerNorm`` with the names attached (and the same initial
values as the bare layer: the names wrap the initializer). Layers keep parameters in
``param_dtype`` and compute in ``dtype``; normalisation statistics are float32.
Written here: :class:`GroupNorm` (a layout XLA:CPU runs 2-3x faster, see its docstring),
:class:`MLP`, the diffusion backbones' embeddings and :class:`ImageSelfAttention`.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import kernels
from jaxgen.nn.partitioning import constrain, with_axes

Initializer = Callable[..., jax.Array]
Dtype = Any
DType = Literal["float32", "bfloat16", "float16"]
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LECUN = nn.initializers.lecun_normal()
ZEROS = nn.initializers.zeros_init()
ONES = nn.initializers.ones_init()


def dtype_of(name: Any) -> Dtype:
    """"float32" / "bfloat16" / "float16" (or a jnp dtype) -> the jnp dtype; else ValueError."""
    if not isinstance(name, str):
        return jnp.dtype(name).type
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def dense(features: int, axes: tuple[Optional[str], Optional[str]], *,
          kernel_init: Initializer = LECUN, use_bias: bool = True, dtype: Any = "float32",
          param_dtype: Any = "float32", name: Optional[str] = None) -> nn.Dense:
    """``nn.Dense`` whose kernel [in, features] has logical ``axes`` (bias: ``axes[1]``)."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype_of(dtype),
                    param_dtype=dtype_of(param_dtype), kernel_init=with_axes(kernel_init, axes),
                    bias_init=with_axes(ZEROS, axes[1:]), name=name)


def dense_general(features: int | Sequence[int], axes: Sequence[Optional[str]], *,
                  axis: int | Sequence[int] = -1, kernel_init: Initializer = LECUN,
                  use_bias: bool = False, dtype: Any = "float32", param_dtype: Any = "float32",
                  name: Optional[str] = None, **kw: Any) -> nn.DenseGeneral:
    """``nn.DenseGeneral`` (kernel [in..., features...] with logical ``axes``, one per kernel
    dimension; the bias takes the feature axes). Its initializer sees the kernel flattened to
    [prod(in), prod(features)], so values equal those of an ``nn.Dense`` of that shape."""
    features = (features,) if isinstance(features, int) else tuple(features)
    n_in = 1 if isinstance(axis, int) else len(tuple(axis))
    return nn.DenseGeneral(features, axis=axis, use_bias=use_bias, dtype=dtype_of(dtype),
                           param_dtype=dtype_of(param_dtype),
                           kernel_init=with_axes(kernel_init, axes),
                           bias_init=with_axes(ZEROS, tuple(axes)[n_in:]), name=name, **kw)


CONV_AXES = (None, None, "conv_in", "conv_out")


def conv(features: int, kernel_size: tuple[int, int], *, strides: int | tuple = 1,
         padding: Any = "SAME", kernel_init: Initializer = LECUN, dtype: Any = "float32",
         param_dtype: Any = "float32", name: Optional[str] = None, **kw: Any) -> nn.Conv:
    """``nn.Conv`` whose kernel [kh, kw, C_in, C_out] is named (None, None, conv_in, conv_out)."""
    strides = (strides, strides) if isinstance(strides, int) else strides
    return nn.Conv(features, kernel_size, strides=strides, padding=padding,
                   dtype=dtype_of(dtype), param_dtype=dtype_of(param_dtype),
                   kernel_init=with_axes(kernel_init, CONV_AXES),
                   bias_init=with_axes(ZEROS, ("conv_out",)), name=name, **kw)


def embed(num: int, features: int, *, init: Initializer = nn.linear.default_embed_init,
          axes: tuple[str, str] = ("classes", "embed"), dtype: Any = "float32",
          param_dtype: Any = "float32", name: Optional[str] = None) -> nn.Embed:
    """``nn.Embed`` whose table [num, features] has logical ``axes``."""
    return nn.Embed(num, features, dtype=dtype_of(dtype), param_dtype=dtype_of(param_dtype),
                    embedding_init=with_axes(init, axes), name=name)


NORMS = ("rmsnorm", "layernorm")


def norm(kind: str, *, use_bias: bool = False, eps: Optional[float] = None,
         dtype: Any = "float32", param_dtype: Any = "float32",
         name: Optional[str] = None) -> nn.Module:
    """"rmsnorm": ``nn.RMSNorm`` (Zhang & Sennrich 2019, eps 1e-6); "layernorm":
    ``nn.LayerNorm`` (Ba et al. 2016, eps 1e-5, optionally without bias). Scale (and bias) [D]
    named ("norm",); float32 statistics."""
    kw = dict(dtype=dtype_of(dtype), param_dtype=dtype_of(param_dtype), name=name,
              scale_init=with_axes(ONES, ("norm",)))
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-6 if eps is None else eps, **kw)
    if kind == "layernorm":
        return nn.LayerNorm(epsilon=1e-5 if eps is None else eps, use_bias=use_bias,
                            use_fast_variance=False, bias_init=with_axes(ZEROS, ("norm",)), **kw)
    raise ValueError(f"unknown norm {kind!r}; use one of {', '.join(NORMS)}")


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) of x [B, ..., C] over the spatial axes and the C / G
    channels of each group; float32 statistics and float32 output. The parameters (``scale``,
    ``bias``, [C]) and the result (to float32 rounding: both use E[x^2] - E[x]^2) are those of
    ``flax.linen.GroupNorm``.

    Laid out for XLA:CPU: the spatial mean of x and x^2 per (example, channel) is one reduction
    over the major axes, vectorised across channels; groups are then averaged on the small
    [B, C] statistics and the whole norm is applied as ``x * a + b`` with per-(example, channel)
    ``a`` and ``b`` (one fused pass). 2-3x faster than flax's [B, H, W, G, C/G] reduction at
    the U-Net's shapes on a 2-core CPU, including the SiLU that follows
    (``python -m benchmarks.unet_parts``). On accelerators it is two reductions and one fused
    multiply-add, as ``nn.GroupNorm``'s, so nothing there is worse for it.
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    param_dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, c, g = x.shape[0], x.shape[-1], self.num_groups
        if x.ndim < 2 or c % g:
            raise ValueError(f"GroupNorm with {g} groups needs [B, ..., C] with C divisible by "
                             f"{g}, got shape {x.shape}")
        pdt = dtype_of(self.param_dtype)
        scale = self.param("scale", with_axes(ONES, ("norm",)), (c,), pdt)
        bias = self.param("bias", with_axes(ZEROS, ("norm",)), (c,), pdt)
        xf = x.astype(jnp.float32)
        axes = tuple(range(1, x.ndim - 1))
        mean = jnp.mean(xf, axis=axes).reshape(b, g, c // g).mean(-1)  # [B, G]
        mean_sq = jnp.mean(xf * xf, axis=axes).reshape(b, g, c // g).mean(-1)
        inv = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + self.epsilon)
        a = jnp.repeat(inv, c // g, axis=1) * scale.astype(jnp.float32)  # [B, C]
        shift = bias.astype(jnp.float32) - jnp.repeat(mean, c // g, axis=1) * a
        bshape = (b,) + (1,) * (x.ndim - 2) + (c,)
        return xf * a.reshape(bshape) + shift.reshape(bshape)


class MLP(nn.Module):
    """Position-wise feed-forward block, [..., D] -> [..., D].

    ``kind="swiglu"``: ``W_out (silu(x W_gate) * (x W_up))`` (Shazeer 2020, GLU variants), gate
    and up as one kernel [D, 2, F] (one matmul; the split is along its own small axis, so
    sharding F over "tensor" never crosses a shard). ``kind="geglu"``: the same with
    ``(x W_up) * gelu(x W_gate)`` (exact gelu), diffusers' ``GEGLU`` feed-forward of its
    transformer blocks, whose fused [D, 2F] projection holds the up half first.
    ``kind="gelu"``: ``W_out gelu(x W_in)`` (Hendrycks & Gimpel 2016), as in GPT-2.
    """

    hidden: int
    kind: str = "swiglu"
    use_bias: bool = False
    kernel_init: Initializer = nn.initializers.normal(0.02)
    out_init: Initializer = nn.initializers.normal(0.02)
    dtype: Any = "float32"
    param_dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.kind == "swiglu":
            gate_up = dense_general((2, self.hidden), ("embed", None, "mlp"), name="wi",
                                    kernel_init=self.kernel_init, **kw)(x)
            h = nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
        elif self.kind == "geglu":
            up_gate = dense_general((2, self.hidden), ("embed", None, "mlp"), name="wi",
                                    kernel_init=self.kernel_init, **kw)(x)
            h = up_gate[..., 0, :] * nn.gelu(up_gate[..., 1, :], approximate=False)
        elif self.kind == "gelu":
            h = nn.gelu(dense_general(self.hidden, ("embed", "mlp"), name="wi",
                                      kernel_init=self.kernel_init, **kw)(x), approximate=True)
        else:
            raise ValueError(f"unknown MLP kind {self.kind!r}; use 'swiglu', 'geglu' or 'gelu'")
        h = constrain(h, ("activation_batch",) + ("activation_length",) * (h.ndim - 2)
                      + ("activation_mlp",))
        return dense_general(d, ("mlp", "embed"), kernel_init=self.out_init, name="wo", **kw)(h)


# --- Pieces shared by the diffusion backbones (jaxgen/nn/unet.py, jaxgen/nn/dit.py) ---------------

def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of noise levels t [B] (a timestep, or EDM's c_noise) -> [B, dim].

    ``[cos(t f_0), ..., cos(t f_{h-1}), sin(t f_0), ..., sin(t f_{h-1})]`` with ``h = dim // 2`` and
    ``f_i = max_period^(-i / h)``: the embedding of ADM (Dhariwal & Nichol 2021) and DiT, itself the
    Transformer position code (Vaswani et al. 2017) used for timesteps by DDPM (Ho et al. 2020);
    diffusers' ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``. An odd ``dim`` gets a
    zero last column. Always float32.
    """
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def class_labels(labels: jax.Array | None, batch: int, num_classes: int) -> jax.Array | None:
    """Labels [B] int32 for the label table: None -> all ``num_classes`` (the null label).

    Returns None for an unconditional model (``num_classes == 0``), where labels must be None.
    """
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels were given to an unconditional model (num_classes=0)")
        return None
    if labels is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    return jnp.asarray(labels, jnp.int32)


class TimestepMLP(nn.Module):
    """t [B] -> [B, features]: ``Dense(SiLU(Dense(timestep_embedding(t, freq_dim))))``.

    The time-embedding MLP of DDPM/ADM (freq_dim = C0, features = 4 C0; diffusers'
    ``TimestepEmbedding``) and DiT (freq_dim = 256, features = hidden).
    """

    features: int
    freq_dim: int
    kernel_init: Initializer = LECUN
    dtype: Any = "float32"
    param_dtype: Any = "float32"

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        kw = dict(kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.features, (None, "embed"), name="linear_1", **kw)(
            timestep_embedding(t, self.freq_dim))
        return dense(self.features, ("mlp", "embed"), name="linear_2", **kw)(nn.silu(h))


class ImageSelfAttention(nn.Module):
    """Bidirectional multi-head self-attention over tokens, x [B, T, D] -> [B, T, D].

    A biased q/k/v projection with kernel [D, 3, heads, head_dim] (the layout of timm/DiT's
    fused [D, 3D] one, split on its own axis so sharding heads never crosses a shard), the
    attention ``softmax(q k^T / sqrt(head_dim)) v`` by :func:`jaxgen.nn.kernels.attention`
    (layout BTNH; ``kernel`` names the implementation or ``auto``) and a biased output
    projection [heads, head_dim, D], whose initializer is ``out_init`` (zeros in ADM/DDPM-style
    blocks so they start as the identity). Used by the UNet's spatial attention (tokens = the
    H*W pixels) and by DiT blocks.
    """

    num_heads: int
    kernel: str = "auto"
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    out_init: Initializer = nn.initializers.xavier_uniform()
    dtype: Any = "float32"
    param_dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        n = self.num_heads
        if d % n:
            raise ValueError(f"attention width {d} is not divisible by num_heads={n}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True)
        qkv = dense_general((3, n, d // n), ("embed", None, "heads", "kv"),
                            kernel_init=self.kernel_init, name="qkv", **kw)(x)
        o = kernels.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=False,
                              kernel=self.kernel)
        return dense_general(d, ("heads", "kv", "embed"), axis=(-2, -1),
                             kernel_init=self.out_init, name="out", **kw)(o)


class Attention(nn.Module):
    """Multi-head attention of tokens x [B, T, D] to a context [B, S, Dc] (x itself when
    ``context`` is None) -> [B, T, D]: separate q, k, v projections [D or Dc, heads, D/heads]
    (biased only with ``use_bias``; diffusers' ``Attention(bias=False)``), the attention by
    :func:`jaxgen.nn.kernels.attention` and a biased output projection [heads, D/heads, D]
    (initialised by ``out_init``). With a context this is the cross-attention through which
    latent diffusion is conditioned (Rombach et al. 2022, Sec. 3.3); its keys and values are
    the context's, so S is free (one token per class label, 77 per CLIP prompt)."""

    num_heads: int
    kernel: str = "auto"
    use_bias: bool = False
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    out_init: Initializer = nn.initializers.xavier_uniform()
    dtype: Any = "float32"
    param_dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        b, t, d = x.shape
        n = self.num_heads
        if d % n:
            raise ValueError(f"attention width {d} is not divisible by num_heads={n}")
        source = x if context is None else context.astype(x.dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        proj = {name: dense_general((n, d // n), ("embed", "heads", "kv"), name=name,
                                    use_bias=self.use_bias, **kw)
                for name in ("to_q", "to_k", "to_v")}
        o = kernels.attention(proj["to_q"](x), proj["to_k"](source), proj["to_v"](source),
                              causal=False, kernel=self.kernel)
        return dense_general(d, ("heads", "kv", "embed"), axis=(-2, -1), name="to_out",
                             use_bias=True, **{**kw, "kernel_init": self.out_init})(o)


def label_context(labels: jax.Array, num_classes: int, tokens: int, width: int,
                  dtype: Any = "float32", param_dtype: Any = "float32") -> jax.Array:
    """Class labels [B] (``num_classes`` = the null label) -> a learned context [B, tokens,
    width] for cross-attention: LDM's class embedder (Rombach et al. 2022, App. E, class-
    conditional ImageNet), one table row of ``tokens * width`` per label, the null label's row
    being the unconditional context of classifier-free guidance. Call inside a compact module
    (the table is the caller's ``context_embed`` parameter)."""
    table = embed(num_classes + 1, tokens * width, name="context_embed",
                  init=nn.initializers.normal(1.0), dtype=dtype, param_dtype=param_dtype)
    return table(labels).reshape(labels.shape[0], tokens, width)


def cross_attention_context(cfg: Any, labels: jax.Array | None,
                            context: jax.Array | None) -> jax.Array:
    """The context a cross-attention backbone attends to: ``context`` [B, S, Dc] as given, else
    the labels' learned context (the null label's row for unconditional calls); called inside
    the backbone's compact ``__call__``. ``cfg`` has ``num_classes``, ``context_tokens``,
    ``cross_attention_dim``, ``dtype`` and ``param_dtype``."""
    if context is not None:
        if context.ndim != 3 or context.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(f"context must be [B, S, {cfg.cross_attention_dim}], got "
                             f"{tuple(context.shape)}")
        return context.astype(dtype_of(cfg.dtype))
    if labels is None:
        raise ValueError("a cross-attention model needs class labels (num_classes > 0) or a "
                         "context")
    return label_context(labels, cfg.num_classes, cfg.context_tokens, cfg.cross_attention_dim,
                         cfg.dtype, cfg.param_dtype)


REMAT = ("none", "full", "dots")


def remat_policy(name: str):
    """``jax.checkpoint`` policy of a ``remat`` setting (Chen et al. 2016): "full" keeps only
    a block's inputs and recomputes the rest in the backward pass; "dots" also keeps the
    matmul/conv outputs without batch dimensions (recomputing the cheap element-wise work)."""
    if name not in ("full", "dots"):
        raise ValueError(f"remat must be one of {', '.join(REMAT)}, got {name!r}")
    return {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


def rematted(module: type, cfg: Any, static: tuple[int, ...] = (), prevent_cse: bool = True
             ) -> type:
    """``module`` under ``nn.remat`` with ``cfg.remat``'s policy (``static``: the positional
    arguments, self = 0, that are Python values; ``prevent_cse=False`` inside ``nn.scan``,
    which already keeps XLA from merging the recomputation away), or ``module`` itself for
    "none"."""
    if cfg.remat == "none":
        return module
    return nn.remat(module, policy=remat_policy(cfg.remat), static_argnums=static,
                    prevent_cse=prevent_cse)
