"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Sec. 3-4): a diffusion model trained on the latents of a frozen, already trained
autoencoder (:mod:`jaxgen.models.autoencoder`), whose decoder turns its samples into images.

:class:`LatentCodec` holds the autoencoder's weights (host numpy: they enter the diffusion
model's programs as constants and are never trained) and its scale: images [B, H, W, C] in
[0, 1] -> ``encode`` -> z = scaling_factor * (a posterior sample) [B, h, w, L]; ``decode`` maps
z back to images in [0, 1]. The scaling factor (1 / the latent's standard deviation over the
autoencoder's test split, Rombach et al. Sec. 4.3.2) gives the latents unit variance, the scale
the noise schedules assume.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.errors import UsageError


@dataclasses.dataclass(frozen=True, eq=False)
class LatentCodec:
    """A frozen autoencoder as the latent space of a diffusion model (see the module docstring).

    Attributes:
      workdir: the autoencoder's workdir.
      family: its :class:`~jaxgen.models.autoencoder.family.AutoencoderFamily`.
      params: its weights (the EMA where the run kept one), host arrays.
      scaling_factor: latents are multiplied by this.
    """

    workdir: str
    family: Any
    params: Any
    scaling_factor: float

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.family.shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.family.latent_shape)

    def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Images [B, H, W, C] in [0, 1] -> scaled latents [B, h, w, L]: a posterior sample with
        ``rng``, the posterior mean without; no gradient reaches the autoencoder."""
        mean, logvar = self.family.encode(self.params, images.astype(jnp.float32))
        z = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(
            rng, mean.shape, jnp.float32)
        return jax.lax.stop_gradient(z * self.scaling_factor)

    def decode(self, z: jax.Array) -> jax.Array:
        """Scaled latents [B, h, w, L] -> images [B, H, W, C] in [0, 1] (clipped)."""
        images = self.family.decode(self.params, z.astype(jnp.float32) / self.scaling_factor)
        return jnp.clip(images, 0.0, 1.0)


def load_codec(workdir: str, image_shape: tuple[int, ...], scaling_factor: float = 0.0
               ) -> LatentCodec:
    """The autoencoder of ``workdir`` for images of ``image_shape``, its latents scaled by
    ``scaling_factor`` (0: :func:`autoencoder_scale`); one-line UsageErrors for a missing
    workdir, a run of another family, another image shape or no known scale."""
    from jaxgen import api

    where = f"latent.autoencoder={workdir}"
    try:
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
            family = json.load(f).get("family")
    except (OSError, ValueError, AttributeError):
        raise UsageError(f"{where}: not a jaxgen workdir (no readable config.json); train one "
                         "with jaxgen train autoencoder_mnist") from None
    if family != "autoencoder":
        raise UsageError(f"{where} holds a {family} run, not an autoencoder")
    run = api.load(workdir)  # with its data where the files are there (the scale may need it)
    if tuple(run.family.shape) != tuple(image_shape):
        raise UsageError(f"{where} encodes images of shape {tuple(run.family.shape)}, this "
                         f"data's are {tuple(image_shape)}")
    return LatentCodec(workdir, run.family, jax.device_get(run.params),
                       float(scaling_factor or autoencoder_scale(run, where)))


def autoencoder_scale(run: Any, where: str) -> float:
    """1 / the latent's standard deviation: from the autoencoder's eval.json (``jaxgen eval``
    writes it), else computed over its test split as its ``final_eval`` does (the same number,
    deterministic); a UsageError when neither is possible."""
    try:
        with open(os.path.join(run.workdir, "eval.json"), encoding="utf-8") as f:
            return float(json.load(f)["scaling_factor"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not run.has_data:
        raise UsageError(f"{where}: no scaling_factor in its eval.json and its data is not here "
                         f"({run.missing_data}); run jaxgen eval --workdir {run.workdir} where "
                         "it is, or set latent.scaling_factor")
    return float(run.family.final_eval(run.state, run.built.datasets.make_eval())
                 ["scaling_factor"])
