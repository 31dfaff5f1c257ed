"""DCGAN generator and discriminator (Radford et al. 2016) for 28x28 and 32x32 images, and
their class-conditional variants.

Images enter and leave the networks in [-1, 1]; the family maps them from/to [0, 1].

Generator: z [B, z_dim] -> dense to an s x s x 2^k w map (s = 7 and k = 2 upsamplings for
28x28; s = 4, k = 3 for 32x32) -> k upsamplings, each doubling the resolution and halving the
width (the last one straight to C channels) -> tanh; ReLU between layers. DCGAN upsamples with
stride-2 transposed convolutions; here each upsampling is a sub-pixel convolution (Shi et al.
2016): a 3x3 convolution to 4x the channels, then depth-to-space. A 4x4 stride-2 transposed
convolution is a 2x2 convolution per output phase, so the 3x3 sub-pixel form can express it
(and is checkerboard-free at init, Aitken et al. 2017); measured on XLA:CPU the generator's
forward and backward pass ran about 7x faster than with transposed convolutions, whose kernel
gradient XLA:CPU computes slowly. The conditional generator concatenates a learned label
embedding (z_dim wide) to z (Mirza & Osindero 2014).

Normalisation: BatchNorm (Ioffe & Szegedy 2015) in G after the projection and after every
upsampling but the last, as in DCGAN (``gen_norm="batch"``; "none" drops it); none in D (R1 and
the gradient penalty are per-example, and batch statistics in D would couple real and fake
examples). G always normalises with the statistics of the batch it generates, so the train
state holds no running statistics. For sampling, G first computes "standing statistics"
(Brock et al. 2019) on a fixed batch of :data:`STANDING_BATCH` latents with the weights being
sampled (EMA or raw), then generates with those: a sample depends on its own z and the weights
only, never on n or on the other samples, and the EMA generator gets statistics of its own.

Discriminator: stride-2 4x4 convolutions (``nn.Conv``, or the same as :class:`PatchConv` with
``disc_conv="patch"``) with w, 2w, 4w feature maps and LeakyReLU(0.2)
(28 -> 14 -> 7 -> 4, or 32 -> 16 -> 8 -> 4), flattened to phi(x) [B, 64w] ->
logit psi(phi(x)) = Dense(1). The projection discriminator (Miyato & Koyama 2018) adds
<embed(y), phi(x)>. With ``spectral_norm`` every layer (the embedding included) is wrapped in
Flax's :class:`nn.SpectralNorm` (Miyato et al. 2018): the power-iteration vectors ``u`` and the
estimates ``sigma`` live in the ``batch_stats`` collection, which the family keeps in
``state.extra["sn"]``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models.gan.settings import NetConfig
from jaxgen.nn.layers import CONV_AXES, LECUN, ONES, ZEROS, conv, dense, dtype_of, embed
from jaxgen.nn.partitioning import BATCH, constrain, with_axes

LEAK = 0.2


def start_size(image_size: int) -> int:
    """Side of the generator's first feature map: 7 for 28x28 (two upsamplings), 4 for 32x32
    (three)."""
    return 7 if image_size == 28 else 4


def depth_to_space(x: jax.Array, r: int = 2) -> jax.Array:
    """[B, H, W, r*r*C] -> [B, r*H, r*W, C] (the pixel shuffle of Shi et al. 2016)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * r, w * r, c // (r * r))


STANDING_BATCH = 512  # latents behind the generator's BatchNorm statistics at sampling time


class Generator(nn.Module):
    """z [B, z_dim] (and labels y [B] int when conditional) -> images [B, H, W, C] in [-1, 1].

    ``use_running_average``: normalise with the stored ``batch_stats`` (the standing
    statistics) instead of those of this batch. With momentum 0, a call with
    ``mutable=["batch_stats"]`` stores exactly the statistics of its batch.
    """

    cfg: NetConfig

    @nn.compact
    def __call__(self, z: jax.Array, y: jax.Array | None = None, *,
                 use_running_average: bool = False) -> jax.Array:
        c = self.cfg
        size, _, channels = c.image_shape
        s = start_size(size)
        stages = 2 if size == 28 else 3

        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)

        def norm(h, name):
            if c.gen_norm != "batch":
                return h
            return nn.BatchNorm(use_running_average=use_running_average, momentum=0.0,
                                dtype=dtype_of(c.dtype), param_dtype=dtype_of(c.param_dtype),
                                scale_init=with_axes(ONES, ("norm",)),
                                bias_init=with_axes(ZEROS, ("norm",)), name=name)(h)

        z = z.astype(dtype_of(c.dtype))
        if c.conditional:
            z = jnp.concatenate([z, embed(c.num_classes, c.z_dim, name="label_embed",
                                          **kw)(y)], -1)
        width = c.gen_width * 2 ** stages
        h = dense(s * s * width, ("embed", "mlp"), name="project", **kw)(z)
        h = nn.relu(norm(h.reshape(z.shape[0], s, s, width), "project_norm"))
        for i in range(stages):
            last = i == stages - 1
            width = channels if last else width // 2
            h = conv(4 * width, (3, 3), padding="SAME", name=f"up_{i}", **kw)(h)
            h = constrain(depth_to_space(h), BATCH)                  # resolution x2
            if not last:
                h = nn.relu(norm(h, f"up_{i}_norm"))
        return jnp.tanh(h.astype(jnp.float32))                       # [B, H, W, C]


class PatchConv(nn.Module):
    """A k x k convolution with stride s and SAME padding, computed as im2col + one matmul.

    Parameters are those of ``nn.Conv`` (kernel [k, k, C_in, C_out], bias [C_out]), so
    ``nn.SpectralNorm`` treats it the same way. Why not ``nn.Conv``: R1 and WGAN-GP
    differentiate the discriminator twice, and XLA:CPU (jax 0.10) computes the second-order
    gradients of its native strided convolutions slowly; as slices and a matmul the R1 gradient
    of this discriminator took 27 ms instead of 215 ms (batch 32, one core), and the plain
    forward and backward pass got faster too (10 ms instead of 15 ms).
    """

    features: int
    kernel_size: int = 4
    stride: int = 2
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        _, h, w, cin = x.shape
        pdt, dt = dtype_of(self.param_dtype), dtype_of(self.dtype)
        kernel = self.param("kernel", with_axes(LECUN, CONV_AXES), (k, k, cin, self.features),
                            pdt).astype(dt)
        bias = self.param("bias", with_axes(ZEROS, ("conv_out",)), (self.features,),
                          pdt).astype(dt)
        x = x.astype(dt)
        ho, wo = -(-h // s), -(-w // s)
        ph, pw = max((ho - 1) * s + k - h, 0), max((wo - 1) * s + k - w, 0)
        xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        cols = [xp[:, i:i + (ho - 1) * s + 1:s, j:j + (wo - 1) * s + 1:s, :]
                for i in range(k) for j in range(k)]
        patches = jnp.concatenate(cols, axis=-1)                     # [B, ho, wo, k*k*C_in]
        return patches @ kernel.reshape(k * k * cin, self.features) + bias


class SpectralNorm(nn.SpectralNorm):
    """Flax's ``nn.SpectralNorm`` (Miyato et al. 2018) for layers whose parameters carry logical
    axis names: Flax's version maps over the parameter tree with the name boxes as nodes (their
    key paths then end in ``.value``, which its variable naming cannot read); this one treats
    each box as one parameter and keeps its names. The same ``u``/``sigma`` variables and
    values as Flax's."""

    @nn.compact
    def __call__(self, *args, update_stats: bool, **kwargs):
        def normalize(path, v):
            if isinstance(v, nn.meta.AxisMetadata):
                return v.replace_boxed(self._spectral_normalize(path, v.unbox(), update_stats))
            return self._spectral_normalize(path, v, update_stats)

        return nn.map_variables(
            lambda layer: layer(*args, **kwargs),
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(
                normalize, vs, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)),
            init=self.is_initializing(), mutable=True)(self.layer_instance)


class Discriminator(nn.Module):
    """Images x [B, H, W, C] in [-1, 1] (and labels y [B] when conditional) -> logits [B].

    ``update_stats``: advance the spectral-norm power iteration (needs
    ``mutable=["batch_stats"]``); the family does this once per discriminator update.
    """

    cfg: NetConfig

    def _call(self, layer: nn.Module, x: jax.Array, update_stats: bool) -> jax.Array:
        """``layer(x)``, spectrally normalised when the config asks for it."""
        if not self.cfg.spectral_norm:
            return layer(x)
        sn = SpectralNorm(layer, n_steps=self.cfg.sn_steps, name=f"sn_{layer.name}")
        return sn(x, update_stats=update_stats)

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None, *,
                 update_stats: bool = False) -> jax.Array:
        c = self.cfg
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        h = x.astype(dtype_of(c.dtype))
        for i, width in enumerate((c.disc_width, 2 * c.disc_width, 4 * c.disc_width)):
            if c.disc_conv == "patch":
                layer = PatchConv(width, 4, 2, name=f"down_{i}", **kw)
            else:
                layer = conv(width, (4, 4), strides=2, padding="SAME", name=f"down_{i}", **kw)
            h = constrain(nn.leaky_relu(self._call(layer, h, update_stats), LEAK), BATCH)
        phi = h.reshape(h.shape[0], -1)                              # [B, 64 w]
        logit = self._call(dense(1, ("mlp", None), name="psi", **kw), phi,
                           update_stats)[:, 0].astype(jnp.float32)
        if c.conditional:
            # Projection discriminator (Miyato & Koyama 2018): + <embed(y), phi(x)>.
            emb = self._call(embed(c.num_classes, phi.shape[-1], name="label_embed",
                                   axes=("classes", "mlp"), **kw), y, update_stats)
            logit = logit + jnp.sum((emb * phi).astype(jnp.float32), axis=-1)
        return logit                                                 # [B]
