"""Diffusion training objectives and the uniform denoiser that samplers take.

Model interface: ``model_fn(x_in [B, ...], noise_cond [B], labels [B] | None) -> out [B, ...]``
is the raw network (parameters closed over). ``noise_cond`` is
  - for discrete-time models ("eps", "v", "x0"): the timestep index t in [0, T-1] as float32
    (integer-valued in training; fractional only if a sampler asks for an off-grid sigma), and
    x_in = x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, the VP-scaled noisy input;
  - for EDM ("edm"): c_noise = ln(sigma) / 4 and x_in = c_in (x_0 + sigma eps) (Karras et al.
    2022, Table 1); ``out`` is F, and D = c_skip x + c_out F.

Parameterizations and the loss each one uses (per example: mean over non-batch dimensions):
  - "eps": predict eps; L_simple = ||eps - eps_hat||^2 (Ho et al. 2020, Eq. 14). In x_0 terms
    this is SNR_t ||x_0 - x0_hat||^2.
  - "v": predict v = sqrt(abar) eps - sqrt(1 - abar) x_0; ||v - v_hat||^2 (Salimans & Ho 2022,
    "Progressive Distillation", Sec. 4 and App. D). In x_0 terms (1 + SNR_t) ||x_0 - x0_hat||^2.
  - "x0": predict x_0; w_t ||x_0 - x0_hat||^2 with w_t = max(SNR_t, 1) ("snr_trunc", the
    truncated-SNR weighting of Salimans & Ho 2022, Sec. 4; default) or w_t = 1 ("plain").
  - "edm": lambda(sigma) ||D(x_0 + sigma eps; sigma) - x_0||^2, ln sigma ~ N(P_mean, P_std^2)
    (Karras et al. 2022, Eq. 8 and Table 1).
Discrete-time models draw t ~ Uniform{0, ..., T-1}.

Optional classifier-free guidance training (Ho & Salimans 2022, Alg. 1): labels are replaced by
``null_label`` with probability ``cond_drop_prob``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.diffusion import schedules as sch

ModelFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]
DenoiseFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]
PARAMETERIZATIONS = ("eps", "v", "x0", "edm")
X0_WEIGHTINGS = ("snr_trunc", "plain")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """What a diffusion model predicts and how it is trained (hashable; static under jit).

    Attributes:
      parameterization: eps, v, x0 (discrete-time VP models on ``schedule``) or edm
        (continuous sigma, preconditioned as in Karras et al. 2022, using ``edm``). v is the
        default: an eps model's x0_hat = (x - sigma eps_hat) multiplies its error by sigma (up
        to 80), which the deterministic samplers integrate; on diffusion_mnist the same recipe
        as eps gave DDIM-50 fd_lenet 207 against v's 27 (benchmarks/README.md).
      schedule: the discrete-time noise schedule: linear (Ho et al. 2020), scaled_linear
        (Rombach et al. 2022) or cosine (Nichol & Dhariwal 2021); unused by edm.
      timesteps: T, the number of diffusion timesteps of the schedule.
      beta_start, beta_end: the (scaled) linear schedule's first and last beta.
      timestep_spacing: the sampling grid's timesteps: linspace (T-1 down to 0, both
        included), leading or trailing (diffusers' spacings, T // steps apart; see
        :func:`schedules.discrete_timesteps`).
      steps_offset: added to leading timesteps (diffusers' ``steps_offset``).
      x0_weighting: snr_trunc (max(SNR, 1), Salimans & Ho 2022) or plain; parameterization x0
        only.
      cond_drop_prob: probability of replacing a label by the null label during training
        (classifier-free guidance, Ho & Salimans 2022); class-conditional models only.
      null_label: the "no label" class id used for guidance (None: no guidance; a family sets
        it to the number of classes).
      clip_x0: the data lie in [-1, 1], so an estimate x0_hat may be clipped to that range:
        the samplers clip where ``sample.clip`` says (DDPM's ``clip_denoised``, Ho et al. 2020,
        by default on ancestral steps only) and the bits/dim decoder clips before forming its
        mean. False: never clip (data of unknown range).
      sample_sigma_max: > 0 caps the first sigma of a discrete-time model's sampling grid
        (:func:`sampling_sigmas`) at this value (Karras et al. 2022 sample from sigma 80). A
        cosine schedule's top sigma is ~2e4: x = sigma eps is pure noise either way, but an eps
        model's x0_hat there is ~1e3 off and a second-order step across 2e4 -> 12 is unstable.
        0: no cap. This is the log-SNR clip of the cosine schedule: sampling starts at
        log SNR >= -2 ln(sample_sigma_max).
      edm: EDM's noise levels and preconditioning (parameterization edm only).
    """

    parameterization: Literal["eps", "v", "x0", "edm"] = "v"
    schedule: Literal["linear", "scaled_linear", "cosine"] = "cosine"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace"
    steps_offset: int = 0
    x0_weighting: Literal["snr_trunc", "plain"] = "snr_trunc"
    cond_drop_prob: float = 0.1
    null_label: Optional[int] = None
    clip_x0: bool = True
    sample_sigma_max: float = 80.0
    edm: sch.EDMConfig = dataclasses.field(default_factory=sch.EDMConfig)

    def __post_init__(self):
        if self.sample_sigma_max < 0:
            raise ValueError(f"diffusion.sample_sigma_max must be >= 0 (0: no cap), got "
                             f"{self.sample_sigma_max}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"diffusion.beta_start ({self.beta_start}) and beta_end "
                             f"({self.beta_end}) must satisfy 0 < beta_start < beta_end < 1")
        if self.timestep_spacing not in sch.SPACINGS or self.steps_offset < 0:
            raise ValueError(f"diffusion.timestep_spacing must be one of {', '.join(sch.SPACINGS)} "
                             f"and diffusion.steps_offset >= 0")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {self.parameterization!r}; expected one "
                             f"of {PARAMETERIZATIONS}")
        if self.x0_weighting not in X0_WEIGHTINGS:
            raise ValueError(f"unknown x0_weighting {self.x0_weighting!r}; expected one of "
                             f"{X0_WEIGHTINGS}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"diffusion.cond_drop_prob must be in [0, 1], got "
                             f"{self.cond_drop_prob}")
        self.noise_schedule  # validates schedule and timesteps

    @property
    def noise_schedule(self) -> sch.Schedule:
        """The discrete-time schedule as the maths of :mod:`schedules` takes it."""
        return sch.Schedule(self.schedule, self.timesteps, self.beta_start, self.beta_end)

    @property
    def discrete(self) -> bool:
        return self.parameterization != "edm"

    @property
    def guided(self) -> bool:
        """Whether training drops labels for classifier-free guidance."""
        return self.null_label is not None and self.cond_drop_prob > 0


def bcast(a: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example values a [B] reshaped to [B, 1, ..., 1] to broadcast against x [B, ...]."""
    return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim))


def _mean_per_example(x: jax.Array) -> jax.Array:
    return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def q_sample(x0: jax.Array, abar: jax.Array, eps: jax.Array) -> jax.Array:
    """Forward process sample x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps ~ q(x_t | x_0)
    (Ho et al. 2020, Eq. 4). x0, eps [B, ...]; abar [B] -> x_t [B, ...]."""
    abar = bcast(abar, x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps


def training_target(parameterization: str, x0: jax.Array, eps: jax.Array,
                    abar: jax.Array) -> jax.Array:
    """The regression target of a discrete-time parameterization: eps, v or x_0 [B, ...]."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":  # Salimans & Ho (2022), Sec. 4: v = alpha eps - sigma x
        abar = bcast(abar, x0)
        return jnp.sqrt(abar) * eps - jnp.sqrt(1.0 - abar) * x0
    raise ValueError(f"no discrete-time target for parameterization {parameterization!r}")


def predict_x0_eps(parameterization: str, out: jax.Array, x_t: jax.Array,
                   abar: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Converts a discrete-time model output to (x0_hat, eps_hat), both [B, ...].

    Inverts x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps; for v (Salimans & Ho 2022, App. D):
    x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v_hat, eps_hat = sqrt(1 - abar) x_t + sqrt(abar) v_hat.
    Args:
      out: model output [B, ...]; x_t: its VP input [B, ...]; abar: alpha-bar per example [B].
    """
    a, s = jnp.sqrt(bcast(abar, x_t)), jnp.sqrt(1.0 - bcast(abar, x_t))
    if parameterization == "eps":
        return (x_t - s * out) / a, out
    if parameterization == "x0":
        return out, (x_t - a * out) / s
    if parameterization == "v":
        return a * x_t - s * out, s * x_t + a * out
    raise ValueError(f"no discrete-time conversion for parameterization {parameterization!r}")


def drop_labels(rng: jax.Array, labels: jax.Array, prob: float, null_label: int) -> jax.Array:
    """Replaces each label [B] by ``null_label`` with probability ``prob``."""
    drop = jax.random.bernoulli(rng, prob, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def edm_denoise(model_fn: ModelFn, x: jax.Array, sigma: jax.Array,
                labels: jax.Array | None, edm: sch.EDMConfig) -> jax.Array:
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, labels) (Karras et al. Eq. 7).
    x [B, ...] in the VE view x = x_0 + sigma eps; sigma [B] -> x0_hat [B, ...]."""
    c_skip, c_out, c_in, c_noise = sch.edm_precond(sigma, edm.sigma_data)
    f = model_fn(bcast(c_in, x) * x, c_noise, labels)
    return bcast(c_skip, x) * x + bcast(c_out, x) * f


def diffusion_loss(model_fn: ModelFn, x0: jax.Array, labels: jax.Array | None,
                   rng: jax.Array, cfg: DiffusionConfig) -> jax.Array:
    """Per-example training loss [B] of ``cfg.parameterization`` (see the module docstring).

    Args:
      model_fn: the raw network, model_fn(x_in, noise_cond [B], labels) -> out.
      x0: clean data [B, ...] (for images, scaled to [-1, 1]).
      labels: int class labels [B] or None (unconditional).
      rng: PRNG key; split for t / sigma, eps and label dropout.
    """
    k_t, k_eps, k_drop = jax.random.split(rng, 3)
    b = x0.shape[0]
    x0 = x0.astype(jnp.float32)
    if labels is not None and cfg.guided:
        labels = drop_labels(k_drop, labels, cfg.cond_drop_prob, cfg.null_label)
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    if cfg.parameterization == "edm":
        e = cfg.edm
        sigma = sch.edm_sample_sigma(k_t, (b,), e.p_mean, e.p_std)
        d = edm_denoise(model_fn, x0 + bcast(sigma, x0) * eps, sigma, labels, e)
        return sch.edm_loss_weight(sigma, e.sigma_data) * _mean_per_example((d - x0) ** 2)
    t = jax.random.randint(k_t, (b,), 0, cfg.timesteps)
    abar = sch.alphas_cumprod(cfg.noise_schedule)[t]
    x_t = q_sample(x0, abar, eps)
    out = model_fn(x_t, t.astype(jnp.float32), labels)
    mse = _mean_per_example((out - training_target(cfg.parameterization, x0, eps, abar)) ** 2)
    if cfg.parameterization == "x0" and cfg.x0_weighting == "snr_trunc":
        mse = jnp.maximum(sch.snr(cfg.noise_schedule)[t], 1.0) * mse  # SNR from float64 tables
    return mse


def denoiser(model_fn: ModelFn, cfg: DiffusionConfig) -> DenoiseFn:
    """The uniform x0-predictor D(x, sigma, labels) that the samplers take.

    D works in the variance-exploding view: x [B, ...] = x_0 + sigma eps, sigma [B] > 0 (a
    scalar broadcasts), returns x0_hat [B, ...]. A discrete-time model is evaluated at
    x_vp = x / sqrt(1 + sigma^2) (since abar = 1 / (1 + sigma^2)) and timestep
    t = ``schedules.sigma_to_t(sigma)`` (exact at the schedule's own sigmas); its output is
    converted with ``predict_x0_eps``. A sigma beyond the schedule's range is evaluated at the
    nearest end timestep (the VP scaling still uses the true sigma), so sample a discrete model
    on its own sigmas (``sampling_sigmas``), or on a grid between its smallest and largest
    sigma (off-grid sigmas get a fractional timestep, as k-diffusion's DiscreteSchedule). An EDM
    model is preconditioned by ``edm_denoise``. The estimate is never clipped here: a sampler
    clips the terms it should (``SamplerConfig.clip``), so that an ODE sampler integrates the
    model's smooth field rather than a clipped one.
    """
    def raw(x: jax.Array, sigma: jax.Array, labels: jax.Array | None) -> jax.Array:
        if cfg.parameterization == "edm":
            return edm_denoise(model_fn, x, sigma, labels, cfg.edm)
        abar = 1.0 / (1.0 + sigma**2)
        x_vp = x * bcast(jnp.sqrt(abar), x)
        out = model_fn(x_vp, sch.sigma_to_t(cfg.noise_schedule, sigma), labels)
        return predict_x0_eps(cfg.parameterization, out, x_vp, abar)[0]

    def denoise(x: jax.Array, sigma: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        x = x.astype(jnp.float32)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
        return raw(x, sigma, labels)

    return denoise


def sampling_sigmas(cfg: DiffusionConfig, steps: int, grid: str = "schedule",
                    rho: float = 7.0) -> jax.Array:
    """The sampling grid [steps + 1] (decreasing, ending in 0) for a model.

    Args:
      cfg: the model's objective.
      steps: number of sampler steps.
      grid: for a discrete-time model, "schedule" (its own sigmas at ``cfg.timestep_spacing``
        timesteps, the first one capped at ``cfg.sample_sigma_max`` when that is > 0 and kept
        above the second) or "karras" (Karras et al. 2022, Eq. 5, with exponent ``rho``, from
        min(top sigma, sample_sigma_max) down to the schedule's smallest sigma, then 0). An EDM
        model always samples on its own Eq. 5 grid (``cfg.edm``).
    """
    if cfg.parameterization == "edm":
        e = cfg.edm
        return sch.karras_sigmas(steps, e.sigma_min, e.sigma_max, e.rho)
    if grid == "karras":
        abar = sch.alphas_cumprod_np(cfg.noise_schedule)  # numpy: concrete under jit too
        table = np.sqrt((1.0 - abar) / abar).astype(np.float32)
        top = float(table[-1]) if cfg.sample_sigma_max <= 0 else min(float(table[-1]),
                                                                       cfg.sample_sigma_max)
        return sch.karras_sigmas(steps, float(table[0]), max(top, float(table[0]) * 1.0001), rho)
    if grid != "schedule":
        raise ValueError(f"unknown sampling grid {grid!r}; expected schedule or karras")
    sigmas = sch.discrete_sigmas(cfg.noise_schedule, steps, cfg.timestep_spacing,
                                 cfg.steps_offset)
    if cfg.sample_sigma_max > 0:
        top = jnp.maximum(cfg.sample_sigma_max, sigmas[1] * 1.0001)
        sigmas = sigmas.at[0].set(jnp.minimum(sigmas[0], top))
    return sigmas
