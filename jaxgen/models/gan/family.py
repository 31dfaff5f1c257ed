"""The GAN family: :class:`GANFamily` (see jaxgen.models.base).

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
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.errors import UsageError
from jaxgen.models.base import Family, check_label, image_data, sample_labels
from jaxgen.models.gan.settings import GANExperiment, GANSample
from jaxgen.models.gan.step import GANModel, GANStep
from jaxgen.train.optim import learning_rates, make_optimizer
from jaxgen.train.state import TrainState
from jaxgen.train.step import EMAConfig


def _disc_optim(config: GANExperiment) -> Any:
    """The discriminator's optimizer settings: ``config.optim`` with ``optim.disc_lr`` (0:
    ``optim.lr``)."""
    o = config.optim
    return dataclasses.replace(o, lr=o.disc_lr or o.lr)


def make_optimizers(config: GANExperiment) -> tuple[Any, Any]:
    """(generator tx, discriminator tx) from ``config.optim``: the same settings but the
    learning rate (``optim.disc_lr``, 0: ``optim.lr``); a cosine schedule spans
    ``train.steps`` generator updates and ``train.steps * gan.n_disc`` discriminator updates."""
    steps = config.train.steps
    return (make_optimizer(config.optim, steps),
            make_optimizer(_disc_optim(config), steps * config.gan.n_disc))


class GANFamily(Family):
    """A generator and a discriminator trained against each other (see the module docstring)."""

    name = "gan"
    settings = GANExperiment
    eval_step = None

    def __init__(self, config: GANExperiment, data_info: dict):
        super().__init__(config, data_info)
        shape, classes = image_data("gan", data_info)
        m, obj = config.model, config.gan
        classes = classes if classes > 1 else 0
        if m.conditional and not classes:
            raise UsageError("model.conditional=True needs labelled data with more than one "
                             f"class, but data.source={config.data.source!r} has none")
        if m.image_shape and tuple(m.image_shape) != shape:
            raise UsageError(f"model.image_shape={tuple(m.image_shape)} disagrees with the "
                             f"data's {shape}; leave it () to take the data's")
        try:
            self.net = dataclasses.replace(m, image_shape=shape,
                                           num_classes=classes if m.conditional else 0)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if obj.loss == "wgan" and obj.penalty != "gp" and not m.spectral_norm:
            raise UsageError("gan.loss='wgan' needs a Lipschitz constraint on the critic: set "
                             "gan.penalty='gp' or model.spectral_norm=True")
        if config.data.batch_size % obj.n_disc:
            raise UsageError(f"data.batch_size={config.data.batch_size} does not split into "
                             f"gan.n_disc={obj.n_disc} discriminator batches")
        self.model = GANModel(self.net)
        self.tx_gen, self.tx_disc = make_optimizers(config)
        self.ema = EMAConfig.from_train(config.train)
        self.step = GANStep(self.model, obj, self.tx_gen, self.tx_disc, ema=self.ema,
                            grad_accum=config.optim.grad_accum)
        self.sample_eval_variants = {"": {}, "raw": {"weights": "raw"}} if self.ema else {"": {}}
        self.check_sample_options(self.sample_options())

    def init_params(self, rng: jax.Array) -> dict:
        return self.model.init_params(rng)

    def init_state(self, rng: jax.Array, sample_batch: dict) -> TrainState:
        del sample_batch  # shapes come from data_info
        k_init, k_state = jax.random.split(rng)
        g_params, d_params, sn = self.model.init(k_init)
        g_params, d_params = nn.meta.unbox(g_params), nn.meta.unbox(d_params)
        params = {"gen": g_params, "disc": d_params}
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params,
            opt_state={"gen": self.tx_gen.init(g_params), "disc": self.tx_disc.init(d_params)},
            rng=jnp.asarray(k_state, jnp.uint32),
            ema_params=jax.tree.map(jnp.copy, g_params) if self.ema is not None else None,
            extra=None if sn is None else {"sn": sn})

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """The discriminator phase, then the generator phase (:class:`GANStep`)."""
        return self.step(state, batch)

    def ema_of(self, params: Any) -> Any:
        return params["gen"]

    def learning_rates(self, step: int) -> dict[str, float]:
        """``lr_gen`` and ``lr_disc`` at train step ``step`` (the discriminator has made
        ``step * gan.n_disc`` updates by then)."""
        steps, n_disc = self.config.train.steps, self.config.gan.n_disc
        return {**learning_rates(self.config.optim, steps, step, "lr_gen"),
                **learning_rates(_disc_optim(self.config), steps * n_disc, step * n_disc,
                                 "lr_disc")}

    def sample_options(self, **overrides: Any) -> GANSample:
        if "weights" not in overrides and self.ema is None and self.config.sample.weights == "ema":
            overrides = {**overrides, "weights": "raw"}  # the default falls back; an ask does not
        return super().sample_options(**overrides)

    def check_sample_options(self, o: GANSample) -> GANSample:
        if o.weights == "ema" and self.ema is None:
            raise UsageError("sample.weights='ema' but this run keeps no EMA (train.ema_decay=0); "
                             "use sample.weights=raw")
        check_label(self.net.num_classes, o.label)
        return o

    def sample(self, state: TrainState, rng: jax.Array, n: int,
               options: Optional[GANSample] = None) -> jax.Array:
        """n images [n, H, W, C] in [0, 1] from the EMA (or raw) generator."""
        o = options or self.sample_options()
        use_ema = o.weights == "ema" and state.ema_params is not None
        g_params = state.ema_params if use_ema else state.params["gen"]
        z = jax.random.normal(rng, (n, self.net.z_dim), jnp.float32)
        y = sample_labels(self.net.num_classes, o.label, n)
        return (self.model.sample(g_params, z, y) + 1.0) * 0.5

    def grid_columns(self, n: int) -> Optional[int]:
        c = self.net.num_classes
        return c if c and n >= c else None
