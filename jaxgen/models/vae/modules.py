"""VAE encoders and decoders as Flax Linen modules: an MLP and a convolutional variant.

Encoders map images x [B, H, W, C] to the mean and log-variance of a diagonal Gaussian
q(z|x) (each [B, D]); decoders map latents z [N, D] to likelihood parameters
[N, H, W, C, P] (see likelihoods.py). Both work for any (H, W, C): the conv encoder halves the
resolution per stage with stride-2 "SAME" convolutions (ceil(H / 2) each), and the conv decoder
mirrors it with stride-2 transposed convolutions, cropping back to the encoder's sizes.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.vae.likelihoods import NUM_PARAMS
from jaxgen.models.vae.settings import VAEConfig
from jaxgen.nn.layers import CONV_AXES, conv, dense, dtype_of
from jaxgen.nn.partitioning import BATCH, constrain, with_axes

ACT = nn.gelu


def stage_sizes(hw: tuple[int, int], stages: int) -> list[tuple[int, int]]:
    """Spatial sizes after 0, 1, ..., ``stages`` stride-2 SAME convolutions: ceil halving."""
    sizes = [tuple(hw)]
    for _ in range(stages):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def _dense(width: int, axes: tuple, m: nn.Module):
    """A dense layer whose output stays sharded over the batch."""
    layer = dense(width, axes, dtype=m.dtype, param_dtype=m.param_dtype)
    return lambda h: constrain(layer(h), BATCH)


def _conv(ch: int, m: nn.Module, **kw) -> nn.Module:
    return conv(ch, (3, 3), strides=2, padding="SAME", dtype=m.dtype,
                param_dtype=m.param_dtype, **kw)


class MLPEncoder(nn.Module):
    hidden: Sequence[int]
    latent_dim: int
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(x.shape[0], -1).astype(dtype_of(self.dtype))
        for width in self.hidden:
            h = nn.Dropout(self.dropout, deterministic=not train)(
                ACT(_dense(width, ("embed", "mlp"), self)(h)))
        out = _dense(2 * self.latent_dim, ("mlp", None), self)(h).astype(jnp.float32)
        return out[:, :self.latent_dim], out[:, self.latent_dim:]


class ConvEncoder(nn.Module):
    channels: Sequence[int]
    dense: int
    latent_dim: int
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        h = x.astype(dtype_of(self.dtype))
        for ch in self.channels:
            h = ACT(_conv(ch, self)(h))
        h = h.reshape(h.shape[0], -1)
        if self.dense:
            h = nn.Dropout(self.dropout, deterministic=not train)(
                ACT(_dense(self.dense, ("embed", "mlp"), self)(h)))
        out = _dense(2 * self.latent_dim, ("mlp", None), self)(h).astype(jnp.float32)
        return out[:, :self.latent_dim], out[:, self.latent_dim:]


class MLPDecoder(nn.Module):
    hidden: Sequence[int]
    image_shape: tuple[int, int, int]
    num_params: int
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        h = z.astype(dtype_of(self.dtype))
        for width in self.hidden:
            h = nn.Dropout(self.dropout, deterministic=not train)(
                ACT(_dense(width, ("embed", "mlp"), self)(h)))
        out = _dense(math.prod(self.image_shape) * self.num_params, ("mlp", "embed"), self)(h)
        return out.astype(jnp.float32).reshape(z.shape[0], *self.image_shape, self.num_params)


class ConvDecoder(nn.Module):
    channels: Sequence[int]   # the encoder's channels; used in reverse
    dense: int
    image_shape: tuple[int, int, int]
    num_params: int
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        sizes = stage_sizes(self.image_shape[:2], len(self.channels))
        h = z.astype(dtype_of(self.dtype))
        if self.dense:
            h = nn.Dropout(self.dropout, deterministic=not train)(
                ACT(_dense(self.dense, ("embed", "mlp"), self)(h)))
        (h0, w0), c0 = sizes[-1], self.channels[-1]
        h = ACT(_dense(h0 * w0 * c0, ("mlp", "embed"), self)(h)).reshape(z.shape[0], h0, w0, c0)
        c_out = self.image_shape[2] * self.num_params
        for i in reversed(range(len(self.channels))):
            last = i == 0
            ch = c_out if last else self.channels[i - 1]
            h = nn.ConvTranspose(ch, (3, 3), strides=(2, 2), padding="SAME",
                                 dtype=dtype_of(self.dtype),
                                 param_dtype=dtype_of(self.param_dtype),
                                 kernel_init=with_axes(nn.initializers.lecun_normal(), CONV_AXES),
                                 bias_init=with_axes(nn.initializers.zeros_init(),
                                                     ("conv_out",)))(h)
            h = h[:, :sizes[i][0], :sizes[i][1]]
            if not last:
                h = ACT(h)
        return h.astype(jnp.float32).reshape(z.shape[0], *self.image_shape, self.num_params)


class VAE(nn.Module):
    """Encoder + decoder of a VAE; ``__call__`` (used for init) reconstructs from the mean."""

    cfg: VAEConfig

    def setup(self):
        c = self.cfg
        p = NUM_PARAMS[c.likelihood]
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        if c.encoder == "mlp":
            self.encoder = MLPEncoder(c.hidden, c.latent_dim, c.dropout, **kw)
        else:
            self.encoder = ConvEncoder(c.channels, c.dense, c.latent_dim, c.dropout, **kw)
        if c.decoder == "mlp":
            self.decoder = MLPDecoder(tuple(reversed(c.hidden)), c.image_shape, p, c.dropout, **kw)
        else:
            self.decoder = ConvDecoder(c.channels, c.dense, c.image_shape, p, c.dropout, **kw)

    def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """x [B, H, W, C] -> (mean [B, D], log-variance [B, D]) of q(z|x)."""
        return self.encoder(x, train)

    def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
        """z [N, D] -> likelihood parameters [N, H, W, C, P]."""
        return self.decoder(z, train)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        mu, _ = self.encode(x, train)
        return self.decode(mu, train)
