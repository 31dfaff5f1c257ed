"""The U-Net denoiser of DDPM / ADM / DDPM++: x [B, H, W, C], t [B], labels [B] -> [B, H, W, C_out].

Architecture (Ho et al. 2020; Dhariwal & Nichol 2021, "ADM"; Song et al. 2021, "DDPM++"), laid
out exactly like diffusers' ``UNet2DModel`` so the two can be compared shape for shape:

- ``time_embed``: sinusoidal embedding of t (dim C0) -> Dense(4 C0) -> SiLU -> Dense(4 C0); plus,
  for class-conditional models, a ``label_embed`` table of ``num_classes + 1`` rows (row
  ``num_classes`` is the null label of classifier-free guidance, Ho & Salimans 2022).
- ``conv_in`` 3x3 to C0; then per level i (resolution H / 2^i, width C_i) ``layers_per_block``
  residual blocks (each followed by self-attention where ``attention_levels[i]``) and, except at
  the last level, a stride-2 3x3 conv (or an ADM-style down-resampling resblock).
- middle: resblock, self-attention, resblock at the lowest resolution.
- per level, from the lowest: ``layers_per_block + 1`` resblocks, each on the concatenation of the
  running features and one skip (every down-path output, ``conv_in``'s included, is used once),
  with attention where the down path had it, then nearest-neighbour 2x upsampling + 3x3 conv
  except at level 0.
- ``norm_out`` (GroupNorm) -> SiLU -> ``conv_out`` 3x3 to C_out.

With ``cross_attention_dim`` > 0 the layout is diffusers' ``UNet2DConditionModel`` (Stable
Diffusion's, Rombach et al. 2022): every attention block is a :class:`SpatialTransformer`
(``transformer_layers`` blocks of self-attention, cross-attention to a context [B, S, Dc] and a
GEGLU feed-forward), and labels condition through a learned context instead of the time
embedding; its weights import (jaxgen.hub.diffusers) and agree to 1e-4. Sizes that are not a
multiple of ``2^(levels-1)`` work as diffusers' ``forward_upsample_size``: 7 -> 4 -> 7.

Residual block (ADM): GroupNorm -> SiLU -> conv3x3, add Dense(SiLU(emb)) (or, with
``scale_shift``, ``GroupNorm(h) * (1 + scale) + shift`` as ADM's use_scale_shift_norm) ->
GroupNorm -> SiLU -> dropout -> conv3x3, plus a 1x1-projected skip when the width changes.
Attention block: GroupNorm, tokens [B, H*W, N, C/N] through :func:`jaxgen.nn.kernels.attention`,
output projection, residual. Heads: ``C // head_dim`` with ``head_dim = 8`` by default, which is
what diffusers' ``UNet2DModel(attention_head_dim=8)`` means (heads = channels // 8, dim 8 each);
set ``num_heads`` instead for ADM's fixed head count. With ``zero_init=False`` and a diffusers
``UNet2DModel``'s weights copied in, the outputs agree to 2e-4 (tests/test_backbones.py).

Parameter names by level: ``down{i}_res{j}``, ``down{i}_attn{j}``, ``down{i}_downsample``,
``mid_res0``, ``mid_attn``, ``mid_res1``, ``up{i}_res{j}``, ``up{i}_attn{j}``, ``up{i}_upsample``
(i = resolution level, 0 = full resolution). Parameters carry logical axis names
(:mod:`jaxgen.nn.partitioning`: convolutions (None, None, conv_in, conv_out), attention
(embed, 3, heads, kv)) and live in ``param_dtype``; compute is in ``dtype``; GroupNorm
statistics, the embedding sinusoids and the final conv and output are float32.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.kernels import KernelName
from jaxgen.nn.partitioning import BATCH, constrain
from jaxgen.nn.layers import (
    MLP,
    REMAT,
    Attention,
    DType,
    GroupNorm,
    ImageSelfAttention,
    TimestepMLP,
    class_labels,
    conv,
    dense,
    cross_attention_context,
    dtype_of,
    embed,
    norm,
    rematted,
)

# DDPM's / score_sde's default_init: variance scaling 1.0, fan_avg, uniform.
DEFAULT_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
ZEROS = nn.initializers.zeros


def group_count(channels: int, groups: int) -> int:
    """The largest g <= ``groups`` that divides ``channels`` (32 for 64 channels, 24 for 48)."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """A U-Net denoiser. The defaults are diffusers' ``UNet2DModel(block_out_channels=(64, 128,
    128), layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D",
    "AttnDownBlock2D"))``, except ``zero_init`` (diffusers initialises no layer to zero).

    Attributes:
      block_channels: width C_i of each resolution level.
      layers_per_block: resblocks per level on the way down (one more per level on the way up).
      attention_levels: per level, whether its resblocks are followed by self-attention.
      mid_attention: self-attention between the two middle resblocks.
      head_dim: attention head width (heads = C // head_dim); used when ``num_heads == 0``.
      num_heads: a fixed number of heads at every attention block (head width C // num_heads).
      dropout: dropout rate in each resblock (before its second conv), active when ``train``.
      norm_groups: GroupNorm groups, reduced per layer to the largest count dividing its width.
      norm_eps: GroupNorm epsilon.
      num_classes: 0 for an unconditional model, else the number of class labels (a family
        sets it from the data).
      out_channels: output channels; 0 = the input's channels.
      time_embed_dim: width of the time/label embedding; 0 = 4 * block_channels[0].
      scale_shift: ADM's scale-shift conditioning (emb -> 2 C per block) instead of adding emb.
      resblock_updown: resample with resblocks (BigGAN/ADM) instead of stride-2 / nearest+conv.
      zero_init: zero-initialise each residual branch's last layer and ``conv_out`` (DDPM/ADM), so
        every residual block starts as the identity and the model outputs 0 at init.
      attention_kernel: the kernel of :func:`jaxgen.nn.kernels.attention` ("auto": chosen
        for the platform, shapes and dtype).
      cross_attention_dim: 0: attention blocks are self-attention and labels join the time
        embedding (``UNet2DModel``). > 0: every attention block is a :class:`SpatialTransformer`
        whose blocks also attend to a context [B, S, cross_attention_dim], and labels condition
        only through that context (a learned ``context_tokens`` x ``cross_attention_dim`` row
        per label, :func:`jaxgen.nn.layers.label_context`): the shape of diffusers'
        ``UNet2DConditionModel`` (Rombach et al. 2022) with ``use_linear_projection=True``.
      transformer_layers: transformer blocks per :class:`SpatialTransformer`
        (diffusers' ``transformer_layers_per_block``).
      context_tokens: tokens of the learned label context.
      remat: rematerialise every residual and attention block in the backward pass (none,
        full or dots, :func:`jaxgen.nn.layers.remat_policy`): activation memory of the train
        step for about a third more compute, what accelerators at real batch sizes need.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    block_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (False, True, True)
    mid_attention: bool = True
    head_dim: int = 8
    num_heads: int = 0
    dropout: float = 0.0
    num_classes: int = 0
    norm_groups: int = 32
    norm_eps: float = 1e-5
    out_channels: int = 0
    time_embed_dim: int = 0
    scale_shift: bool = False
    resblock_updown: bool = False
    zero_init: bool = True
    attention_kernel: KernelName = "auto"
    cross_attention_dim: int = 0
    transformer_layers: int = 1
    context_tokens: int = 1
    remat: Literal["none", "full", "dots"] = "none"
    dtype: DType = "float32"
    param_dtype: DType = "float32"

    def __post_init__(self):
        if self.remat not in REMAT:
            raise ValueError(f"remat must be one of {', '.join(REMAT)}, got {self.remat!r}")
        if self.cross_attention_dim < 0 or self.transformer_layers < 1 or self.context_tokens < 1:
            raise ValueError("cross_attention_dim must be >= 0, transformer_layers and "
                             "context_tokens >= 1")
        if not self.block_channels or self.layers_per_block < 1:
            raise ValueError("UNetConfig needs at least one level and layers_per_block >= 1")
        if len(self.attention_levels) != len(self.block_channels):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries for "
                             f"{len(self.block_channels)} levels")
        widths = [c for c, a in zip(self.block_channels, self.attention_levels) if a]
        widths += [self.block_channels[-1]] if self.mid_attention else []
        for c in widths:
            self.heads(c)

    @property
    def levels(self) -> int:
        return len(self.block_channels)

    @property
    def emb_dim(self) -> int:
        return self.time_embed_dim or 4 * self.block_channels[0]

    def heads(self, channels: int) -> int:
        """Number of attention heads at width ``channels`` (ValueError if it does not divide)."""
        if self.num_heads > 0:
            if channels % self.num_heads:
                raise ValueError(f"width {channels} is not divisible by num_heads={self.num_heads}")
            return self.num_heads
        if self.head_dim <= 0 or channels % self.head_dim:
            raise ValueError(f"width {channels} is not divisible by head_dim={self.head_dim}")
        return channels // self.head_dim


def check_image_size(height: int, width: int, levels: int, resblock_updown: bool = False
                     ) -> None:
    """ValueError unless H and W suit ``levels`` levels: at least ``2^(levels-1)``, and with
    ``resblock_updown`` (exact 2x2 pooling) divisible by it. Other sizes are fine: a stride-2
    conv rounds up (7 -> 4) and the up path takes the skip's size (4 -> 7), as diffusers'
    ``forward_upsample_size``."""
    factor = 2 ** (levels - 1)
    if resblock_updown and (height % factor or width % factor):
        raise ValueError(f"UNet with {levels} levels and resblock_updown needs H and W "
                         f"divisible by {factor}; got {height}x{width}")
    if min(height, width) < factor:
        raise ValueError(f"UNet with {levels} levels needs H and W of at least {factor}; got "
                         f"{height}x{width}")


def group_norm(cfg: UNetConfig, channels: int, name: str) -> GroupNorm:
    """GroupNorm (Wu & He 2018) over ``channels`` with float32 statistics and float32 output;
    the group count is the largest <= ``cfg.norm_groups`` that divides ``channels``."""
    return GroupNorm(group_count(channels, cfg.norm_groups), epsilon=cfg.norm_eps,
                     param_dtype=cfg.param_dtype, name=name)


def _conv(cfg: UNetConfig, features: int, kernel: int, name: str, *, zero: bool = False,
          **kw: Any) -> nn.Module:
    """A k x k convolution (padding k // 2) with DDPM's initializer, or zeros."""
    return conv(features, (kernel, kernel), padding=kernel // 2, name=name,
                kernel_init=ZEROS if zero else DEFAULT_INIT,
                **{"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, **kw})


def _resample(x: jax.Array, mode: str, size: tuple[int, int] | None = None) -> jax.Array:
    """"down": 2x2 average pooling; "up": nearest-neighbour 2x, to ``size`` [H', W'] when given
    (<= 2x: the first rows and columns, which is nearest-neighbour interpolation to that size);
    "none": x. x [B, H, W, C]."""
    if mode == "down":
        return nn.avg_pool(x, (2, 2), strides=(2, 2))
    if mode == "up":
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return x if size is None else x[:, :size[0], :size[1]]
    return x


class ResBlock(nn.Module):
    """ADM residual block, x [B, H, W, C_in], emb [B, E] -> [B, H', W', out_channels]
    (emb None: no embedding projection, diffusers' ``ResnetBlock2D(temb_channels=None)``).

    ``resample`` "down"/"up" resamples both branches after the first norm (BigGAN/ADM
    up/down resblocks); "none" keeps the size.
    """

    cfg: UNetConfig
    out_channels: int
    resample: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array | None, train: bool = False) -> jax.Array:
        cfg, c = self.cfg, self.out_channels
        h = nn.silu(group_norm(cfg, x.shape[-1], "norm1")(x))
        h, x = _resample(h, self.resample), _resample(x, self.resample)
        h = _conv(cfg, c, 3, "conv1")(h)
        norm2 = group_norm(cfg, c, "norm2")
        if emb is None:  # unconditioned: the autoencoder's blocks
            h = norm2(h)
        else:
            e = dense(2 * c if cfg.scale_shift else c, ("embed", "conv_out"), name="emb_proj",
                      kernel_init=DEFAULT_INIT, dtype=cfg.dtype, param_dtype=cfg.param_dtype)(
                          nn.silu(emb))[:, None, None, :]
            if cfg.scale_shift:  # ADM: GroupNorm(h) * (1 + scale) + shift
                scale, shift = jnp.split(e.astype(jnp.float32), 2, axis=-1)
                h = norm2(h) * (1 + scale) + shift
            else:  # DDPM / diffusers: add the embedding before the second norm
                h = norm2(h + e)
        h = nn.Dropout(cfg.dropout, deterministic=not train)(nn.silu(h))
        h = _conv(cfg, c, 3, "conv2", zero=cfg.zero_init)(h)
        if x.shape[-1] != c:
            x = _conv(cfg, c, 1, "skip")(x)
        return constrain(x.astype(dtype_of(cfg.dtype)) + h, BATCH)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual, x [B, H, W, C] -> [B, H, W, C]: GroupNorm, the
    H*W pixels as tokens [B, H*W, heads, C/heads] through :func:`jaxgen.nn.kernels.attention`,
    output projection (zero-initialised with ``cfg.zero_init``)."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, hh, ww, c = x.shape
        h = group_norm(cfg, c, "norm")(x).astype(dtype_of(cfg.dtype)).reshape(b, hh * ww, c)
        h = ImageSelfAttention(cfg.heads(c), kernel=cfg.attention_kernel, kernel_init=DEFAULT_INIT,
                               out_init=ZEROS if cfg.zero_init else DEFAULT_INIT,
                               dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="attn")(h)
        return x.astype(dtype_of(cfg.dtype)) + h.reshape(x.shape)


class TransformerBlock(nn.Module):
    """diffusers' ``BasicTransformerBlock``, tokens x [B, T, C], context [B, S, Dc] -> [B, T, C]:
    ``x += attn1(LN(x))`` (self), ``x += attn2(LN(x), context)`` (cross), ``x += ff(LN(x))``
    (GEGLU, 4 C wide), each LayerNorm with a scale and bias."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        cfg, c = self.cfg, x.shape[-1]
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        dt = dtype_of(cfg.dtype)
        ln = lambda name: norm("layernorm", use_bias=True, name=name)  # noqa: E731
        attn = lambda name: Attention(cfg.heads(c), kernel=cfg.attention_kernel,  # noqa: E731
                                      kernel_init=DEFAULT_INIT, name=name, **kw)
        x = x + attn("attn1")(ln("norm1")(x).astype(dt))
        x = x + attn("attn2")(ln("norm2")(x).astype(dt), context)
        return x + MLP(4 * c, kind="geglu", use_bias=True, kernel_init=DEFAULT_INIT,
                       out_init=DEFAULT_INIT, name="ff", **kw)(ln("norm3")(x).astype(dt))


class SpatialTransformer(nn.Module):
    """diffusers' ``Transformer2DModel`` on feature maps, x [B, H, W, C], context [B, S, Dc] ->
    [B, H, W, C]: GroupNorm (eps 1e-6), ``proj_in`` (linear), ``cfg.transformer_layers``
    :class:`TransformerBlock` over the H*W tokens, ``proj_out`` (zero-initialised with
    ``cfg.zero_init``), residual."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, hh, ww, c = x.shape
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        h = GroupNorm(group_count(c, cfg.norm_groups), epsilon=1e-6,
                      param_dtype=cfg.param_dtype, name="norm")(x)
        h = dense(c, ("conv_in", "conv_out"), kernel_init=DEFAULT_INIT, name="proj_in", **kw)(
            h.astype(dtype_of(cfg.dtype)).reshape(b, hh * ww, c))
        for i in range(cfg.transformer_layers):
            h = TransformerBlock(cfg, name=f"block{i}")(h, context)
        h = dense(c, ("conv_in", "conv_out"), kernel_init=ZEROS if cfg.zero_init else
                  DEFAULT_INIT, name="proj_out", **kw)(h)
        return x.astype(dtype_of(cfg.dtype)) + h.reshape(x.shape)


def res_block(cfg: UNetConfig, out_channels: int, name: str, resample: str = "none"):
    """A :class:`ResBlock`, rematerialised as ``cfg.remat`` says: (x, emb, train) -> h."""
    return rematted(ResBlock, cfg, static=(3,))(cfg, out_channels, resample, name=name)


def attention_block(cfg: UNetConfig, name: str):
    """The attention block of a level: (h, context) -> h; self-attention, or with
    ``cfg.cross_attention_dim`` a :class:`SpatialTransformer`; rematerialised as
    ``cfg.remat`` says."""
    if cfg.cross_attention_dim:
        return rematted(SpatialTransformer, cfg)(cfg, name=name)
    block = rematted(AttentionBlock, cfg)(cfg, name=name)
    return lambda h, context: block(h)


class Downsample(nn.Module):
    """Halves H and W: a stride-2 3x3 conv with padding 1 (diffusers' ``Downsample2D``), or a
    down-resampling :class:`ResBlock` with ``cfg.resblock_updown``."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        cfg, c = self.cfg, x.shape[-1]
        if cfg.resblock_updown:
            return ResBlock(cfg, c, resample="down", name="res")(x, emb, train)
        return _conv(cfg, c, 3, "conv", strides=2)(x)


class Upsample(nn.Module):
    """Doubles H and W (or, given ``size``, to the skip's [H', W'] <= 2x): nearest-neighbour
    then a 3x3 conv (diffusers' ``Upsample2D``), or an up-resampling :class:`ResBlock` with
    ``cfg.resblock_updown``."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False,
                 size: tuple[int, int] | None = None) -> jax.Array:
        cfg, c = self.cfg, x.shape[-1]
        if cfg.resblock_updown:
            return ResBlock(cfg, c, resample="up", name="res")(x, emb, train)
        return _conv(cfg, c, 3, "conv")(_resample(x, "up", size))


class UNet(nn.Module):
    """The U-Net denoiser (see the module docstring for the layout).

    ``__call__(x [B, H, W, C] float, t [B] float (timestep index or EDM's c_noise; a scalar is
    broadcast), labels [B] int32 or None (None = the null label), train, context [B, S, Dc] or
    None) -> [B, H, W, C_out]`` float32. With ``cross_attention_dim`` the attention blocks
    attend to ``context``, or when it is None to the labels' learned context. Raises ValueError
    when H or W does not suit the levels (:func:`check_image_size`), when labels are given to
    an unconditional model, or when a cross-attention model gets neither labels nor a context.
    """

    config: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
                 train: bool = False, context: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        b, height, width, c_in = x.shape
        check_image_size(height, width, cfg.levels, cfg.resblock_updown)
        labels = class_labels(labels, b, cfg.num_classes)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)

        emb = TimestepMLP(cfg.emb_dim, cfg.block_channels[0], kernel_init=DEFAULT_INIT,
                          name="time_embed", **kw)(t)
        if cfg.cross_attention_dim:
            context = cross_attention_context(cfg, labels, context)
        elif labels is not None:
            emb = emb + embed(cfg.num_classes + 1, cfg.emb_dim, name="label_embed",
                              init=nn.initializers.normal(1.0), **kw)(labels)

        h = _conv(cfg, cfg.block_channels[0], 3, "conv_in")(x.astype(dtype_of(cfg.dtype)))
        skips = [h]
        for i, ch in enumerate(cfg.block_channels):
            for j in range(cfg.layers_per_block):
                h = res_block(cfg, ch, f"down{i}_res{j}")(h, emb, train)
                if cfg.attention_levels[i]:
                    h = attention_block(cfg, f"down{i}_attn{j}")(h, context)
                skips.append(h)
            if i < cfg.levels - 1:
                h = Downsample(cfg, name=f"down{i}_downsample")(h, emb, train)
                skips.append(h)

        h = res_block(cfg, cfg.block_channels[-1], "mid_res0")(h, emb, train)
        if cfg.mid_attention:
            h = attention_block(cfg, "mid_attn")(h, context)
        h = res_block(cfg, cfg.block_channels[-1], "mid_res1")(h, emb, train)

        for i in reversed(range(cfg.levels)):
            ch = cfg.block_channels[i]
            for j in range(cfg.layers_per_block + 1):
                h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
                h = res_block(cfg, ch, f"up{i}_res{j}")(h, emb, train)
                if cfg.attention_levels[i]:
                    h = attention_block(cfg, f"up{i}_attn{j}")(h, context)
            if i > 0:
                h = Upsample(cfg, name=f"up{i}_upsample")(h, emb, train, skips[-1].shape[1:3])

        h = nn.silu(group_norm(cfg, h.shape[-1], "norm_out")(h))
        out = _conv(cfg, cfg.out_channels or c_in, 3, "conv_out", zero=cfg.zero_init,
                    dtype="float32")(h)
        return out.astype(jnp.float32)


def unet_param_count(cfg: UNetConfig, image_shape: tuple[int, int, int]) -> int:
    """Number of parameters of ``UNet(cfg)`` for images [H, W, C] (shapes only; no compute)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    labels = None if cfg.num_classes == 0 else jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = jax.eval_shape(lambda x, t, y: UNet(cfg).init(jax.random.key(0), x, t, y),
                            x, t, labels)
    return sum(int(leaf.size) for leaf in jax.tree.leaves(shapes))
