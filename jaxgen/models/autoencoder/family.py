"""The autoencoder family: :class:`AutoencoderFamily` (see jaxgen.models.base).

Training minimises, per image x (``batch["image"]`` [B, H, W, C] in [0, 1], scaled to [-1, 1]),
``sum rec(D(z) - x) + kl_weight KL(q(z|x) || N(0, I))`` with z ~ q(z|x) = N(mean, exp(logvar))
from the encoder of :class:`jaxgen.nn.autoencoder.AutoencoderKL` (Rombach et al. 2022, Sec. 3.1;
Kingma & Welling 2014 for the reparameterised sample and the KL's closed form).

Evaluation (``eval_step``, over the test split): ``recon_mse`` (mean squared error per pixel of
the posterior mean's reconstruction, in [0, 1] units), ``rate_nats`` (the KL per image),
``loss``. ``final_eval`` adds the latent's statistics over the test split: ``latent_std`` (the
standard deviation of the posterior means, all components pooled) and ``scaling_factor`` =
1 / latent_std, the one scale of Rombach et al. 2022 (Sec. 4.3.2 and App. G); the mean and
standard deviation of each latent channel, which a latent diffusion model standardises by (the
default, ``latent.normalize=channel``); the latent's shape; and ``recon_fd_lenet``. An autoencoder
is not a sampler of the data: ``sample`` decodes draws of the
KL term's prior N(0, I), and the family offers no sample-quality evaluation
(``sample_eval_variants`` is empty).
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import signals
from jaxgen.models.base import LossFamily, image_data, sampling_params, valid_images
from jaxgen.models.autoencoder.settings import AutoencoderExperiment
from jaxgen.nn.autoencoder import AutoencoderKL, kl_to_standard_normal
from jaxgen.train.evaluate import SAMPLE_REFERENCES, sum_over_processes
from jaxgen.train.images import save_image_grid
from jaxgen.train.state import TrainState

RECON_FD_SAMPLES = 1000  # real digits whose reconstructions recon_fd_lenet scores


def reconstruction_error(kind: str, x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example sum over pixels of the squared (l2) or absolute (l1) error, float32 [B]."""
    d = (x_hat.astype(jnp.float32) - x.astype(jnp.float32)).reshape(x.shape[0], -1)
    return jnp.sum(d * d if kind == "l2" else jnp.abs(d), axis=-1)


class AutoencoderFamily(LossFamily):
    """A KL-regularised autoencoder (see the module docstring)."""

    name = "autoencoder"
    settings = AutoencoderExperiment
    sample_eval_variants: dict = {}

    def __init__(self, config: AutoencoderExperiment, data_info: dict):
        self.shape, _ = image_data("autoencoder", data_info)
        self.network = config.model.network(self.shape[-1])
        h, w = self.shape[:2]
        f = self.network.factor
        if h % f or w % f:
            from jaxgen.errors import UsageError
            raise UsageError(f"the autoencoder's {self.network.levels} levels shrink images by "
                             f"{f}, which does not divide {h}x{w}")
        self.latent_shape = (h // f, w // f, self.network.latent_channels)
        super().__init__(config, data_info)
        self._means = jax.jit(lambda p, x: self.encode(p, x)[0])
        self._reconstruct = jax.jit(self.reconstruct)

    @property
    def model(self) -> AutoencoderKL:
        return AutoencoderKL(self.network)

    def init_params(self, rng: jax.Array) -> Any:
        x = jnp.zeros((1, *self.shape), jnp.float32)
        return self.model.init({"params": rng}, x)["params"]

    # --------------------------------------------------------------------------- pieces
    def encode(self, params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images [B, H, W, C] in [0, 1] -> the posterior's (mean, logvar) [B, h, w, L]."""
        return self.model.apply({"params": params}, x * 2.0 - 1.0, method=AutoencoderKL.encode)

    def decode(self, params: Any, z: jax.Array) -> jax.Array:
        """Latents [B, h, w, L] -> images [B, H, W, C] in the data's [0, 1] units (unclipped)."""
        out = self.model.apply({"params": params}, z, method=AutoencoderKL.decode)
        return (out.astype(jnp.float32) + 1.0) / 2.0

    def reconstruct(self, params: Any, x: jax.Array) -> jax.Array:
        """The posterior mean's reconstruction of x, clipped to [0, 1]."""
        return jnp.clip(self.decode(params, self.encode(params, x)[0]), 0.0, 1.0)

    def _terms(self, params, x, rng):
        c = self.config.model
        x = x * 2.0 - 1.0
        recon, (mean, logvar) = self.model.apply({"params": params}, x, rng)
        rec = reconstruction_error(c.reconstruction, recon, x)
        kl = kl_to_standard_normal(mean, logvar)
        return rec, kl, rec + c.kl_weight * kl

    # --------------------------------------------------------------------------- training
    def loss_fn(self, params, batch, rng, step):
        """Mean over the batch of the per-image loss, with its two terms as metrics."""
        del step
        rec, kl, loss = self._terms(params, batch["image"].astype(jnp.float32), rng)
        return jnp.mean(loss), {"reconstruction": jnp.mean(rec), "kl_nats": jnp.mean(kl)}

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        """Sums over valid examples of the loss (posterior samples from ``eval.seed``), the
        rate and the posterior mean's per-pixel squared error in [0, 1] units."""
        params, mask = sampling_params(state), batch["mask"]
        x = batch["image"].astype(jnp.float32)
        _, kl, loss = self._terms(params, x, jax.random.PRNGKey(self.config.eval.seed))
        err = jnp.mean(((self.reconstruct(params, x) - x) ** 2).reshape(x.shape[0], -1), -1)
        return {"loss": jnp.sum(loss * mask), "rate_nats": jnp.sum(kl * mask),
                "recon_mse": jnp.sum(err * mask), "count": jnp.sum(mask)}

    # --------------------------------------------------------------------------- sampling
    def sample(self, state: TrainState, rng: jax.Array, n: int, options: Any = None):
        """Decoded draws z ~ N(0, I) of the KL term's prior, [n, H, W, C] in [0, 1]: what the
        regulariser pulls the posterior towards, not a model of the data."""
        z = jax.random.normal(rng, (n, *self.latent_shape))
        return jnp.clip(self.decode(sampling_params(state), z), 0.0, 1.0)

    # --------------------------------------------------------------------------- evaluation
    def final_eval(self, state: TrainState, batches: Iterable[dict]) -> dict:
        """The latent's statistics over the test split (see the module docstring), and where
        the data has a sample reference set, ``recon_fd_lenet``: the sample metric's fd_lenet
        of the reconstructions of the floor's real training digits
        (:func:`jaxgen.eval.floor_digits`, ``recon_fd_samples`` of them), beside
        ``recon_fd_floor``, those digits' own fd_lenet. A latent diffusion model that drew
        exactly these latents would score recon_fd_lenet: its floor, as the real digits' is
        the pixel model's."""
        params = sampling_params(state)
        c = self.latent_shape[-1]
        s1, s2, n = np.zeros(c), np.zeros(c), 0.0
        for batch in batches:
            signals.check()
            x = valid_images(batch)
            if len(x) == 0:
                continue
            m = np.asarray(self._means(params, jnp.asarray(x)), np.float64).reshape(-1, c)
            s1, s2, n = s1 + m.sum(0), s2 + (m * m).sum(0), n + float(len(m))
        sums = sum_over_processes({"count": n, **{f"s1_{i}": v for i, v in enumerate(s1)},
                                   **{f"s2_{i}": v for i, v in enumerate(s2)}})
        n = sums["count"]
        if n <= 0:
            raise ValueError("final_eval got no examples")
        s1 = np.asarray([sums[f"s1_{i}"] for i in range(c)])
        s2 = np.asarray([sums[f"s2_{i}"] for i in range(c)])
        mean = float(s1.sum() / (n * c))
        std = float(np.sqrt(max(s2.sum() / (n * c) - mean * mean, 1e-12)))
        channel_mean = s1 / n
        channel_std = np.sqrt(np.maximum(s2 / n - channel_mean ** 2, 1e-12))
        h, w, _ = self.latent_shape
        out = {"latent_std": std, "latent_mean": mean, "scaling_factor": 1.0 / std,
               "latent_channel_mean": [float(v) for v in channel_mean],
               "latent_channel_std": [float(v) for v in channel_std],
               "latent_shape": [h, w, c],
               "compression": float(np.prod(self.shape)) / float(h * w * c)}
        reference = SAMPLE_REFERENCES.get(str(self.data_info.get("source", "")))
        if reference and tuple(self.shape) == (28, 28, 1):
            out.update(self._reconstruction_quality(params, reference))
        return out

    def _reconstruction_quality(self, params: Any, reference: str) -> dict:
        """recon_fd_lenet, recon_fd_floor, recon_fd_samples (see :meth:`final_eval`); every
        process reconstructs (the program may span them), process 0 scores."""
        from jaxgen import eval as eval_lib

        digits = eval_lib.floor_digits(reference, RECON_FD_SAMPLES)
        recon = np.concatenate([np.asarray(self._reconstruct(params, jnp.asarray(chunk)))
                                for chunk in np.array_split(digits, 4)])
        if jax.process_index() != 0:
            return {}
        scored = eval_lib.sample_metrics(recon, reference)
        return {"recon_fd_lenet": scored["fd_lenet"], "recon_fd_floor": scored["floor"]["fd_lenet"],
                "recon_fd_samples": len(recon)}

    def visualize(self, state: TrainState, rng: jax.Array, batch: dict,
                  path_prefix: str) -> list[str]:
        """Writes ``<prefix>_reconstructions.png``: rows of 8 test images, each row followed by
        the row of their reconstructions (posterior means)."""
        del rng
        x = valid_images(batch)[:32]
        x = x[: len(x) // 8 * 8]
        if len(x) == 0:
            raise ValueError("visualize needs a batch with at least 8 valid images")
        recon = np.asarray(self._reconstruct(sampling_params(state), jnp.asarray(x)))
        rows = np.stack([x.reshape(-1, 8, *x.shape[1:]), recon.reshape(-1, 8, *x.shape[1:])],
                        axis=1).reshape(-1, *x.shape[1:])
        if jax.process_index() != 0:
            return []
        os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
        return [save_image_grid(rows, f"{path_prefix}_reconstructions.png", ncols=8)]
