"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Sec. 3-4): a diffusion model trained on the latents of a frozen, already trained
autoencoder (:mod:`jaxgen.models.autoencoder`), whose decoder turns its samples into images.

:class:`LatentCodec` holds the autoencoder's weights (host numpy: they enter the diffusion
model's programs as constants and are never trained) and the latent's normalisation: images
[B, H, W, C] in [0, 1] -> ``encode`` -> z = (a posterior sample - shift) * scale [B, h, w, L];
``decode`` maps z back to images in [0, 1]. The normalisation gives the latents the zero mean
and unit variance the noise schedules assume:

- ``channel`` (the default): each latent channel standardised by its own mean and standard
  deviation over the autoencoder's test split (the per-channel ``latents_mean``/``latents_std``
  of later latent models). On ``autoencoder_mnist`` the channel means differ by more than the
  channels vary, so one pooled scale leaves each channel at 0.4-0.65 of unit variance.
- ``scalar``: Rombach et al.'s single ``scaling_factor`` (1 / the pooled standard deviation,
  Sec. 4.3.2), no shift; ``latent.scaling_factor`` fixes it (Stable Diffusion's is 0.18215).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import UsageError


@dataclasses.dataclass(frozen=True, eq=False)
class LatentCodec:
    """A frozen autoencoder as the latent space of a diffusion model (see the module docstring).

    Attributes:
      workdir: the autoencoder's workdir.
      family: its :class:`~jaxgen.models.autoencoder.family.AutoencoderFamily`.
      params: its weights (the EMA where the run kept one), host arrays.
      shift: per latent channel [L], subtracted from the autoencoder's latents.
      scale: per latent channel [L], multiplied in after the shift.
    """

    workdir: str
    family: Any
    params: Any
    shift: tuple[float, ...]
    scale: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.family.shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.family.latent_shape)

    def moments(self, images: jax.Array) -> jax.Array:
        """Images [B, H, W, C] in [0, 1] -> the posterior's mean and standard deviation,
        concatenated on the channel axis: float32 [B, h, w, 2L] (what ``latent.cache`` keeps)."""
        mean, logvar = self.family.encode(self.params, images.astype(jnp.float32))
        return jnp.concatenate([mean, jnp.exp(0.5 * logvar)], axis=-1)

    def from_moments(self, moments: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """:meth:`moments` [B, h, w, 2L] -> normalised latents [B, h, w, L]: a posterior sample
        with ``rng``, the posterior mean without; no gradient reaches the autoencoder."""
        mean, std = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        z = mean if rng is None else mean + std * jax.random.normal(rng, mean.shape, jnp.float32)
        shift, scale = (jnp.asarray(v, jnp.float32) for v in (self.shift, self.scale))
        return jax.lax.stop_gradient((z - shift) * scale)

    def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Images [B, H, W, C] in [0, 1] -> normalised latents [B, h, w, L] (see
        :meth:`from_moments`)."""
        return self.from_moments(self.moments(images), rng)

    def decode(self, z: jax.Array) -> jax.Array:
        """Normalised latents [B, h, w, L] -> images [B, H, W, C] in [0, 1] (clipped)."""
        shift, scale = (jnp.asarray(v, jnp.float32) for v in (self.shift, self.scale))
        images = self.family.decode(self.params, z.astype(jnp.float32) / scale + shift)
        return jnp.clip(images, 0.0, 1.0)


def load_codec(workdir: str, image_shape: tuple[int, ...], normalize: str = "channel",
               scaling_factor: float = 0.0, recipe: str = "") -> LatentCodec:
    """The autoencoder of ``workdir`` for images of ``image_shape``, its latents normalised as
    ``normalize`` says (``scaling_factor`` > 0 fixes the scalar scale); one-line UsageErrors for
    a missing workdir, a run of another family, another image shape or no known statistics.
    ``workdir`` = ``recipe:NAME[:VARIANT]``: :func:`untrained_codec` of that recipe;
    ``recipe`` (``latent.recipe``) is named in the error for a missing workdir."""
    from jaxgen import api

    if workdir.startswith(UNTRAINED):
        return untrained_codec(workdir[len(UNTRAINED):], image_shape)
    where = f"latent.autoencoder={workdir}"
    try:
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
            family = json.load(f).get("family")
    except (OSError, ValueError, AttributeError):
        raise UsageError(f"{where}: not a jaxgen workdir (no readable config.json); train one "
                         f"with jaxgen train {recipe or 'autoencoder_mnist'} --workdir "
                         f"{workdir}") from None
    if family != "autoencoder":
        raise UsageError(f"{where} holds a {family} run, not an autoencoder")
    run = api.load(workdir)  # with its data where the files are there (the scale may need it)
    if tuple(run.family.shape) != tuple(image_shape):
        raise UsageError(f"{where} encodes images of shape {tuple(run.family.shape)}, this "
                         f"data's are {tuple(image_shape)}")
    channels = int(run.family.latent_shape[-1])
    if normalize == "scalar":
        s = float(scaling_factor or latent_statistics(run, where)["scaling_factor"])
        shift, scale = (0.0,) * channels, (s,) * channels
    else:
        stats = latent_statistics(run, where)
        shift = tuple(float(v) for v in stats["latent_channel_mean"])
        scale = tuple(1.0 / float(v) for v in stats["latent_channel_std"])
    return LatentCodec(workdir, run.family, jax.device_get(run.params), shift, scale)


UNTRAINED = "recipe:"


def untrained_codec(spec: str, image_shape: tuple[int, ...]) -> LatentCodec:
    """A randomly initialised autoencoder of recipe ``spec`` ("autoencoder_cifar10:tpu") with
    shift 0 and scale 1: the shapes and cost of a latent model without a trained autoencoder,
    for ``jaxgen compile`` and speed measurements; its samples mean nothing."""
    from jaxgen import experiments, models

    where = f"latent.autoencoder={UNTRAINED}{spec}"
    try:
        config = experiments.get_config(spec)
    except (KeyError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None
    if config.family != "autoencoder":
        raise UsageError(f"{where} is a {config.family} recipe, not an autoencoder")
    family = models.make_family(config, {"kind": "image", "shape": tuple(image_shape)})
    import flax.linen as nn

    params = jax.device_get(nn.meta.unbox(jax.jit(family.init_params)(jax.random.key(0))))
    channels = int(family.latent_shape[-1])
    return LatentCodec(where, family, params, (0.0,) * channels, (1.0,) * channels)


STATISTICS = ("scaling_factor", "latent_channel_mean", "latent_channel_std")


def latent_statistics(run: Any, where: str) -> dict:
    """The autoencoder's latent statistics (:data:`STATISTICS`): from its eval.json (``jaxgen
    eval`` writes them), else computed over its test split as its ``final_eval`` does (the same
    numbers, deterministic); a UsageError when neither is possible."""
    try:
        with open(os.path.join(run.workdir, "eval.json"), encoding="utf-8") as f:
            stats = json.load(f)
        return {k: stats[k] for k in STATISTICS}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not run.has_data:
        raise UsageError(f"{where}: no latent statistics in its eval.json and its data is not "
                         f"here ({run.missing_data}); run jaxgen eval --workdir {run.workdir} "
                         "where it is, or set latent.normalize=scalar latent.scaling_factor=S")
    stats = run.family.final_eval(run.state, run.built.datasets.make_eval())
    return {k: stats[k] for k in STATISTICS}


def encode_split(codec: LatentCodec, read: Any, n: int, chunk: int = 256) -> np.ndarray:
    """The :meth:`LatentCodec.moments` of examples ``0 .. n-1`` of a split, float32 host array
    [n, h, w, 2L]: ``read.map(ids)`` gives their batches (a pipeline's unaugmented reader),
    encoded ``chunk`` at a time on this process's first device (the last chunk padded, so one
    program is compiled). Every process encodes the whole split: the cache is per host."""
    device = jax.local_devices()[0]
    params = jax.device_put(codec.params, device)
    moments = jax.jit(lambda p, x: dataclasses.replace(codec, params=p).moments(x))
    out = []
    for lo in range(0, n, chunk):
        ids = np.arange(lo, min(lo + chunk, n))
        images = np.asarray(read.map(ids)["image"], np.float32)
        padded = np.concatenate([images, np.repeat(images[-1:], chunk - len(ids), 0)])
        out.append(np.asarray(moments(params, jax.device_put(padded, device)))[:len(ids)])
    return np.concatenate(out)
