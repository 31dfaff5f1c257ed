"""Noise schedules: discrete-time variance-preserving (VP) schedules and the EDM sigma schedule.

Discrete-time VP (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"):
  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s <= t} (1 - beta_s).
Arrays here are indexed by the timestep index ``t`` in {0, ..., T-1}; index ``t`` is Ho et al.'s
timestep t+1 (so ``alphas_cumprod(s)[0] = 1 - beta_1``, and Ho's x_0 is the clean data).

- "linear": betas = linspace(1e-4, 0.02, T) (Ho et al. 2020, Sec. 4), T = 1000.
- "scaled_linear": betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (Latent/Stable
  Diffusion's, Rombach et al. 2022; diffusers' "scaled_linear").
- "cosine": abar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008, betas
  1 - abar(t)/abar(t-1) clipped at 0.999 (Nichol & Dhariwal 2021, "Improved DDPM", Eq. 17).

Every VP schedule is also a variance-exploding (VE) one: x_ve = x_vp / sqrt(abar) = x_0 + sigma
eps with sigma = sqrt((1 - abar) / abar); SNR = abar / (1 - abar) = 1 / sigma^2 (Kingma et al.
2021, "Variational Diffusion Models"); log-SNR = -2 log sigma. The samplers work in this sigma view.

EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"):
the sampling sigmas of Eq. 5 (sigma_min=0.002, sigma_max=80, rho=7), the preconditioning of
Table 1 (sigma_data=0.5) and the log-normal training distribution ln sigma ~ N(P_mean, P_std^2)
with loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

Schedules are computed once in float64 numpy and handed to JAX as float32 constants.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")
SPACINGS = ("linspace", "leading", "trailing")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A discrete-time VP noise schedule (hashable: pass it into jitted code as a static value).

    Attributes:
      kind: "linear" (Ho et al. 2020), "scaled_linear" (Rombach et al. 2022) or "cosine"
        (Nichol & Dhariwal 2021).
      num_steps: T, the number of diffusion timesteps.
      beta_start, beta_end: the (scaled) linear schedule's end points.
      cosine_s: the cosine schedule's offset s.
      max_beta: the cosine schedule's clip on beta.
    """

    kind: str = "linear"
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    max_beta: float = 0.999

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.kind!r}; expected one of {SCHEDULE_KINDS}")
        if self.num_steps < 2:
            raise ValueError(f"a schedule needs num_steps >= 2, got {self.num_steps}")


def betas_np(schedule: Schedule) -> np.ndarray:
    """beta_t, float64 [T]."""
    t_count = schedule.num_steps
    if schedule.kind == "linear":
        return np.linspace(schedule.beta_start, schedule.beta_end, t_count, dtype=np.float64)
    if schedule.kind == "scaled_linear":
        return np.linspace(schedule.beta_start ** 0.5, schedule.beta_end ** 0.5, t_count,
                           dtype=np.float64) ** 2
    s = schedule.cosine_s
    steps = np.arange(t_count + 1, dtype=np.float64) / t_count
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return np.minimum(1.0 - abar[1:] / abar[:-1], schedule.max_beta)


def alphas_cumprod_np(schedule: Schedule) -> np.ndarray:
    """abar_t = prod_{s <= t} (1 - beta_s), float64 [T]."""
    return np.cumprod(1.0 - betas_np(schedule))


def betas(schedule: Schedule) -> jax.Array:
    """beta_t, float32 [T]."""
    return jnp.asarray(betas_np(schedule), jnp.float32)


def alphas_cumprod(schedule: Schedule) -> jax.Array:
    """alpha-bar_t, float32 [T]."""
    return jnp.asarray(alphas_cumprod_np(schedule), jnp.float32)


def sigmas(schedule: Schedule) -> jax.Array:
    """VE noise level sigma_t = sqrt((1 - abar_t) / abar_t), float32 [T], increasing in t."""
    abar = alphas_cumprod_np(schedule)
    return jnp.asarray(np.sqrt((1.0 - abar) / abar), jnp.float32)


def snr(schedule: Schedule) -> jax.Array:
    """Signal-to-noise ratio abar_t / (1 - abar_t) = 1 / sigma_t^2, float32 [T]."""
    abar = alphas_cumprod_np(schedule)
    return jnp.asarray(abar / (1.0 - abar), jnp.float32)


def log_snr(schedule: Schedule) -> jax.Array:
    """log SNR_t = log(abar_t) - log(1 - abar_t) = -2 log sigma_t, float32 [T]."""
    abar = alphas_cumprod_np(schedule)
    return jnp.asarray(np.log(abar) - np.log1p(-abar), jnp.float32)


def sigma_to_t(schedule: Schedule, sigma: jax.Array) -> jax.Array:
    """The (fractional) timestep index of a VE noise level: float32, same shape as ``sigma``.

    Linear interpolation in log sigma between neighbouring timesteps (as in k-diffusion's
    DiscreteSchedule), clipped to [0, T-1]. Exact (an integer-valued float) at the schedule's own
    float32 sigmas, which is where the samplers evaluate discrete-time models.
    """
    log_sigmas = jnp.log(sigmas(schedule))
    log_sigma = jnp.log(jnp.asarray(sigma, jnp.float32))
    idx = jnp.searchsorted(log_sigmas, log_sigma, method="compare_all") - 1
    idx = jnp.clip(idx, 0, schedule.num_steps - 2)
    low, high = log_sigmas[idx], log_sigmas[idx + 1]
    w = jnp.clip((log_sigma - low) / (high - low), 0.0, 1.0)
    return idx.astype(jnp.float32) + w


def discrete_timesteps(schedule: Schedule, steps: int, spacing: str = "linspace",
                       offset: int = 0) -> np.ndarray:
    """``steps`` timestep indices, decreasing, int32 [steps], with diffusers' spacings (Lin et
    al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2):

    - linspace: evenly spaced from T-1 down to 0, both included (steps >= 2; [T-1] for 1);
    - leading: multiples of T // steps from 0 up, plus ``offset`` (diffusers' default
      ``steps_offset``): 980, 960, ..., 0 for T = 1000 and 50 steps;
    - trailing: round(T - k T / steps) - 1, starting at the last timestep: 999, 979, ..., 19.

    With leading and trailing spacing the steps are T // steps apart, so the sampler's next grid
    point is diffusers' ``previous_timestep`` and the step after the last goes to abar = 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps > schedule.num_steps:
        raise ValueError(f"steps={steps} exceeds the schedule's {schedule.num_steps} timesteps")
    t_count = schedule.num_steps
    if spacing == "linspace":
        ts = np.round(np.linspace(t_count - 1, 0, steps))
    elif spacing == "leading":
        ts = (np.arange(steps) * (t_count // steps)).round()[::-1] + offset
    elif spacing == "trailing":
        ts = np.round(np.arange(t_count, 0, -t_count / steps)) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    if ts.max() >= t_count or ts.min() < 0:
        raise ValueError(f"{spacing} spacing with offset {offset} leaves [0, {t_count})")
    return ts.astype(np.int32)


def discrete_sigmas(schedule: Schedule, steps: int, spacing: str = "linspace",
                    offset: int = 0) -> jax.Array:
    """Sampling grid of a discrete-time model: its own sigmas at ``discrete_timesteps`` followed
    by a final 0, float32 [steps + 1], decreasing."""
    s = sigmas(schedule)[discrete_timesteps(schedule, steps, spacing, offset)]
    return jnp.concatenate([s, jnp.zeros((1,), jnp.float32)])


@dataclasses.dataclass(frozen=True)
class EDMConfig:
    """EDM hyper-parameters (Karras et al. 2022, Table 1 and Sec. 5).

    Attributes:
      sigma_min, sigma_max: the ends of the sampling grid (Eq. 5).
      sigma_data: the data's standard deviation in the preconditioning.
      rho: the grid's warping exponent (Eq. 5).
      p_mean, p_std: training noise levels ln sigma ~ N(p_mean, p_std^2).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"EDM needs 0 < sigma_min < sigma_max, got {self.sigma_min}, "
                             f"{self.sigma_max}")
        if not (self.sigma_data > 0 and self.rho > 0 and self.p_std > 0):
            raise ValueError("EDM needs sigma_data, rho and p_std > 0")


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> jax.Array:
    """Karras et al. (2022) Eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) -
    smax^(1/rho)))^rho for i < N, then sigma_N = 0; float32 [steps + 1]. One step: [smax, 0]."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ramp = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    s = (hi + ramp * (lo - hi)) ** rho
    return jnp.asarray(np.append(s, 0.0), jnp.float32)


def edm_precond(sigma: jax.Array, sigma_data: float = 0.5
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """EDM preconditioning (Karras et al. 2022, Table 1; derived in App. B.6, Eqs. 114-117).

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with
      c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
      c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4.
    Args:
      sigma: any shape, > 0.
    Returns:
      (c_skip, c_out, c_in, c_noise), each shaped like ``sigma``.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    sd2 = sigma_data**2
    total = sigma**2 + sd2
    return sd2 / total, sigma * sigma_data * jax.lax.rsqrt(total), jax.lax.rsqrt(total), \
        jnp.log(sigma) / 4.0


def edm_loss_weight(sigma: jax.Array, sigma_data: float = 0.5) -> jax.Array:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2 (Karras et al. Table 1)."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_sample_sigma(rng: jax.Array, shape: tuple[int, ...], p_mean: float = -1.2,
                     p_std: float = 1.2) -> jax.Array:
    """Training noise levels: ln sigma ~ N(P_mean, P_std^2) (Karras et al. Table 1), float32."""
    return jnp.exp(p_mean + p_std * jax.random.normal(rng, shape, jnp.float32))
