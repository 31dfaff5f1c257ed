"""The VAE family: :class:`VAEFamily` (see jaxgen.models.base).

Training maximises the ELBO (or the IWAE bound) of :mod:`objective` on images
``batch["image"]`` [B, H, W, C] in [0, 1]; evaluation reports the single-sample negative ELBO
and its two terms; ``final_eval`` the IWAE bound of Burda et al. (2016) with ``eval.iwae_k``
samples. When ``train.ema_decay > 0`` every evaluation and sample uses the EMA parameters.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import signals
from jaxgen.errors import UsageError
from jaxgen.models.base import LossFamily, image_data, sampling_params, valid_images
from jaxgen.models.vae import likelihoods
from jaxgen.models.vae.augment import random_shift
from jaxgen.models.vae.modules import VAE
from jaxgen.models.vae.objective import elbo_terms, iwae_bound, kl_weight, training_objective
from jaxgen.models.vae.settings import VAEExperiment
from jaxgen.train.evaluate import sum_over_processes
from jaxgen.train.images import save_image_grid
from jaxgen.train.state import TrainState

log = logging.getLogger("jaxgen")


class VAEFamily(LossFamily):
    """A VAE: encoder, decoder, likelihood and objective (see the module docstring)."""

    name = "vae"
    settings = VAEExperiment

    def __init__(self, config: VAEExperiment, data_info: dict):
        shape, _ = image_data("vae", data_info)
        if config.model.image_shape and tuple(config.model.image_shape) != shape:
            raise UsageError(f"model.image_shape={tuple(config.model.image_shape)} disagrees "
                             f"with the data's {shape}; leave it () to take the data's")
        self.cfg = dataclasses.replace(config.model, image_shape=shape)
        super().__init__(config, data_info)
        # Compiled once here, so every batch of final_eval reuses the same executable.
        self._iwae_batch = jax.jit(self.iwae_sums, static_argnums=(4, 5))
        self._reconstruct = jax.jit(self.reconstruct)
        self._interpolate = jax.jit(self.interpolate)

    @property
    def model(self) -> VAE:
        return VAE(self.cfg)

    def init_params(self, rng: jax.Array) -> Any:
        x = jnp.zeros((1, *self.cfg.image_shape), jnp.float32)
        return self.model.init({"params": rng}, x)["params"]

    # --------------------------------------------------------------------------- pieces
    def encode(self, params, x, train=False, rng=None):
        """x [B, H, W, C] -> (mu, logvar) [B, D]."""
        rngs = {"dropout": rng} if train and rng is not None else None
        return self.model.apply({"params": params}, x, train, method=VAE.encode, rngs=rngs)

    def decoder(self, params, train=False, rng=None):
        """A function z [N, D] -> likelihood parameters [N, H, W, C, P]."""
        rngs = {"dropout": rng} if train and rng is not None else None
        return lambda z: self.model.apply({"params": params}, z, train, method=VAE.decode,
                                          rngs=rngs)

    def mean_image(self, params, z):
        """z [N, D] -> images [N, H, W, C] in [0, 1]."""
        return likelihoods.mean(self.cfg.likelihood, self.decoder(params)(z))

    # --------------------------------------------------------------------------- training
    def loss_fn(self, params, batch, rng, step):
        """The training loss (mean over the batch of minus the objective) and its metrics."""
        c = self.cfg
        k_aug, k_enc, k_dec, k_z = jax.random.split(rng, 4)
        x = random_shift(k_aug, batch["image"], c.shift)
        mu, logvar = self.encode(params, x, True, k_enc)
        scale = kl_weight(step, c.beta, c.kl_warmup_steps)
        value, diag = training_objective(self.decoder(params, True, k_dec), c.likelihood, x, mu,
                                         logvar, k_z, objective=c.objective,
                                         num_samples=c.train_samples, kl_scale=scale)
        metrics = {k: jnp.mean(v) for k, v in diag.items()}
        metrics["kl_weight"] = scale
        return -jnp.mean(value), metrics

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        """Sums over valid examples of the single-sample -ELBO, -E log p(x|z) and KL."""
        params, key = sampling_params(state), jax.random.PRNGKey(self.config.eval.seed)
        x, mask = batch["image"], batch["mask"]
        mu, logvar = self.encode(params, x)
        recon, kl = elbo_terms(self.decoder(params), self.cfg.likelihood, x, mu, logvar, key)
        return {"neg_elbo_nats": jnp.sum((kl - recon) * mask), "recon_nats": jnp.sum(-recon * mask),
                "kl_nats": jnp.sum(kl * mask), "count": jnp.sum(mask)}

    # --------------------------------------------------------------------------- sampling
    def sample(self, state: TrainState, rng: jax.Array, n: int, options: Any = None) -> jax.Array:
        z = jax.random.normal(rng, (n, self.cfg.latent_dim))
        return self.mean_image(sampling_params(state), z)

    # --------------------------------------------------------------------------- evaluation
    def iwae_sums(self, params, x, mask, key, k, chunk):
        """Sums over valid examples of the IWAE negative log-likelihood bound."""
        mu, logvar = self.encode(params, x)
        nll = -iwae_bound(self.decoder(params), self.cfg.likelihood, x, mu, logvar, key, k, chunk)
        return {"nll": jnp.sum(nll * mask), "count": jnp.sum(mask)}

    def final_eval(self, state: TrainState, batches: Iterable[dict], k: int | None = None) -> dict:
        """``nll_iwae_nats``: the IWAE bound on -log p(x) with ``eval.iwae_k`` samples, over the
        test split (the single-sample ``neg_elbo_nats`` comes from ``eval_step``)."""
        ec = self.config.eval
        k = int(k or ec.iwae_k)
        params = sampling_params(state)
        totals = {"nll": 0.0, "count": 0.0}
        log.info("IWAE bound (k=%d) over the test split", k)
        for i, batch in enumerate(batches):
            signals.check()
            x = jnp.asarray(batch["image"], jnp.float32)
            mask = jnp.asarray(batch.get("mask", np.ones(x.shape[0], np.float32)), jnp.float32)
            key = jax.random.fold_in(jax.random.PRNGKey(ec.seed), i)
            sums = jax.device_get(self._iwae_batch(params, x, mask, key, k, ec.iwae_chunk))
            for name in totals:
                totals[name] += float(np.asarray(sums[name], np.float64))
            log.info("IWAE bound (k=%d): %d test images done", k, int(totals["count"]))
        totals = sum_over_processes(totals)  # multi-host: every process held its share
        n = totals["count"]
        if n <= 0:
            raise ValueError("final_eval got no examples")
        return {"nll_iwae_nats": totals["nll"] / n, "iwae_k": k, "num_examples": int(n)}

    def reconstruct(self, params, x):
        mu, _ = self.encode(params, x)
        return self.mean_image(params, mu)

    def interpolate(self, params, xa, xb):
        """Images along the straight lines between the posterior means of xa and xb [R, ...]."""
        mu_a, _ = self.encode(params, xa)
        mu_b, _ = self.encode(params, xb)
        t = jnp.linspace(0.0, 1.0, 10)[None, :, None]
        z = (1.0 - t) * mu_a[:, None] + t * mu_b[:, None]           # [R, 10, D]
        return self.mean_image(params, z.reshape(-1, self.cfg.latent_dim))

    def visualize(self, state: TrainState, rng: jax.Array, batch: dict, path_prefix: str) -> list[str]:
        """Writes ``<prefix>_reconstructions.png`` (each input left of its reconstruction) and
        ``<prefix>_interpolations.png`` (rows: linear paths between two inputs' posterior means)."""
        del rng  # deterministic: posterior means
        params = sampling_params(state)
        x = valid_images(batch)[:32]
        if len(x) < 2:
            raise ValueError("visualize needs a batch with at least 2 valid images")
        recon = np.asarray(self._reconstruct(params, jnp.asarray(x)))
        pairs = np.stack([x, recon], axis=1).reshape(-1, *x.shape[1:])
        rows = min(8, len(x) // 2)
        interp = np.asarray(self._interpolate(params, jnp.asarray(x[:rows]),
                                              jnp.asarray(x[rows:2 * rows])))
        if jax.process_index() != 0:
            return []
        os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
        return [save_image_grid(pairs, f"{path_prefix}_reconstructions.png", ncols=16),
                save_image_grid(interp, f"{path_prefix}_interpolations.png", ncols=10)]
