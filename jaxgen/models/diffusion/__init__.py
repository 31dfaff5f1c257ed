"""The mathematics of diffusion models, model-agnostic and in pure JAX.

- ``schedules``: discrete-time VP schedules (linear, cosine) and the EDM sigma schedule and
  preconditioning.
- ``objectives``: the forward process, eps / v / x0 / EDM training losses, and ``denoiser``, which
  wraps any network into the x0-predictor D(x, sigma, labels) in the variance-exploding view.
- ``likelihood``: bits per dimension from the DDPM variational bound.
- ``samplers``: DDPM, DDIM, DPM-Solver++(2M), Euler and EDM Heun, each one ``lax.scan`` program,
  with classifier-free guidance.
"""
from jaxgen.models.diffusion.likelihood import (
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    nll_bits_per_dim,
    prior_kl,
    vlb_terms,
)
from jaxgen.models.diffusion.objectives import (
    DiffusionConfig,
    denoiser,
    diffusion_loss,
    drop_labels,
    edm_denoise,
    predict_x0_eps,
    q_sample,
    sampling_sigmas,
    training_target,
)
from jaxgen.models.diffusion.samplers import (
    SamplerConfig,
    SamplerState,
    guided_denoiser,
    init_state,
    num_network_evals,
    model_sigmas,
    python_loop_sampler,
    sample,
    sample_model,
    sample_python_loop,
    sampler_step_fn,
)
from jaxgen.models.diffusion.schedules import (
    EDMConfig,
    Schedule,
    alphas_cumprod,
    betas,
    discrete_sigmas,
    discrete_timesteps,
    edm_loss_weight,
    edm_precond,
    edm_sample_sigma,
    karras_sigmas,
    log_snr,
    sigma_to_t,
    sigmas,
    snr,
)

__all__ = [
    "DiffusionConfig", "EDMConfig", "SamplerConfig", "SamplerState", "Schedule",
    "alphas_cumprod", "betas", "denoiser", "diffusion_loss", "discrete_sigmas",
    "discrete_timesteps", "discretized_gaussian_log_likelihood", "drop_labels", "edm_denoise",
    "edm_loss_weight", "edm_precond", "edm_sample_sigma", "gaussian_kl", "guided_denoiser",
    "init_state", "karras_sigmas", "log_snr", "nll_bits_per_dim", "num_network_evals",
    "model_sigmas", "predict_x0_eps", "prior_kl", "python_loop_sampler", "q_sample", "sample",
    "sample_model", "sample_python_loop", "sampler_step_fn",
    "sampling_sigmas", "sigma_to_t", "sigmas", "snr", "training_target", "vlb_terms",
]
