"""Decoder likelihoods p(x|z): log-densities summed over pixels, in nats.

Every likelihood reads decoder outputs ``params`` of shape [..., H, W, C, P] (P parameters per
pixel channel, see :data:`NUM_PARAMS`) and data ``x`` [..., H, W, C] in [0, 1], and returns
``log p(x|z)`` of shape [...] (summed over H, W, C).

- ``bernoulli``: binarized data, P = 1 (logits).
- ``gaussian``: grey levels as a continuous density, P = 2 (mean, log-scale).
- ``logistic``: the discretized logistic of PixelCNN++ (Salimans et al. 2017), P = 2: a
  logistic density integrated over each of ``num_bins`` bins of [0, 1], with the two edge bins
  taking the tails, so the probabilities of the bins sum to exactly 1.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LIKELIHOODS = ("bernoulli", "gaussian", "logistic")
NUM_PARAMS = {"bernoulli": 1, "gaussian": 2, "logistic": 2}
# Lower bound on log-scales, so no density can collapse onto a data point.
MIN_LOG_SCALE = -7.0


def check_likelihood(name: str) -> str:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return name


def _sum_pixels(logp: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [...]."""
    return jnp.sum(logp, axis=(-3, -2, -1))


def bernoulli_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log Bernoulli(x; sigmoid(logits)) summed over pixels; logits, x [..., H, W, C] -> [...].

    Computed stably as ``x * logits - softplus(logits)``.
    """
    return _sum_pixels(x * logits - jax.nn.softplus(logits))


def gaussian_log_prob(mean: jax.Array, log_scale: jax.Array, x: jax.Array) -> jax.Array:
    """log N(x; mean, exp(log_scale)^2) summed over pixels (a density on R); shapes as ``x``."""
    log_scale = jnp.maximum(log_scale, MIN_LOG_SCALE)
    z = (x - mean) * jnp.exp(-log_scale)
    return _sum_pixels(-0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi))


def discretized_logistic_log_prob(mean: jax.Array, log_scale: jax.Array, x: jax.Array,
                                  num_bins: int = 256) -> jax.Array:
    """log P(x) under a discretized logistic (Salimans et al. 2017, PixelCNN++), summed over pixels.

    ``x`` in [0, 1] lies on the grid {0, 1/(num_bins-1), ..., 1}; it is rescaled to [-1, 1] as in
    PixelCNN++, ``mean`` lives in that space, and bin i covers [x_i - d, x_i + d] with
    d = 1 / (num_bins - 1), the first and last bins extending to -inf and +inf.
    """
    log_scale = jnp.maximum(log_scale, MIN_LOG_SCALE)
    half = 1.0 / (num_bins - 1)
    xs = 2.0 * x - 1.0
    centered = xs - mean
    inv_s = jnp.exp(-log_scale)
    plus_in = inv_s * (centered + half)
    min_in = inv_s * (centered - half)
    log_cdf_plus = plus_in - jax.nn.softplus(plus_in)        # log sigmoid(plus_in): first bin
    log_one_minus_cdf_min = -jax.nn.softplus(min_in)          # log(1 - sigmoid(min_in)): last bin
    mid_in = inv_s * centered
    # sigmoid(a) - sigmoid(b) == sigmoid(-b) - sigmoid(-a): take the form that subtracts small
    # numbers, so the mass of bins in the upper tail keeps its float32 precision.
    cdf_delta = jnp.where(mid_in > 0, jax.nn.sigmoid(-min_in) - jax.nn.sigmoid(-plus_in),
                          jax.nn.sigmoid(plus_in) - jax.nn.sigmoid(min_in))
    # When the bin mass underflows, fall back to density x bin width (as PixelCNN++ does).
    log_pdf_mid = mid_in - log_scale - 2.0 * jax.nn.softplus(mid_in) + math.log(2 * half)
    log_mid = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)), log_pdf_mid)
    logp = jnp.where(xs < -1.0 + half, log_cdf_plus,
                     jnp.where(xs > 1.0 - half, log_one_minus_cdf_min, log_mid))
    return _sum_pixels(logp)


def log_prob(name: str, params: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x|z) for the likelihood ``name``: params [..., H, W, C, P], x [..., H, W, C] -> [...]."""
    if name == "bernoulli":
        return bernoulli_log_prob(params[..., 0], x)
    if name == "gaussian":
        return gaussian_log_prob(params[..., 0], params[..., 1], x)
    if name == "logistic":
        return discretized_logistic_log_prob(params[..., 0], params[..., 1], x)
    raise ValueError(f"unknown likelihood {name!r}")


def mean(name: str, params: jax.Array) -> jax.Array:
    """The image a decoder output stands for, in [0, 1]: [..., H, W, C, P] -> [..., H, W, C].

    Bernoulli: the pixel probabilities; Gaussian: the clipped mean; discretized logistic: its
    location mapped back from [-1, 1].
    """
    if name == "bernoulli":
        return jax.nn.sigmoid(params[..., 0])
    if name == "gaussian":
        return jnp.clip(params[..., 0], 0.0, 1.0)
    if name == "logistic":
        return (jnp.clip(params[..., 0], -1.0, 1.0) + 1.0) / 2.0
    raise ValueError(f"unknown likelihood {name!r}")
