"""Bits per dimension from the DDPM variational bound (Ho et al. 2020, Eq. 5) for discrete-time
models ("eps", "v", "x0" parameterizations; not "edm").

Data: x0 [B, H, W, C] in [-1, 1], the model's own scale, on the 8-bit grid x = 2 k / 255 - 1
(k = 0..255), i.e. ``uint8 / 127.5 - 1``. In the module's index convention (``schedules``:
index t = Ho's t + 1) the bound is, in nats,
  L = L_T + sum_{t=1}^{T-1} L_t + L_0,
  L_T = KL(q(x_{T-1} | x_0) || N(0, I))                                     (prior, exact)
  L_t = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  t = 1..T-1          (Eqs. 6-7)
  L_0 = -log p(x_0 | x_{t=0}), the discretized Gaussian decoder            (Eq. 13)
with p(x_{t-1} | x_t) = N(mu-tilde(x_t, x0_hat), sigma_t^2 I): the posterior mean at the model's
x0_hat (clipped to [-1, 1] as in Ho et al.'s evaluation code) and a fixed variance,
sigma_t^2 = beta_t ("large", Ho et al.'s CIFAR-10 choice; default) or beta-tilde_t ("small").
The decoder's variance is beta-tilde at index 1 either way (as in Ho et al.'s code).

The sum over t is either exact (``num_timesteps_sampled=None``: all T-1 terms, one network call
each) or an unbiased Monte-Carlo estimate: K timesteps drawn i.i.d. uniformly from {1..T-1} per
example, sum ~= (T-1)/K sum_k L_{t_k}. Each term also samples x_t ~ q(x_t | x_0) once. The
result is in bits per dimension of the 8-bit data: L / (H W C ln 2).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from jaxgen.models.diffusion import schedules as sch
from jaxgen.models.diffusion.objectives import (
    DiffusionConfig,
    ModelFn,
    bcast,
    predict_x0_eps,
    q_sample,
)

MODEL_VARIANCES = ("large", "small")


def _sum_per_example(x: jax.Array) -> jax.Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def gaussian_kl(mean_q, logvar_q, mean_p, logvar_p) -> jax.Array:
    """Elementwise KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))) in nats."""
    return 0.5 * (logvar_p - logvar_q + jnp.exp(logvar_q - logvar_p)
                  + (mean_q - mean_p) ** 2 * jnp.exp(-logvar_p) - 1.0)


def prior_kl(x0: jax.Array, schedule: sch.Schedule) -> jax.Array:
    """L_T = KL(N(sqrt(abar_T) x_0, (1 - abar_T) I) || N(0, I)), nats [B]; x0 [B, ...]."""
    abar_last = float(sch.alphas_cumprod_np(schedule)[-1])
    kl = gaussian_kl(math.sqrt(abar_last) * x0, math.log1p(-abar_last), 0.0, 0.0)
    return _sum_per_example(kl)


def _log_ndtr_diff(a: jax.Array, b: jax.Array) -> jax.Array:
    """log(Phi(b) - Phi(a)) for b > a, evaluated in the lower tail (by symmetry) for stability."""
    flip = a > 0
    lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + jnp.log(-jnp.expm1(log_lo - log_hi))


@jax.jit
def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array,
                                        log_scale: jax.Array) -> jax.Array:
    """log P(x) of N(mean, exp(log_scale)^2) integrated over x's 8-bit bin (Ho et al. 2020,
    Eq. 13): bins [x - 1/255, x + 1/255], the two edge bins extended to -inf / +inf.
    x, mean [B, ...] with x on the grid 2 k / 255 - 1; log_scale broadcastable -> [B, ...]."""
    inv_std = jnp.exp(-log_scale)
    upper = (x - mean + 1.0 / 255.0) * inv_std
    lower = (x - mean - 1.0 / 255.0) * inv_std
    return jnp.where(x < -0.999, log_ndtr(upper),
                     jnp.where(x > 0.999, log_ndtr(-lower), _log_ndtr_diff(lower, upper)))


def _posterior_tables(schedule: sch.Schedule, model_variance: str) -> dict[str, jax.Array]:
    """Per-timestep constants [T] (float64 numpy -> float32): the posterior's x_0 coefficient,
    its log variance, and the model's log variance (index 0 holds the decoder's)."""
    betas = sch.betas_np(schedule)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    var_tilde = betas * (1.0 - abar_prev) / (1.0 - abar)
    var_tilde[0] = var_tilde[1]  # the clipped value at index 0, as in Ho et al.'s code
    model_var = var_tilde if model_variance == "small" else np.append(var_tilde[1], betas[1:])
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return {"abar": f32(abar), "coef_x0": f32(np.sqrt(abar_prev) * betas / (1.0 - abar)),
            "logvar_q": f32(np.log(var_tilde)), "logvar_p": f32(np.log(model_var))}


def _x0_hat(model_fn, x0, labels, t, key, cfg, abar, clip_x0):
    x_t = q_sample(x0, abar[t], jax.random.normal(key, x0.shape, jnp.float32))
    out = model_fn(x_t, t.astype(jnp.float32), labels)
    x0_hat = predict_x0_eps(cfg.parameterization, out, x_t, abar[t])[0]
    return jnp.clip(x0_hat, -1.0, 1.0) if clip_x0 else x0_hat


def vlb_terms(model_fn: ModelFn, x0: jax.Array, labels: jax.Array | None, rng: jax.Array,
              cfg: DiffusionConfig, num_timesteps_sampled: int | None = None,
              model_variance: str = "large", clip_x0: bool = True) -> dict[str, jax.Array]:
    """The three parts of the bound, nats [B] each: "prior" (L_T), "decoder" (L_0) and
    "diffusion" (sum_{t=1}^{T-1} L_t, exact or its unbiased estimate). Arguments as in
    ``nll_bits_per_dim``."""
    if not cfg.discrete:
        raise ValueError("the DDPM variational bound needs a discrete-time parameterization")
    if model_variance not in MODEL_VARIANCES:
        raise ValueError(f"unknown model_variance {model_variance!r}; expected {MODEL_VARIANCES}")
    if num_timesteps_sampled is not None and num_timesteps_sampled < 1:
        raise ValueError(f"num_timesteps_sampled must be >= 1, got {num_timesteps_sampled}")
    x0 = x0.astype(jnp.float32)
    b, t_count = x0.shape[0], cfg.timesteps
    tab = _posterior_tables(cfg.noise_schedule, model_variance)
    k_dec, k_t, k_eps = jax.random.split(rng, 3)

    t0 = jnp.zeros((b,), jnp.int32)
    x0_hat = _x0_hat(model_fn, x0, labels, t0, k_dec, cfg, tab["abar"], clip_x0)
    log_scale = 0.5 * tab["logvar_p"][0]
    decoder = -_sum_per_example(discretized_gaussian_log_likelihood(x0, x0_hat, log_scale))

    def kl_term(t: jax.Array, key: jax.Array) -> jax.Array:  # L_t [B], t [B] in 1..T-1
        x0_hat = _x0_hat(model_fn, x0, labels, t, key, cfg, tab["abar"], clip_x0)
        # mu-tilde(x_t, x0) - mu-tilde(x_t, x0_hat): the x_t terms cancel.
        diff = bcast(tab["coef_x0"][t], x0) * (x0 - x0_hat)
        kl = gaussian_kl(diff, bcast(tab["logvar_q"][t], x0), 0.0, bcast(tab["logvar_p"][t], x0))
        return _sum_per_example(kl)

    if num_timesteps_sampled is None:
        ts, scale = jnp.arange(1, t_count), 1.0
        draw = lambda k, t: jnp.full((b,), t, jnp.int32)
    else:
        ts, scale = jnp.arange(num_timesteps_sampled), (t_count - 1) / num_timesteps_sampled
        def draw(k, _):
            return jax.random.randint(jax.random.fold_in(k_t, k), (b,), 1, t_count)

    def body(total, k_and_t):
        k, t = k_and_t
        return total + kl_term(draw(k, t), jax.random.fold_in(k_eps, k)), None

    total, _ = jax.lax.scan(body, jnp.zeros((b,), jnp.float32), (jnp.arange(ts.shape[0]), ts))
    return {"prior": prior_kl(x0, cfg.noise_schedule), "decoder": decoder, "diffusion": scale * total}


def nll_bits_per_dim(model_fn: ModelFn, x0: jax.Array, labels: jax.Array | None,
                     rng: jax.Array, cfg: DiffusionConfig,
                     num_timesteps_sampled: int | None = None, model_variance: str = "large",
                     clip_x0: bool = True) -> jax.Array:
    """Upper bound on -log2 p(x_0) per dimension, [B] (see the module docstring).

    Args:
      model_fn: the raw network, model_fn(x_t, t [B] float32, labels) -> eps / v / x0 output.
      x0: 8-bit data scaled to [-1, 1], [B, H, W, C] (any [B, ...] works).
      labels: int class labels [B] or None.
      rng: PRNG key (timesteps and the x_t draws).
      cfg: a discrete-time DiffusionConfig.
      num_timesteps_sampled: K for the uniform Monte-Carlo estimate over t; None sums all T-1.
      model_variance: "large" (beta_t) or "small" (beta-tilde_t) reverse-process variance.
      clip_x0: clip x0_hat to [-1, 1] before forming the reverse-process mean.
    """
    terms = vlb_terms(model_fn, x0, labels, rng, cfg, num_timesteps_sampled, model_variance,
                      clip_x0)
    dims = math.prod(x0.shape[1:])
    return (terms["prior"] + terms["decoder"] + terms["diffusion"]) / (dims * math.log(2.0))
