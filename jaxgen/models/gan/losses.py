"""GAN losses and discriminator regularisers, as pure functions of discriminator outputs.

Each loss takes the discriminator's raw outputs (logits, or critic values for the WGAN) on real
examples ``real`` [B] and on generated ones ``fake`` [B] and returns a scalar mean:
  nonsaturating  Goodfellow et al. (2014), with the generator's non-saturating -log D(G(z));
  hinge          Lim & Ye (2017), Miyato et al. (2018);
  lsgan          least squares with 0-1 coding (a=0, b=c=1), Mao et al. (2017);
  wgan           Arjovsky et al. (2017): the critic's estimate of the Wasserstein-1 distance,
                 which needs a Lipschitz constraint (gradient penalty or spectral norm).

The penalties take ``d_fn``, a function images [B, H, W, C] -> outputs [B], and differentiate
it with respect to its input:
  :func:`r1_penalty`        gamma/2 E_real ||grad_x D(x)||^2 (Mescheder et al. 2018);
  :func:`gradient_penalty`  lambda E_xhat (||grad D(xhat)|| - 1)^2 on random interpolates of
                            real and fake examples (Gulrajani et al. 2017).
Lazy regularisation (Karras et al. 2020) is applied by the caller (see ``step.py``).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

DFn = Callable[[jax.Array], jax.Array]


def d_loss(kind: str, real: jax.Array, fake: jax.Array) -> jax.Array:
    """The discriminator's loss (scalar) from its outputs on real and fake examples [B]."""
    if kind == "nonsaturating":   # -log sigmoid(r) - log(1 - sigmoid(f))
        return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
    if kind == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
    if kind == "lsgan":
        return 0.5 * jnp.mean(jnp.square(real - 1.0)) + 0.5 * jnp.mean(jnp.square(fake))
    if kind == "wgan":
        return jnp.mean(fake) - jnp.mean(real)
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss(kind: str, fake: jax.Array) -> jax.Array:
    """The generator's loss (scalar) from the discriminator's outputs on its samples [B]."""
    if kind == "nonsaturating":   # -log sigmoid(f)
        return jnp.mean(jax.nn.softplus(-fake))
    if kind in ("hinge", "wgan"):
        return -jnp.mean(fake)
    if kind == "lsgan":
        return 0.5 * jnp.mean(jnp.square(fake - 1.0))
    raise ValueError(f"unknown GAN loss {kind!r}")


def _input_grad_sq_norms(d_fn: DFn, x: jax.Array) -> jax.Array:
    """||grad_x D(x_i)||^2 for every example: [B]. D acts on each example alone, so the
    gradient of sum_i D(x_i) with respect to x_i is that of D(x_i)."""
    grads = jax.grad(lambda v: jnp.sum(d_fn(v)))(x)
    return jnp.sum(jnp.square(grads).reshape(x.shape[0], -1), axis=-1)


def r1_penalty(d_fn: DFn, x_real: jax.Array, gamma: float) -> jax.Array:
    """R1 (Mescheder et al. 2018): gamma/2 * mean_i ||grad_x D(x_real_i)||^2, a scalar."""
    return 0.5 * gamma * jnp.mean(_input_grad_sq_norms(d_fn, x_real))


def gradient_penalty(d_fn: DFn, x_real: jax.Array, x_fake: jax.Array, rng: jax.Array,
                     weight: float) -> jax.Array:
    """WGAN-GP (Gulrajani et al. 2017): weight * mean_i (||grad D(xhat_i)|| - 1)^2, a scalar,
    at xhat = t x_real + (1 - t) x_fake with t ~ U[0, 1] per example."""
    t = jax.random.uniform(rng, (x_real.shape[0],) + (1,) * (x_real.ndim - 1), x_real.dtype)
    xhat = t * x_real + (1.0 - t) * jax.lax.stop_gradient(x_fake)
    norms = jnp.sqrt(_input_grad_sq_norms(d_fn, xhat) + 1e-12)
    return weight * jnp.mean(jnp.square(norms - 1.0))
