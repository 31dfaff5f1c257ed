"""VAE objectives: the ELBO (Kingma & Welling 2014) with beta weighting (Higgins et al. 2017) and
linear KL warm-up (Sonderby et al. 2016), and the importance-weighted bound (IWAE, Burda et al.
2016), evaluated in chunks of samples so that k = 5000 fits in memory.

Notation: x [B, H, W, C]; q(z|x) = N(mu, diag(exp(logvar))) with mu, logvar [B, D]; samples are
reparameterized as z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) of shape [S, B, D]. A
``decode`` function maps z [N, D] to likelihood parameters [N, H, W, C, P]. All log-densities are
in nats, summed over pixels and latent dimensions.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxgen.models.vae import likelihoods

Decode = Callable[[jax.Array], jax.Array]
_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form: [B, D] -> [B]."""
    return 0.5 * jnp.sum(mu * mu + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def kl_weight(step: jax.Array, beta: float, warmup_steps: int) -> jax.Array:
    """beta * min(1, step / warmup_steps): the linear KL warm-up of Sonderby et al. (2016)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def draw_eps(key: jax.Array, num_samples: int, mu: jax.Array) -> jax.Array:
    """eps ~ N(0, I) of shape [S, B, D]; the one place samples are drawn from a key."""
    return jax.random.normal(key, (num_samples, *mu.shape), mu.dtype)


def log_weights(decode: Decode, likelihood: str, x: jax.Array, mu: jax.Array, logvar: jax.Array,
                eps: jax.Array, kl_scale: jax.Array | float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Importance log-weights log p(x|z) + kl_scale * (log p(z) - log q(z|x)) and log p(x|z).

    Args:
      eps: [S, B, D] standard-normal draws; z = mu + exp(logvar / 2) * eps.
      kl_scale: 1 for the true log-weights; < 1 during KL warm-up.
    Returns:
      (log_w [S, B], log_px_z [S, B]).
    """
    s, b, d = eps.shape
    z = mu + jnp.exp(0.5 * logvar) * eps
    params = decode(z.reshape(s * b, d))
    params = params.reshape(s, b, *params.shape[1:])
    log_px_z = likelihoods.log_prob(likelihood, params, x[None])
    log_pz = -0.5 * jnp.sum(z * z + _LOG_2PI, axis=-1)
    log_qz = -0.5 * jnp.sum(eps * eps + logvar + _LOG_2PI, axis=-1)
    return log_px_z + kl_scale * (log_pz - log_qz), log_px_z


def elbo_estimate(decode: Decode, likelihood: str, x: jax.Array, mu: jax.Array, logvar: jax.Array,
                  key: jax.Array, num_samples: int = 1) -> jax.Array:
    """Monte-Carlo ELBO, the mean of ``num_samples`` log-weights: [B].

    It draws the same samples as the first chunk of :func:`iwae_bound` with the same key, so
    ``iwae_bound(k=1) == elbo_estimate(num_samples=1)`` exactly, and for one chunk of S samples
    the IWAE bound is the log of the mean of the weights whose log-mean this is (Jensen: >=).
    """
    eps = draw_eps(jax.random.fold_in(key, 0), num_samples, mu)
    lw, _ = log_weights(decode, likelihood, x, mu, logvar, eps)
    return jnp.mean(lw, axis=0)


def iwae_bound(decode: Decode, likelihood: str, x: jax.Array, mu: jax.Array, logvar: jax.Array,
               key: jax.Array, k: int, chunk: int = 100) -> jax.Array:
    """The importance-weighted bound of Burda et al. (2016): [B].

    log (1/k) sum_{i<k} p(x, z_i) / q(z_i|x) with z_i ~ q(z|x), computed ``chunk`` samples at a
    time in a scan (samples of chunk j from ``fold_in(key, j)``); each chunk is reduced with
    logsumexp and the chunks combined with logsumexp, so memory grows with ``chunk``, not ``k``.
    When ``chunk`` does not divide ``k`` the surplus samples of the last chunk are masked out.
    """
    chunk = min(chunk, k)
    n_chunks = -(-k // chunk)

    def body(carry, j):
        eps = draw_eps(jax.random.fold_in(key, j), chunk, mu)
        lw, _ = log_weights(decode, likelihood, x, mu, logvar, eps)
        valid = (j * chunk + jnp.arange(chunk)) < k
        lw = jnp.where(valid[:, None], lw, -jnp.inf)
        return carry, jax.nn.logsumexp(lw, axis=0)

    _, lse = jax.lax.scan(body, None, jnp.arange(n_chunks))
    return jax.nn.logsumexp(lse, axis=0) - math.log(k)


def elbo_terms(decode: Decode, likelihood: str, x: jax.Array, mu: jax.Array, logvar: jax.Array,
               key: jax.Array, num_samples: int = 1) -> tuple[jax.Array, jax.Array]:
    """(E_q log p(x|z) estimated with ``num_samples`` samples, analytic KL), each [B]."""
    eps = draw_eps(key, num_samples, mu)
    _, log_px_z = log_weights(decode, likelihood, x, mu, logvar, eps)
    return jnp.mean(log_px_z, axis=0), gaussian_kl(mu, logvar)


def training_objective(decode: Decode, likelihood: str, x: jax.Array, mu: jax.Array,
                       logvar: jax.Array, key: jax.Array, *, objective: str, num_samples: int,
                       kl_scale: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-example objective to maximise [B], and per-example diagnostics.

    "elbo": E_q log p(x|z) - kl_scale * KL (analytic KL; beta-VAE / warm-up through kl_scale).
    "iwae": the k = ``num_samples`` IWAE bound with log-weights log p(x|z) + kl_scale *
    (log p(z) - log q(z|x)), which is the true IWAE bound once kl_scale = 1.
    """
    eps = draw_eps(key, num_samples, mu)
    lw, log_px_z = log_weights(decode, likelihood, x, mu, logvar, eps, kl_scale)
    recon = jnp.mean(log_px_z, axis=0)
    kl = gaussian_kl(mu, logvar)
    if objective == "elbo":
        value = recon - kl_scale * kl
    elif objective == "iwae":
        value = jax.nn.logsumexp(lw, axis=0) - math.log(num_samples)
    else:
        raise ValueError(f"unknown objective {objective!r}")
    return value, {"recon_nats": -recon, "kl_nats": kl, "neg_elbo_nats": kl - recon}
