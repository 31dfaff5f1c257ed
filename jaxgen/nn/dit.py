"""Diffusion Transformer (DiT, Peebles & Xie 2023): x [B,H,W,C], t [B], labels [B] -> [B,H,W,C_out].

- Patchify: a p x p stride-p conv to ``hidden`` channels, giving (H/p)(W/p) tokens, plus a fixed
  2-D sin-cos position embedding (MAE / DiT's ``get_2d_sincos_pos_embed``; not a parameter).
- Conditioning vector c = TimestepMLP(t) (sinusoids of width 256 -> hidden -> hidden) + a label
  embedding of ``num_classes + 1`` rows (row ``num_classes`` is the null label of
  classifier-free guidance, Ho & Salimans 2022) for class-conditional models.
- ``depth`` blocks with adaLN-Zero: ``Dense(SiLU(c))`` (zero-initialised) gives shift, scale and
  gate for the attention and the MLP branch; ``x += gate * branch(LN(x) * (1 + scale) + shift)``.
  At init every gate is 0, so every block is the identity.
- Final layer: adaLN (shift, scale from c, zero-initialised), a zero-initialised linear to
  ``p * p * C_out``, unpatchify. The model outputs exactly 0 at init.

Initialisation follows DiT's ``initialize_weights``: Xavier-uniform linears (the patch conv as a
[p*p*C, hidden] matrix), normal(0.02) for the timestep MLP and the label table, zeros for every
adaLN modulation and the final linear. Parameters carry logical axis names
(:mod:`jaxgen.nn.partitioning`) and live in ``param_dtype``; compute is in ``dtype``; LayerNorm
statistics, the final layer and the output are float32.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.kernels import KernelName
from jaxgen.nn.partitioning import constrain
from jaxgen.nn.layers import (
    REMAT,
    Attention,
    DType,
    ImageSelfAttention,
    TimestepMLP,
    class_labels,
    conv,
    cross_attention_context,
    dense,
    dtype_of,
    embed,
    rematted,
)

XAVIER = nn.initializers.xavier_uniform()
ACT = ("activation_batch", "activation_length", "activation_embed")
ZEROS = nn.initializers.zeros
# the patch conv kernel [p, p, C, hidden] initialised as one [p*p*C, hidden] matrix, as in DiT
PATCH_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2),
                                              out_axis=-1)


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """A DiT denoiser; the defaults are DiT-S/2 (hidden 384, depth 12, 6 heads, patch 2).

    Attributes:
      patch_size: p; H and W must be multiples of p.
      hidden: token width (a multiple of 4 for the 2-D sin-cos embedding, and of num_heads).
      depth: number of DiT blocks. num_heads: attention heads. mlp_ratio: MLP width / hidden.
      num_classes: 0 for an unconditional model, else the number of class labels.
      out_channels: output channels; 0 = the input's channels (doubled with ``learn_sigma``).
      learn_sigma: also predict the variance interpolation (ADM / DiT): output 2 C channels.
      freq_dim: width of the timestep sinusoids.
      attention_kernel: the kernel of :func:`jaxgen.nn.kernels.attention`.
      cross_attention_dim: 0: labels join the conditioning vector c (DiT). > 0: each block
        also attends to a context [B, S, cross_attention_dim] after its self-attention
        (``x += cross_attn(LN(x), context)``, PixArt-alpha, Chen et al. 2023), and labels
        condition only through their learned context of ``context_tokens`` tokens.
      context_tokens: tokens of the learned label context.
      scan_layers: stack the blocks' parameters (a leading "layers" axis) and run them with
        ``nn.scan``: compile time stays flat in depth.
      remat: rematerialise each block in the backward pass (none, full or dots,
        :func:`jaxgen.nn.layers.remat_policy`).
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    patch_size: int = 2
    hidden: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0
    out_channels: int = 0
    learn_sigma: bool = False
    freq_dim: int = 256
    attention_kernel: KernelName = "auto"
    cross_attention_dim: int = 0
    context_tokens: int = 1
    scan_layers: bool = False
    remat: Literal["none", "full", "dots"] = "none"
    dtype: DType = "float32"
    param_dtype: DType = "float32"

    def __post_init__(self):
        if self.remat not in REMAT:
            raise ValueError(f"remat must be one of {', '.join(REMAT)}, got {self.remat!r}")
        if self.cross_attention_dim < 0 or self.context_tokens < 1:
            raise ValueError("cross_attention_dim must be >= 0 and context_tokens >= 1")
        if self.hidden % 4 or self.hidden % self.num_heads:
            raise ValueError(f"DiT hidden={self.hidden} must be a multiple of 4 and of "
                             f"num_heads={self.num_heads}")
        if self.patch_size < 1 or self.depth < 0:
            raise ValueError(f"bad DiT patch_size={self.patch_size} or depth={self.depth}")

    def output_channels(self, in_channels: int) -> int:
        c = self.out_channels or in_channels
        return 2 * c if self.learn_sigma else c


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin(pos w_0..w_{d/2-1}), cos(...)] with w_i = 10000^(-2i/dim): pos [M] -> [M, dim]."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Fixed 2-D position embedding, [grid_h * grid_w, dim] float32, tokens in row-major order:
    the first half encodes the column, the second the row (DiT/MAE ``get_2d_sincos_pos_embed``)."""
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    return emb.astype(np.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: ``x * (1 + scale) + shift``, x [B, T, D], shift/scale [B, D]."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm without affine parameters (DiT's ``elementwise_affine=False``), float32 out:
    Flax's ``nn.LayerNorm`` with no scale and no bias (so no parameters)."""
    return nn.LayerNorm(epsilon=eps, use_scale=False, use_bias=False, use_fast_variance=False,
                        dtype=jnp.float32).apply({}, x)


class DiTBlock(nn.Module):
    """One adaLN-Zero DiT block, x [B, T, D], c [B, D] -> [B, T, D] (``scanned``: the
    ``(x, None)`` carry and output ``nn.scan`` expects)."""

    cfg: DiTConfig
    scanned: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array, context: jax.Array | None = None
                 ) -> jax.Array:
        cfg, d = self.cfg, self.cfg.hidden
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        dt = dtype_of(cfg.dtype)
        mod = dense(6 * d, ("embed", "mlp"), kernel_init=ZEROS, name="adaLN_modulation",
                    **kw)(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        h = modulate(layer_norm(x), shift_msa, scale_msa).astype(dt)
        h = ImageSelfAttention(cfg.num_heads, kernel=cfg.attention_kernel, kernel_init=XAVIER,
                               out_init=XAVIER, name="attn", **kw)(h)
        x = x + gate_msa[:, None, :] * h
        if context is not None:  # PixArt-alpha: cross-attention, no modulation, zero out init
            x = x + Attention(cfg.num_heads, kernel=cfg.attention_kernel, use_bias=True,
                              kernel_init=XAVIER, out_init=ZEROS, name="cross_attn",
                              **kw)(layer_norm(x).astype(dt), context)
        h = modulate(layer_norm(x), shift_mlp, scale_mlp).astype(dt)
        h = dense(int(d * cfg.mlp_ratio), ("embed", "mlp"), kernel_init=XAVIER, name="fc1",
                  **kw)(h)
        h = dense(d, ("mlp", "embed"), kernel_init=XAVIER, name="fc2",
                  **kw)(nn.gelu(h, approximate=True))
        x = constrain(x + gate_mlp[:, None, :] * h, ACT)
        return (x, None) if self.scanned else x


class DiT(nn.Module):
    """The DiT denoiser (see the module docstring).

    ``__call__(x [B, H, W, C] float, t [B] float (timestep index or EDM's c_noise; a scalar is
    broadcast), labels [B] int32 or None (None = the null label), train, context [B, S, Dc] or
    None) -> [B, H, W, C_out]`` float32 (``context``: see ``cross_attention_dim``). ``train`` is
    accepted for interface parity with :class:`jaxgen.nn.unet.UNet` (DiT uses no dropout). Raises
    ValueError when H or W is not a multiple of the patch size,
    or when labels are given to an unconditional model.
    """

    config: DiTConfig

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
                 train: bool = False, context: jax.Array | None = None) -> jax.Array:
        del train
        cfg, p = self.config, self.config.patch_size
        b, height, width, c_in = x.shape
        if height % p or width % p:
            raise ValueError(f"DiT patch size {p} does not divide the image size {height}x{width}")
        labels = class_labels(labels, b, cfg.num_classes)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        gh, gw = height // p, width // p

        h = conv(cfg.hidden, (p, p), strides=(p, p), padding="VALID", kernel_init=PATCH_INIT,
                 name="x_embedder", **kw)(x.astype(dtype_of(cfg.dtype)))
        pos = jnp.asarray(sincos_2d(cfg.hidden, gh, gw), dtype_of(cfg.dtype))
        h = h.reshape(b, gh * gw, cfg.hidden) + pos

        c = TimestepMLP(cfg.hidden, cfg.freq_dim, kernel_init=nn.initializers.normal(0.02),
                        name="t_embedder", **kw)(t)
        if cfg.cross_attention_dim:
            context = cross_attention_context(cfg, labels, context)
        elif labels is not None:
            c = c + embed(cfg.num_classes + 1, cfg.hidden, name="y_embedder",
                          init=nn.initializers.normal(0.02), **kw)(labels)

        if cfg.scan_layers:
            blocks = nn.scan(rematted(DiTBlock, cfg, prevent_cse=False),
                             variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=(nn.broadcast, nn.broadcast), length=cfg.depth,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            h, _ = blocks(cfg, True, name="blocks")(h, c, context)
        else:
            for i in range(cfg.depth):
                h = rematted(DiTBlock, cfg)(cfg, name=f"block{i}")(h, c, context)

        # final layer (float32): adaLN then a zero-initialised linear to p*p*C_out per token
        f32 = dict(dtype="float32", param_dtype=cfg.param_dtype)
        shift, scale = jnp.split(dense(2 * cfg.hidden, ("embed", "mlp"), kernel_init=ZEROS,
                                       name="final_adaLN_modulation", **f32)(nn.silu(c)), 2, -1)
        c_out = cfg.output_channels(c_in)
        h = dense(p * p * c_out, ("embed", None), kernel_init=ZEROS, name="final_linear",
                  **f32)(modulate(layer_norm(h), shift, scale))
        return unpatchify(h, gh, gw, p, c_out)


def unpatchify(tokens: jax.Array, grid_h: int, grid_w: int, p: int, channels: int) -> jax.Array:
    """[B, gh*gw, p*p*C] (per token: row, column, channel) -> [B, gh*p, gw*p, C] float32."""
    b = tokens.shape[0]
    x = tokens.reshape(b, grid_h, grid_w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, grid_h * p, grid_w * p, channels).astype(jnp.float32)


def dit_param_count(cfg: DiTConfig, image_shape: tuple[int, int, int]) -> int:
    """Number of parameters of ``DiT(cfg)`` for images [H, W, C] (shapes only; no compute)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    labels = None if cfg.num_classes == 0 else jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = jax.eval_shape(lambda x, t, y: DiT(cfg).init(jax.random.key(0), x, t, y),
                            x, t, labels)
    return sum(int(leaf.size) for leaf in jax.tree.leaves(shapes))
