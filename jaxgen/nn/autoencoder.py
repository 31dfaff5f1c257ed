"""A KL-regularised convolutional autoencoder shaped like diffusers' ``AutoencoderKL``.

The first stage of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models", Sec. 3.1; Esser et al. 2021's VQGAN without the codebook): an encoder
x [B, H, W, C] -> the mean and log-variance of a diagonal Gaussian over z [B, H/f, W/f, L]
(f = 2^(levels - 1)), and a decoder z -> x. Built from the UNet's pieces
(:mod:`jaxgen.nn.unet`: residual blocks without a time embedding, single-head spatial
attention, GroupNorm with eps 1e-6):

- encoder: ``conv_in`` 3x3 to C_0; per level i ``layers_per_block`` residual blocks to C_i and,
  but at the last level, a stride-2 3x3 conv after zero padding of one row and column at the
  bottom and right (diffusers' ``Downsample2D(padding=0)``); middle: resblock, attention,
  resblock; ``norm_out`` -> SiLU -> ``conv_out`` 3x3 to 2 L (mean and log-variance); then the
  1x1 ``quant_conv``.
- decoder: the 1x1 ``post_quant_conv``; ``conv_in`` 3x3 to C_last; middle; per up block b (from
  the lowest resolution) ``layers_per_block + 1`` residual blocks to the reversed widths and,
  but at the last, nearest 2x upsampling + 3x3 conv; ``norm_out`` -> SiLU -> ``conv_out``.

Parameter names: ``encoder/down{i}_res{j}``, ``encoder/down{i}_downsample``, ``mid_res0``,
``mid_attn``, ``mid_res1``, ``decoder/up{b}_res{j}``, ``decoder/up{b}_upsample`` (b as
diffusers' ``up_blocks`` index), ``quant_conv``, ``post_quant_conv``. With a diffusers
``AutoencoderKL``'s weights loaded (:func:`jaxgen.hub.diffusers.load_autoencoder`) the outputs
agree to 1e-4 (tests/test_hub.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.kernels import KernelName
from jaxgen.nn.layers import DType, conv
from jaxgen.nn.unet import (DEFAULT_INIT, AttentionBlock, ResBlock, UNetConfig, _conv, _resample,
                            group_norm)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Shape of the autoencoder (hashable).

    Attributes:
      block_channels: C_i per level; the latent is 2^(levels - 1) times smaller than the image.
      layers_per_block: residual blocks per encoder level (the decoder has one more).
      latent_channels: L, the latent's channels.
      in_channels, out_channels: the image's channels (out 0: as in).
      norm_groups: GroupNorm groups (the largest count <= this that divides the width).
      norm_eps: GroupNorm epsilon (diffusers' VAE: 1e-6).
      mid_attention: self-attention in the middle blocks.
      quant_conv: the 1x1 convolutions around the latent (diffusers' use_quant_conv).
      scaling_factor: the latent's scale for diffusion (Rombach et al.: 0.18215 for SD's).
      attention_kernel: the middle attention's kernel (jaxgen.nn.kernels; auto picks per
        platform).
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    block_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    latent_channels: int = 4
    in_channels: int = 3
    out_channels: int = 0
    norm_groups: int = 32
    norm_eps: float = 1e-6
    mid_attention: bool = True
    quant_conv: bool = True
    scaling_factor: float = 1.0
    attention_kernel: KernelName = "auto"
    dtype: DType = "float32"
    param_dtype: DType = "float32"

    def __post_init__(self):
        if not self.block_channels or self.layers_per_block < 1 or self.latent_channels < 1:
            raise ValueError("AutoencoderConfig needs a level, layers_per_block >= 1 and "
                             "latent_channels >= 1")

    @property
    def levels(self) -> int:
        return len(self.block_channels)

    @property
    def factor(self) -> int:
        return 2 ** (self.levels - 1)

    def blocks(self) -> UNetConfig:
        """The UNet settings its blocks are built with (one attention head per block)."""
        return UNetConfig(block_channels=self.block_channels,
                          layers_per_block=self.layers_per_block,
                          attention_levels=(False,) * self.levels, norm_groups=self.norm_groups,
                          norm_eps=self.norm_eps, num_heads=1, zero_init=False,
                          attention_kernel=self.attention_kernel, dtype=self.dtype,
                          param_dtype=self.param_dtype)


def _middle(cfg: AutoencoderConfig, h: jax.Array, train: bool) -> jax.Array:
    b, c = cfg.blocks(), h.shape[-1]
    h = ResBlock(b, c, name="mid_res0")(h, None, train)
    if cfg.mid_attention:
        h = AttentionBlock(b, name="mid_attn")(h)
    return ResBlock(b, c, name="mid_res1")(h, None, train)


def _out(cfg: AutoencoderConfig, h: jax.Array, features: int) -> jax.Array:
    b = cfg.blocks()
    h = nn.silu(group_norm(b, h.shape[-1], "norm_out")(h))
    return _conv(b, features, 3, "conv_out")(h)


class Encoder(nn.Module):
    """x [B, H, W, C] -> moments [B, H/f, W/f, 2 L] (mean, log-variance)."""

    config: AutoencoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg, b = self.config, self.config.blocks()
        h = _conv(b, cfg.block_channels[0], 3, "conv_in")(x)
        for i, c in enumerate(cfg.block_channels):
            for j in range(cfg.layers_per_block):
                h = ResBlock(b, c, name=f"down{i}_res{j}")(h, None, train)
            if i < cfg.levels - 1:  # pad bottom/right by one, then a valid stride-2 conv
                h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
                h = Downsample(b, name=f"down{i}_downsample")(h)
        h = _middle(cfg, h, train)
        return _out(cfg, h, 2 * cfg.latent_channels)


class Downsample(nn.Module):
    """A stride-2 3x3 convolution without padding (its input is already padded)."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        return conv(x.shape[-1], (3, 3), strides=2, padding="VALID", kernel_init=DEFAULT_INIT,
                    dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="conv")(x)


class Decoder(nn.Module):
    """z [B, h, w, L] -> x [B, h f, w f, C_out]."""

    config: AutoencoderConfig

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        cfg, b = self.config, self.config.blocks()
        widths = tuple(reversed(cfg.block_channels))
        h = _conv(b, widths[0], 3, "conv_in")(z)
        h = _middle(cfg, h, train)
        for i, c in enumerate(widths):
            for j in range(cfg.layers_per_block + 1):
                h = ResBlock(b, c, name=f"up{i}_res{j}")(h, None, train)
            if i < cfg.levels - 1:
                h = Upsample(b, name=f"up{i}_upsample")(h)
        return _out(cfg, h, cfg.out_channels or cfg.in_channels)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 convolution."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv(self.cfg, x.shape[-1], 3, "conv")(_resample(x, "up"))


class AutoencoderKL(nn.Module):
    """``encode(x) -> (mean, logvar)`` [B, H/f, W/f, L] each, ``decode(z) -> x``, and
    ``__call__(x, rng=None)``: the reconstruction of the posterior's mean (or of a sample
    from it with ``rng``), with (mean, logvar)."""

    config: AutoencoderConfig

    def setup(self):
        cfg, b = self.config, self.config.blocks()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.quant_conv:
            kw = dict(kernel_init=DEFAULT_INIT, dtype=b.dtype, param_dtype=b.param_dtype)
            self.quant_conv = conv(2 * cfg.latent_channels, (1, 1), **kw)
            self.post_quant_conv = conv(cfg.latent_channels, (1, 1), **kw)

    def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        moments = self.encoder(x, train)
        if self.config.quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)  # diffusers' DiagonalGaussianDistribution

    def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
        if self.config.quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z, train)

    def __call__(self, x: jax.Array, rng: Any = None, train: bool = False):
        mean, logvar = self.encode(x, train)
        z = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(
            rng, mean.shape, mean.dtype)
        return self.decode(z, train), (mean, logvar)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over the latent, float32 [B]:
    ``0.5 sum(mean^2 + exp(logvar) - 1 - logvar)`` (Kingma & Welling 2014, App. B)."""
    kl = 0.5 * (mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)
