"""The GAN family: ``make_family(config, data_info) -> Family`` (see jaxgen.models.base).

A DCGAN pair (:mod:`modules`) trained with one of the losses of :mod:`losses`, an optional R1
or gradient penalty and optional spectral norm, by the two-phase step of :mod:`step`. Each
network has its own Optax optimizer built by :func:`jaxgen.train.optim.make_optimizer`: the
generator's from ``config.optim``, the discriminator's from the same with ``optim.disc_lr`` as
its learning rate (two time-scale update rule, Heusel et al. 2017). The EMA
(``train.ema_decay``, ``train.ema_warmup``) tracks the generator only; sampling and evaluation
use it by default (``sample.weights``), and sample-based evaluation also scores the raw
generator (the "raw" variant). There is no likelihood, so ``eval_step`` is None.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.base import Family
from jaxgen.models.gan.hparams import SampleOptions, make_configs, make_sample_options
from jaxgen.models.gan.step import GANModel, GANStep
from jaxgen.train.images import save_image_grid
from jaxgen.train.optim import OptimConfig, make_optimizer
from jaxgen.train.state import TrainState
from jaxgen.train.step import EMAConfig


def make_optimizers(config: Any, n_disc: int) -> tuple[Any, Any, OptimConfig]:
    """(generator tx, discriminator tx, generator OptimConfig) from ``config.optim``.

    Both share every setting but the learning rate (``optim.disc_lr``; 0 or missing: the same
    as ``optim.lr``); a cosine schedule spans ``train.steps`` generator updates and
    ``train.steps * n_disc`` discriminator updates.
    """
    steps = int(config.train.steps)
    gen = dataclasses.replace(OptimConfig.from_config(config.optim), total_steps=steps)
    disc_lr = float(config.optim.get("disc_lr", 0.0)) or gen.lr
    disc = dataclasses.replace(gen, lr=disc_lr, total_steps=steps * n_disc)
    return make_optimizer(gen), make_optimizer(disc), gen


def sample_labels(n: int, label: int, num_classes: int) -> jax.Array:
    """Labels [n] of ``n`` samples: ``label``, or ``i mod num_classes`` when label is -1."""
    if label >= 0:
        return jnp.full((n,), label, jnp.int32)
    return jnp.arange(n, dtype=jnp.int32) % max(num_classes, 1)


def make_family(config: Any, data_info: dict) -> Family:
    """Builds the GAN family for ``config`` (model, gan, optim, train, sample) and image data."""
    net, obj = make_configs(config, data_info)
    model = GANModel(net)
    tx_gen, tx_disc, optim = make_optimizers(config, obj.n_disc)
    ema = EMAConfig.from_config(config.train)
    step = GANStep(model, obj, tx_gen, tx_disc, ema=ema, grad_accum=optim.grad_accum)
    sample_cfg = config.get("sample")

    def init_state(rng: jax.Array, sample_batch: dict) -> TrainState:
        del sample_batch  # shapes come from data_info
        k_init, k_state = jax.random.split(rng)
        g_params, d_params, sn = model.init(k_init)
        params = {"gen": g_params, "disc": d_params}
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params,
            opt_state={"gen": tx_gen.init(g_params), "disc": tx_disc.init(d_params)},
            rng=jnp.asarray(k_state, jnp.uint32),
            ema_params=jax.tree.map(jnp.copy, g_params) if ema is not None else None,
            extra=None if sn is None else {"sn": sn})

    def sample_options(**overrides: Any) -> SampleOptions:
        return make_sample_options(net, ema is not None, sample_cfg, **overrides)

    def sample(state: TrainState, rng: jax.Array, n: int,
               options: SampleOptions | None = None) -> jax.Array:
        """n images [n, H, W, C] in [0, 1] from the EMA (or raw) generator."""
        options = options or sample_options()
        use_ema = options.weights == "ema" and state.ema_params is not None
        g_params = state.ema_params if use_ema else state.params["gen"]
        z = jax.random.normal(rng, (n, net.z_dim), jnp.float32)
        y = sample_labels(n, options.label, net.num_classes) if net.conditional else None
        return (model.sample(g_params, z, y) + 1.0) * 0.5

    def save_samples(samples, path: str) -> list[str]:
        ncols = net.num_classes if net.conditional and len(samples) >= net.num_classes else None
        return [save_image_grid(np.asarray(samples), path, ncols=ncols)]

    variants = {"": {}, "raw": {"weights": "raw"}} if ema is not None else {"": {}}
    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return step(state, batch)

    return Family("gan", init_state, train_step, None, sample, save_samples,
                  sample_options=sample_options, sample_kind="image",
                  sample_eval_variants=variants, ema_of=lambda params: params["gen"])
